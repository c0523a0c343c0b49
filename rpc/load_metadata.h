// The load a seer.v1 server reports to its callers, in the initial metadata
// of every response: requests holding a slot and waiting for one when the
// response's headers went out (an admitted request counts itself), and the
// server's bounds. The server side writes it (server/common/request_log.cc);
// the decode worker's prefill client reads it to prefer the least loaded
// prefill endpoint (rpc/prefill_client.cc).
#pragma once

#include <charconv>
#include <cstdint>
#include <map>
#include <string_view>

namespace seer {

inline constexpr const char kLoadMetadataRunning[] = "seer-running";
inline constexpr const char kLoadMetadataQueued[] = "seer-queued";
inline constexpr const char kLoadMetadataMaxConcurrent[] = "seer-max-concurrent";
inline constexpr const char kLoadMetadataMaxQueue[] = "seer-max-queue";

// Running plus queued from a response's initial metadata, or -1 when either
// is absent or not a non-negative integer. `Metadata` is the client's
// multimap<grpc::string_ref, grpc::string_ref>.
template <typename Metadata>
int64_t ReportedQueueDepth(const Metadata& md) {
  int64_t depth = 0;
  for (const char* key : {kLoadMetadataRunning, kLoadMetadataQueued}) {
    const auto it = md.find(key);
    if (it == md.end()) return -1;
    const char* begin = it->second.data();
    const char* end = begin + it->second.size();
    int64_t v = -1;
    const auto [stop, ec] = std::from_chars(begin, end, v);
    if (ec != std::errc() || stop != end || v < 0) return -1;
    depth += v;
  }
  return depth;
}

}  // namespace seer
