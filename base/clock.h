// The one clock for durations (monotonic) and its seconds.
#pragma once

#include <chrono>

namespace seer {

using Clock = std::chrono::steady_clock;

inline double SecondsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

inline double SecondsSince(Clock::time_point t) { return SecondsBetween(t, Clock::now()); }

}  // namespace seer
