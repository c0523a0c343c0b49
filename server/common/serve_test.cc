// CommonServerFlags' --lock-order-checks (serve.h, SetLockOrderChecks): off
// by default, so an inverted lock order, on which Debian's abseil (built
// without NDEBUG) aborts the process, passes; on, it is reported and the
// process goes on. Each case runs in a child process (a death test), since
// the setting is process-wide and the default one would kill this binary.
#include "server/common/serve.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "rpc/lock_order.h"

namespace seer {
namespace {

// Parses `args` into the common flags and applies them; exits 3 on an error.
void ApplyCommonFlags(std::vector<std::string> args) {
  CommonServerFlags common;
  FlagSet flags("test", "");
  common.Register(flags);
  std::vector<char*> argv = {const_cast<char*>("test")};
  for (std::string& a : args) argv.push_back(a.data());
  if (!flags.Parse(static_cast<int>(argv.size()), argv.data()).ok() || !common.Apply("test").ok()) std::exit(3);
}

// Takes two mutexes in one order, then in the other: a cycle in the
// lock-order graph, though never a deadlock on one thread.
void InvertLockOrder() {
  absl::Mutex a, b;
  {
    absl::MutexLock la(&a);
    absl::MutexLock lb(&b);
  }
  {
    absl::MutexLock lb(&b);
    absl::MutexLock la(&a);
  }
  std::fprintf(stderr, "went on\n");
  std::exit(0);
}

TEST(LockOrderChecksDeathTest, OffByDefault) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        ApplyCommonFlags({"--log-level=off"});
        InvertLockOrder();
      },
      ::testing::ExitedWithCode(0), "went on");
  EXPECT_EQ(SetLockOrderChecks(false), "abseil lock-order checks: off");
}

TEST(LockOrderChecksDeathTest, TheFlagReportsCyclesWithoutAborting) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // Debian's abseil has the detector compiled in: the cycle is reported
  // ("Cycle", then the mutexes), and the process lives.
  EXPECT_EXIT(
      {
        ApplyCommonFlags({"--log-level=off", "--lock-order-checks"});
        InvertLockOrder();
      },
      ::testing::ExitedWithCode(0), "Cycle(.|\n)*went on");
}

}  // namespace
}  // namespace seer
