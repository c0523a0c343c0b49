#include "rpc/nccl/nccl_link_registry.h"

#include <algorithm>

namespace seer {

void NcclLinkRegistry::PruneLocked() {
  const Clock::time_point now = Clock::now();
  for (auto it = links_.begin(); it != links_.end();) {
    Entry& e = it->second;
    const bool idle = std::chrono::duration<double>(now - e.last_used).count() > idle_seconds_;
    if (!e.link->health().ok() || idle) {
      // Aborting an idle link frees its communicator; the peer drops its own
      // side the same way, or finds it failed.
      if (idle) e.link->Abort("unused for " + std::to_string(static_cast<int>(idle_seconds_)) + " s");
      it = links_.erase(it);
    } else {
      ++it;
    }
  }
}

std::optional<NcclLinkRegistry::Entry> NcclLinkRegistry::Find(const std::string& peer) {
  std::lock_guard<std::mutex> lock(mu_);
  PruneLocked();
  auto it = links_.find(peer);
  if (it == links_.end()) return std::nullopt;
  it->second.last_used = Clock::now();
  return it->second;
}

void NcclLinkRegistry::Put(const std::string& peer, uint64_t id, std::shared_ptr<NcclKvLink> link) {
  std::shared_ptr<NcclKvLink> old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const Clock::time_point now = Clock::now();
    Entry& e = links_[peer];
    old = std::move(e.link);
    e = Entry{id, std::move(link), now, now};
  }
  if (old != nullptr) old->Abort("replaced by a new link with the same peer");
}

void NcclLinkRegistry::Drop(const std::string& peer, uint64_t id, const std::string& why) {
  std::shared_ptr<NcclKvLink> old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = links_.find(peer);
    if (it == links_.end() || it->second.id != id) return;
    old = std::move(it->second.link);
    links_.erase(it);
  }
  old->Abort(why);
}

std::vector<std::pair<std::string, uint64_t>> NcclLinkRegistry::Ready(size_t max) {
  std::lock_guard<std::mutex> lock(mu_);
  PruneLocked();
  std::vector<std::pair<Clock::time_point, std::pair<std::string, uint64_t>>> ready;
  for (const auto& [peer, e] : links_)
    if (e.link->ready()) ready.push_back({e.last_used, {peer, e.id}});
  std::sort(ready.begin(), ready.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::pair<std::string, uint64_t>> out;
  for (size_t i = 0; i < ready.size() && i < max; ++i) out.push_back(ready[i].second);
  return out;
}

NcclLinkRegistry::Counts NcclLinkRegistry::counts() {
  std::lock_guard<std::mutex> lock(mu_);
  PruneLocked();
  Counts c;
  for (const auto& [peer, e] : links_) (e.link->ready() ? c.ready : c.joining) += 1;
  return c;
}

}  // namespace seer
