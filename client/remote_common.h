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

#include "engine/base/status.h"
#include "seer/v1/seer.pb.h"

namespace seer::remote {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntime = 1;
inline constexpr int kExitUsage = 2;

// --sparsity TEXT (dense | threshold=T | nz_ratio=R; empty: the server's
// default) and, when `last_block_dense_set`, --last-block-dense.
StatusOr<v1::Sparsity> SparsityFromFlags(const std::string& text, bool last_block_dense_set, bool last_block_dense);

// A channel to host:port that accepts messages up to `max_receive_bytes`.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& addr, int64_t max_receive_bytes);

// "seer generate: UNAVAILABLE: ..." on stderr; returns kExitRuntime.
int ReportRpcError(const char* command, const grpc::Status& status);
int ReportError(const char* command, const Status& status);
int ReportUsage(const char* command, const std::string& message);

double MillisecondsSince(std::chrono::steady_clock::time_point t);

}  // namespace seer::remote
