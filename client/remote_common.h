// What `seer generate` and `seer prefill` share: flags that map onto request
// fields, the channel, and how a failed call is reported (the gRPC status
// code name is always in the message).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "base/flags.h"
#include "base/status.h"
#include "client/sparsity_flags.h"
#include "rpc/channel_credentials.h"
#include "seer/v1/seer.pb.h"

namespace seer::remote {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntime = 1;
inline constexpr int kExitUsage = 2;

// The flags `seer generate` and `seer prefill` share, and what they become.
struct CommonFlags {
  std::string addr, ids, request_id;
  SparsityFlags sparsity;
  double timeout = 0.0;
  bool json = false;
  ClientTlsOptions tls;
  // False for a command that takes the prompt as text too (`seer generate`):
  // it checks its own prompt flags.
  bool ids_required = true;

  // Registers --addr (of `server`, e.g. "seer-decode"), --ids, --sparsity,
  // --last-block-dense, --request-id, --timeout, --json and --tls-ca,
  // --tls-cert, --tls-key.
  void Register(FlagSet& flags, const std::string& server);
};

struct CommonRequest {
  std::vector<int32_t> ids;
  v1::Sparsity sparsity;
};

// Parses argv into `flags` (which holds `common`'s flags), prints --help, and
// checks and converts the shared flags. Returns -1 when the command goes on,
// else the exit code to return.
int ParseCommonFlags(FlagSet& flags, int argc, char** argv, const char* command, const std::string& server,
                     const CommonFlags& common, CommonRequest* out);

// Sets the call's deadline `seconds` from now (none when <= 0).
void SetDeadline(grpc::ClientContext& context, double seconds);

// A channel to host:port (TLS when `tls` asks for it) that accepts messages up
// to `max_receive_bytes`.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& addr, const ClientTlsOptions& tls,
                                           int64_t max_receive_bytes);

// "seer generate: UNAVAILABLE: ..." on stderr; returns kExitRuntime.
int ReportRpcError(const char* command, const grpc::Status& status);
int ReportError(const char* command, const Status& status);
int ReportUsage(const char* command, const std::string& message);

}  // namespace seer::remote
