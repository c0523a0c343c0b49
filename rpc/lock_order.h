// abseil's lock-order (deadlock) detector, which every absl::Mutex that gRPC
// takes goes through. Debian builds abseil without NDEBUG, and there the
// detector is on by default in abort mode: each lock acquisition updates a
// process-wide graph under one global spin lock, and an inverted lock order
// anywhere kills the process. Every Seer program that talks gRPC sets it
// first thing: off (what release builds of abseil do), or on in report mode
// (stderr) for debugging (the servers' --lock-order-checks).
#pragma once

#include <string>

namespace seer {

// Returns a line for the startup log.
std::string SetLockOrderChecks(bool on);

}  // namespace seer
