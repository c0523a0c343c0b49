#include "client/remote_common.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <iterator>
#include <cstdio>
#include <fstream>
#include <limits>

#include "client/token_ids.h"
#include "rpc/requests.h"
#include "rpc/grpc_status.h"

namespace seer::remote {

void CommonFlags::Register(FlagSet& flags, const std::string& server) {
  flags.String("addr", &addr, server + " address, host:port. Required.");
  flags.String("ids", &ids,
               std::string("prompt token ids: \"1,2,3\" (commas and/or whitespace) or @FILE. ") +
                   (ids_required ? "Required." : "Or a prompt as text: --prompt, --prompt-file or --chat."));
  sparsity.Register(flags, "the prefill server's gates (sent only when given)");
  flags.String("request-id", &request_id, "request id for the servers' logs");
  flags.Seconds("timeout", &timeout, "deadline of the whole call, seconds (0: none)");
  flags.Bool("json", &json, "print one JSON object");
  flags.String("tls-ca", &tls.ca, "PEM CA bundle that signed the server's certificate: connect over TLS");
  flags.String("tls-cert", &tls.cert, "PEM client certificate (mutual TLS), with --tls-key");
  flags.String("tls-key", &tls.key, "PEM private key of --tls-cert");
}

int ParseCommonFlags(FlagSet& flags, int argc, char** argv, const char* command, const std::string& server,
                     const CommonFlags& common, CommonRequest* out) {
  if (Status s = flags.Parse(argc, argv, 1); !s.ok()) return ReportUsage(command, s.message());
  if (flags.help_requested()) {
    std::fputs(flags.Help().c_str(), stdout);
    return kExitOk;
  }
  if (!flags.positional().empty()) {
    return ReportUsage(command, "unexpected argument '" + flags.positional()[0] + "'");
  }
  if (common.addr.empty()) return ReportUsage(command, "--addr is required (host:port of " + server + ")");
  if (common.ids.empty() && common.ids_required) {
    return ReportUsage(command, "--ids is required (\"1,2,3\" or @FILE)");
  }
  if (Status s = CheckClientTls(common.tls, "--tls-"); !s.ok()) return ReportUsage(command, s.message());
  if (!common.ids.empty()) {
    StatusOr<std::vector<int32_t>> ids = ParseTokenIds(common.ids, "--ids");
    if (!ids.ok()) return ReportUsage(command, ids.status().message());
    out->ids = std::move(ids).value();
  }
  StatusOr<SparsityRequest> sp = common.sparsity.ToRequest(flags);
  if (!sp.ok()) return ReportUsage(command, sp.status().message());
  out->sparsity = SparsityToProto(*sp);
  return -1;
}

void SetDeadline(grpc::ClientContext& context, double seconds) {
  if (seconds <= 0) return;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6)));
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& addr, const ClientTlsOptions& tls,
                                           int64_t max_receive_bytes) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(std::min<int64_t>(max_receive_bytes, INT32_MAX)));
  return grpc::CreateCustomChannel(addr, MakeChannelCredentials(tls), args);
}

int ReportRpcError(const char* command, const grpc::Status& status) {
  const std::string_view name = GrpcCodeName(status.error_code());
  std::fprintf(stderr, "seer %s: %.*s: %s\n", command, static_cast<int>(name.size()), name.data(),
               status.error_message().c_str());
  return kExitRuntime;
}

int ReportError(const char* command, const Status& status) {
  std::fprintf(stderr, "seer %s: %s\n", command, status.ToString().c_str());
  return kExitRuntime;
}

int ReportUsage(const char* command, const std::string& message) {
  std::fprintf(stderr, "seer %s: %s\n(see seer %s --help)\n", command, message.c_str(), command);
  return kExitUsage;
}

}  // namespace seer::remote
