// glibc malloc settings for a process that receives KV caches over gRPC
// (docs/KV_TRANSPORT.md, "Receive buffers").
//
// gRPC reads a bulk stream into freshly malloc'd slices of 1-16 MiB and frees
// them once the chunk has landed. Under glibc's defaults those come from
// per-thread arenas whose heaps are trimmed or unmapped as they empty, so a
// large share of every transfer lands in pages the kernel must fault in and
// zero first: on a 2-core machine 23,000 faults per 256 MiB, and the clearing
// cost more CPU than the copy into the page. One arena, with mmap and trim
// thresholds above the receive working set, keeps those pages mapped and
// reused, and the faults go to zero.
#pragma once

#include <string>

namespace seer {

struct MallocTuning {
  int arenas = 1;  // M_ARENA_MAX
  size_t mmap_threshold = size_t{32} << 20;  // M_MMAP_THRESHOLD: larger blocks are mapped (the KV pools, caches)
  size_t trim_threshold = size_t{1} << 30;  // M_TRIM_THRESHOLD: free heap kept before returning it to the OS
};

// Applies `tuning` with mallopt, unless the environment already says how
// malloc should behave (MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_,
// MALLOC_TRIM_THRESHOLD_, or a glibc.malloc tunable in GLIBC_TUNABLES): the
// operator's setting wins. Call it first in main, before any thread starts
// (the arena limit binds threads made after it). Returns one line saying what
// was done, for the startup log.
std::string TuneMallocForBulkReceive(const MallocTuning& tuning = {});

}  // namespace seer
