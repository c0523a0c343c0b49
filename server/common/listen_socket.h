// A listening TCP socket for the servers' HTTP ports (/metrics, the TLS
// front): IPv4 or IPv6, non-blocking, close-on-exec, and a port already in
// use is an error (SO_REUSEADDR, never SO_REUSEPORT).
#pragma once

#include <string>

#include "base/status.h"

namespace seer {

struct ListenSocket {
  int fd = -1;
  int port = 0;  // the bound port (the one picked, for port 0)
};

// `address` is host:port or [v6 host]:port; an empty host or "0.0.0.0" binds
// every IPv4 address, "[::]" every IPv6 (and IPv4-mapped) one. Errors name
// `flag`: INVALID_ARGUMENT for a malformed address, UNAVAILABLE when it
// cannot be bound.
StatusOr<ListenSocket> ListenTcp(const std::string& address, const std::string& flag);

bool SetNonBlocking(int fd);

}  // namespace seer
