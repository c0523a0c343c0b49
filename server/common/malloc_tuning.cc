#include "server/common/malloc_tuning.h"

#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace seer {

std::string TuneMallocForBulkReceive(const MallocTuning& t) {
#if defined(__GLIBC__)
  for (const char* name : {"MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}) {
    if (std::getenv(name) != nullptr) return std::string("malloc: left as ") + name + " sets it";
  }
  if (const char* tunables = std::getenv("GLIBC_TUNABLES");
      tunables != nullptr && std::strstr(tunables, "glibc.malloc."))
    return "malloc: left as GLIBC_TUNABLES sets it";
  const bool ok = mallopt(M_ARENA_MAX, t.arenas) == 1 &&
                  mallopt(M_MMAP_THRESHOLD, static_cast<int>(t.mmap_threshold)) == 1 &&
                  mallopt(M_TRIM_THRESHOLD, static_cast<int>(t.trim_threshold)) == 1;
  if (!ok) return "malloc: mallopt refused the bulk-receive settings; glibc defaults kept";
  return "malloc: " + std::to_string(t.arenas) + " arena(s), mmap threshold " + std::to_string(t.mmap_threshold >> 20) +
         " MiB, trim threshold " + std::to_string(t.trim_threshold >> 20) +
         " MiB (bulk KV receive buffers reused, not re-faulted)";
#else
  (void)t;
  return "malloc: not glibc, left as it is";
#endif
}

}  // namespace seer
