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

// A TCP peer named as gRPC names its peers: "ipv4:10.0.0.7:51234",
// "ipv6:[fd00::7]:51234" (an IPv4-mapped IPv6 address as its IPv4 form).
std::string PeerName(const std::string& host, int port);
// The peer of a connected socket, named so; "" when it has none.
std::string SocketPeerName(int fd);

}  // namespace seer
