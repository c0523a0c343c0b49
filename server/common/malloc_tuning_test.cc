// TuneMallocForBulkReceive (malloc_tuning.h): it applies the settings, says
// so, and leaves malloc alone when the environment already configures it.
#include "server/common/malloc_tuning.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdlib>
#include <string>
#include <vector>

namespace seer {
namespace {

TEST(MallocTuning, AppliesTheSettingsUnlessTheEnvironmentHasItsOwn) {
  for (const char* name : {"MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"})
    unsetenv(name);
#if defined(__GLIBC__)
  EXPECT_EQ(TuneMallocForBulkReceive(),
            "malloc: 1 arena(s), mmap threshold 32 MiB, trim threshold 1024 MiB (bulk KV receive buffers reused, not "
            "re-faulted)");
  // Large blocks are still served and freed (above the threshold: mapped).
  std::vector<char> big(size_t{64} << 20, 1), medium(size_t{4} << 20, 2);
  EXPECT_EQ(big[12345] + medium[4321], 3);

  setenv("MALLOC_ARENA_MAX", "4", 1);
  EXPECT_EQ(TuneMallocForBulkReceive(), "malloc: left as MALLOC_ARENA_MAX sets it");
  unsetenv("MALLOC_ARENA_MAX");
  setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000000", 1);
  EXPECT_EQ(TuneMallocForBulkReceive(), "malloc: left as GLIBC_TUNABLES sets it");
  setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0", 1);  // not about malloc: applied
  EXPECT_NE(TuneMallocForBulkReceive().find("1 arena(s)"), std::string::npos);
  unsetenv("GLIBC_TUNABLES");
  MallocTuning two;
  two.arenas = 2;
  EXPECT_NE(TuneMallocForBulkReceive(two).find("2 arena(s)"), std::string::npos);
#else
  EXPECT_EQ(TuneMallocForBulkReceive(), "malloc: not glibc, left as it is");
#endif
}

}  // namespace
}  // namespace seer
