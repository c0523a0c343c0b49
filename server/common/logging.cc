#include "server/common/logging.h"

#include <cmath>
#include <memory>
#include <mutex>

#include <google/protobuf/stubs/logging.h>
#include <grpc/support/log.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace seer {
namespace {

std::shared_ptr<spdlog::logger>& Logger() {
  static std::shared_ptr<spdlog::logger> logger;
  return logger;
}

spdlog::level::level_enum ToSpdlog(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return spdlog::level::debug;
    case LogLevel::kInfo: return spdlog::level::info;
    case LogLevel::kWarn: return spdlog::level::warn;
    case LogLevel::kError: return spdlog::level::err;
    case LogLevel::kOff: return spdlog::level::off;
  }
  return spdlog::level::info;
}

// JSON of the fields without the braces, to follow the line's own fields.
std::string Members(const JsonValue& fields) {
  if (fields.type() != JsonValue::Type::kObject || fields.as_object().empty()) return "";
  const std::string text = fields.Dump();
  return "," + text.substr(1, text.size() - 2);
}

void FromGrpc(gpr_log_func_args* args) {
  const LogLevel level = args->severity == GPR_LOG_SEVERITY_ERROR  ? LogLevel::kError
                         : args->severity == GPR_LOG_SEVERITY_INFO ? LogLevel::kInfo
                                                                   : LogLevel::kDebug;
  JsonValue f = JsonValue::Object();
  f.Set("source", JsonValue::String("grpc"));
  f.Set("file", JsonValue::String(std::string(args->file) + ":" + std::to_string(args->line)));
  f.Set("detail", JsonValue::String(args->message));
  LogEvent(level, "grpc", f);
}

// protobuf logs an ERROR line for every request whose string field is not
// UTF-8; the request's own line already says it did not parse, so these are
// debug lines.
void FromProtobuf(google::protobuf::LogLevel level, const char* file, int line, const std::string& message) {
  JsonValue f = JsonValue::Object();
  f.Set("source", JsonValue::String("protobuf"));
  f.Set("file", JsonValue::String(std::string(file) + ":" + std::to_string(line)));
  f.Set("detail", JsonValue::String(message));
  LogEvent(level == google::protobuf::LOGLEVEL_FATAL ? LogLevel::kError : LogLevel::kDebug, "protobuf", f);
}

}  // namespace

StatusOr<LogLevel> ParseLogLevel(const std::string& name) {
  if (name == "debug") return LogLevel::kDebug;
  if (name == "info") return LogLevel::kInfo;
  if (name == "warn") return LogLevel::kWarn;
  if (name == "error") return LogLevel::kError;
  if (name == "off") return LogLevel::kOff;
  return InvalidArgument("--log-level: '" + name + "' is not one of debug, info, warn, error, off");
}

void InitLogging(const std::string& server, LogLevel level) {
  auto logger = std::make_shared<spdlog::logger>("seer", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  // The server name is JSON-escaped once, here.
  JsonValue name = JsonValue::String(server);
  logger->set_formatter(std::make_unique<spdlog::pattern_formatter>(
      "{\"time\":\"%Y-%m-%dT%H:%M:%S.%fZ\",\"level\":\"%l\",\"server\":" + name.Dump() + ",%v}",
      spdlog::pattern_time_type::utc));
  logger->set_level(ToSpdlog(level));
  logger->flush_on(spdlog::level::trace);
  Logger() = logger;
  gpr_set_log_function(FromGrpc);
  google::protobuf::SetLogHandler(FromProtobuf);
}

bool LogEnabled(LogLevel level) {
  const auto& logger = Logger();
  return logger && logger->should_log(ToSpdlog(level));
}

void LogEvent(LogLevel level, const std::string& msg, const JsonValue& fields) {
  if (!LogEnabled(level)) return;
  Logger()->log(ToSpdlog(level), "\"msg\":{}{}", JsonValue::String(msg).Dump(), Members(fields));
}

void LogWriteStall(const std::string& request_id, const std::string& peer, double stall_seconds,
                   double stream_seconds) {
  JsonValue f = JsonValue::Object();
  f.Set("request_id", JsonValue::String(request_id));
  f.Set("peer", JsonValue::String(peer));
  f.Set("stall_seconds", JsonValue::Number(stall_seconds));
  if (stream_seconds >= 0) f.Set("stream_seconds", JsonValue::Number(std::round(stream_seconds * 1e3) / 1e3));
  f.Set("error", JsonValue::String("the client read nothing for --write-stall-seconds: stream cancelled"));
  LogEvent(LogLevel::kWarn, "write stall", f);
}

}  // namespace seer
