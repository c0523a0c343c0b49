#include "client/remote_common.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <iterator>
#include <cstdio>
#include <fstream>
#include <limits>

#include "engine/sparsity.h"
#include "server/grpc_status.h"

namespace seer::remote {

StatusOr<v1::Sparsity> SparsityFromFlags(const std::string& text, bool last_block_dense_set, bool last_block_dense) {
  v1::Sparsity out;
  if (!text.empty()) {
    SEER_ASSIGN_OR_RETURN(SparsityConfig s, ParseSparsity(text));
    switch (s.mode) {
      case SparsityMode::kDense:
        out.set_mode(v1::Sparsity::MODE_DENSE);
        break;
      case SparsityMode::kThreshold:
        out.set_mode(v1::Sparsity::MODE_THRESHOLD);
        out.set_threshold(s.threshold);
        break;
      case SparsityMode::kNzRatio:
        out.set_mode(v1::Sparsity::MODE_NZ_RATIO);
        out.set_nz_ratio(s.nz_ratio);
        break;
    }
  }
  if (last_block_dense_set) out.set_last_block_dense(last_block_dense);
  return out;
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& addr, int64_t max_receive_bytes) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(std::min<int64_t>(max_receive_bytes, INT32_MAX)));
  return grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args);
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

double MillisecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace seer::remote
