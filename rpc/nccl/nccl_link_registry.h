// The NCCL KV links a process holds, one per peer process: a prefill server
// keys them by the decode worker's decode_instance, a decode worker by the
// prefill's prefill_instance (docs/KV_TRANSPORT.md, "Links"). A link that
// failed, or that nothing used for `idle_seconds` (its peer restarted, or
// went away), is dropped when the registry is next looked at.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "rpc/nccl/nccl_kv_link.h"

namespace seer {

class NcclLinkRegistry {
 public:
  using Clock = std::chrono::steady_clock;

  struct Entry {
    uint64_t id = 0;
    std::shared_ptr<NcclKvLink> link;
    Clock::time_point opened;  // when this side opened it
    Clock::time_point last_used;  // opened, or last found
  };

  explicit NcclLinkRegistry(double idle_seconds = 300.0) : idle_seconds_(idle_seconds) {}

  // The link with `peer` (marked used), unless there is none or it was dropped.
  std::optional<Entry> Find(const std::string& peer);
  // Holds `link` as the one with `peer`, replacing (and aborting) any other.
  void Put(const std::string& peer, uint64_t id, std::shared_ptr<NcclKvLink> link);
  // Aborts and forgets the link with `peer` if it is still `id`.
  void Drop(const std::string& peer, uint64_t id, const std::string& why);
  // The ready links, (peer, id), the most recently used first, at most `max`.
  std::vector<std::pair<std::string, uint64_t>> Ready(size_t max);

  struct Counts {
    int joining = 0, ready = 0;
  };
  Counts counts();

 private:
  // Drops failed and idle links.
  void PruneLocked();

  const double idle_seconds_;
  std::mutex mu_;
  std::map<std::string, Entry> links_;
};

}  // namespace seer
