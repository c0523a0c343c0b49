#include "server/common/listen_socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace seer {

bool SetNonBlocking(int fd) {
  const int flags = fcntl(fd, F_GETFL, 0);
  return flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
}

StatusOr<ListenSocket> ListenTcp(const std::string& address, const std::string& flag) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return InvalidArgument(flag + " " + address + ": expected host:port");
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (port.empty()) return InvalidArgument(flag + " " + address + ": no port");
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return InvalidArgument(flag + " " + address + ": " + gai_strerror(rc));
  }
  ListenSocket s;
  std::string why = "no address";
  for (addrinfo* a = found; a != nullptr && s.fd < 0; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // not SO_REUSEPORT: a port in use fails
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 128) == 0 && SetNonBlocking(fd)) {
      s.fd = fd;
    } else {
      why = std::strerror(errno);
      close(fd);
    }
  }
  freeaddrinfo(found);
  if (s.fd < 0) return Unavailable(flag + " " + address + ": cannot listen: " + why);
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  getsockname(s.fd, reinterpret_cast<sockaddr*>(&bound), &len);
  s.port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                             : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  return s;
}

std::string PeerName(const std::string& host, int port) {
  const std::string p = std::to_string(port);
  if (host.find(':') == std::string::npos) return "ipv4:" + host + ":" + p;
  if (host.rfind("::ffff:", 0) == 0 && host.find('.') != std::string::npos) return "ipv4:" + host.substr(7) + ":" + p;
  return "ipv6:[" + host + "]:" + p;
}

std::string SocketPeerName(int fd) {
  sockaddr_storage peer{};
  socklen_t len = sizeof(peer);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0) return "";
  char host[INET6_ADDRSTRLEN] = {};
  if (peer.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&peer);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    return PeerName(host, ntohs(a->sin_port));
  }
  if (peer.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&peer);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    return PeerName(host, ntohs(a->sin6_port));
  }
  return "";
}

}  // namespace seer
