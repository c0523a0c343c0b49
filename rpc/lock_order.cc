#include "rpc/lock_order.h"

#include "absl/synchronization/mutex.h"

namespace seer {

std::string SetLockOrderChecks(bool on) {
  absl::SetMutexDeadlockDetectionMode(on ? absl::OnDeadlockCycle::kReport : absl::OnDeadlockCycle::kIgnore);
  return on ? "abseil lock-order checks: on, cycles reported to stderr" : "abseil lock-order checks: off";
}

}  // namespace seer
