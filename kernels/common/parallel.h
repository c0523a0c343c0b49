// A minimal fork-join helper for the CPU twins: no pool, no queue. Each call
// starts its threads and joins them before returning, which costs tens of
// microseconds, small next to the prefill work it splits.
#pragma once

#include <algorithm>
#include <atomic>
#include <system_error>
#include <thread>
#include <vector>

namespace seer::cpu {

// Runs fn(i) for every i in [0, n) on up to `num_threads` threads, the
// caller's included. Indices are handed out one at a time, so tasks of uneven
// cost (the rows of a causal triangle) still balance. If the system refuses a
// thread, the remaining work simply runs on the threads that did start.
template <typename Fn>
void ParallelFor(int n, int num_threads, Fn&& fn) {
  const int threads = std::min(num_threads, n);
  if (threads <= 1) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<int> next{0};
  auto worker = [&] {
    for (int i = next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      fn(i);
    }
  };
  std::vector<std::thread> helpers;
  helpers.reserve(threads - 1);
  for (int t = 1; t < threads; ++t) {
    try {
      helpers.emplace_back(worker);
    } catch (const std::system_error&) {
      break;
    }
  }
  worker();
  for (auto& h : helpers) h.join();
}

}  // namespace seer::cpu
