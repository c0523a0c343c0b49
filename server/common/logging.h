// The servers' log: one JSON object per line on stderr (spdlog), e.g.
//   {"time":"2026-11-28T10:00:00.123456Z","level":"info","server":"seer-prefill","msg":"request",...}
// Every line has time, level, server and msg; the rest are the event's
// fields. gRPC's and protobuf's own messages come through it too, so stderr
// holds nothing but JSON lines.
#pragma once

#include <string>

#include "base/json.h"
#include "base/status.h"

namespace seer {

enum class LogLevel { kDebug, kInfo, kWarn, kError, kOff };

// "debug", "info", "warn", "error" or "off"; INVALID_ARGUMENT naming --log-level.
StatusOr<LogLevel> ParseLogLevel(const std::string& name);

// Sets up the process's logger; call once, early in main.
void InitLogging(const std::string& server, LogLevel level);

bool LogEnabled(LogLevel level);
// Writes one line: `msg` plus the members of `fields` (an object, or null).
void LogEvent(LogLevel level, const std::string& msg, const JsonValue& fields = JsonValue());

// The warning for a stream cancelled because its client read nothing for
// --write-stall-seconds: "write stall", with the request, the peer, the
// stall and (when >= 0) how long the stream had run.
void LogWriteStall(const std::string& request_id, const std::string& peer, double stall_seconds,
                   double stream_seconds);

}  // namespace seer
