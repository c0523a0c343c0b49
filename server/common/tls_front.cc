#include "server/common/tls_front.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cerrno>
#include <csignal>
#include <chrono>
#include <cstring>
#include <vector>

#include "server/common/listen_socket.h"
#include "server/common/logging.h"

namespace seer {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kRelayBytes = 64 << 10;

// What identifies a file's contents without reading it: a renewed Secret is
// a new file (inode) or a rewrite (mtime, size).
struct FileStamp {
  dev_t dev = 0;
  ino_t ino = 0;
  int64_t mtime_ns = 0;
  off_t size = -1;
  bool operator==(const FileStamp&) const = default;
};

FileStamp Stamp(const std::string& path) {
  FileStamp s;
  struct stat st {};
  if (path.empty() || stat(path.c_str(), &st) != 0) return s;
  s.dev = st.st_dev;
  s.ino = st.st_ino;
  s.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  s.size = st.st_size;
  return s;
}

// The state of the three --tls-* files a context was loaded from.
struct TlsFileStamps {
  FileStamp cert, key, client_ca;
  bool operator==(const TlsFileStamps&) const = default;
};

TlsFileStamps StampFiles(const ServerTlsOptions& tls) {
  return {Stamp(tls.cert), Stamp(tls.key), Stamp(tls.client_ca)};
}

// OpenSSL's error queue as one line, emptied.
std::string SslErrors() {
  std::string out;
  while (const unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no OpenSSL error" : out;
}

JsonValue Field(const char* key, JsonValue value) {
  JsonValue f = JsonValue::Object();
  f.Set(key, std::move(value));
  return f;
}

// poll(2) on the client, the backend and the stop pipe until `deadline`;
// false when the deadline passed or the front stops.
bool Wait(pollfd* fds, nfds_t n, Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    const int rc = poll(fds, n, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (rc < 0 && errno != EINTR) return false;
    if (rc > 0) return (fds[n - 1].revents & POLLIN) == 0;  // the last one is the stop pipe
    if (rc == 0 && Clock::now() >= deadline) return false;
  }
}

}  // namespace

struct TlsFront::Context {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx{nullptr, &SSL_CTX_free};
  TlsFileStamps files;
  Clock::time_point checked;
};

namespace {

// A server SSL_CTX from the --tls-* files, or the error naming the flag.
StatusOr<std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)>> LoadContext(const ServerTlsOptions& tls) {
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_server_method()), &SSL_CTX_free);
  if (!ctx) return Internal("TLS: SSL_CTX_new: " + SslErrors());
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), tls.cert.c_str()) != 1)
    return InvalidArgument("--tls-cert: '" + tls.cert + "': " + SslErrors());
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), tls.key.c_str(), SSL_FILETYPE_PEM) != 1)
    return InvalidArgument("--tls-key: '" + tls.key + "': " + SslErrors());
  if (SSL_CTX_check_private_key(ctx.get()) != 1)
    return InvalidArgument("--tls-key: '" + tls.key + "' is not the key of --tls-cert: " + SslErrors());
  if (!tls.client_ca.empty()) {
    if (SSL_CTX_load_verify_locations(ctx.get(), tls.client_ca.c_str(), nullptr) != 1)
      return InvalidArgument("--tls-client-ca: '" + tls.client_ca + "': " + SslErrors());
    STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(tls.client_ca.c_str());
    if (names != nullptr) SSL_CTX_set_client_CA_list(ctx.get(), names);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  return ctx;
}

}  // namespace

StatusOr<std::unique_ptr<TlsFront>> TlsFront::Start(const TlsFrontOptions& options) {
  if (!options.tls.enabled()) return InvalidArgument(options.flag + ": TLS needs --tls-cert and --tls-key");
  // A peer that closes mid-write must not kill the process (SSL_write writes
  // to the socket with write(2), which raises SIGPIPE).
  signal(SIGPIPE, SIG_IGN);
  std::unique_ptr<TlsFront> front(new TlsFront(options));
  auto context = std::make_shared<Context>();
  context->files = StampFiles(options.tls);
  SEER_ASSIGN_OR_RETURN(context->ctx, LoadContext(options.tls));
  context->checked = Clock::now();
  front->context_ = std::move(context);
  SEER_ASSIGN_OR_RETURN(ListenSocket listening, ListenTcp(options.listen, options.flag));
  front->listen_fd_ = listening.fd;
  front->port_ = listening.port;
  if (pipe2(front->stop_fds_, O_CLOEXEC | O_NONBLOCK) != 0)
    return Internal(options.flag + ": pipe: " + std::string(std::strerror(errno)));
  front->accept_thread_ = std::thread([p = front.get()] { p->AcceptLoop(); });
  return front;
}

TlsFront::~TlsFront() {
  if (accept_thread_.joinable()) {
    const char byte = 0;
    (void)!write(stop_fds_[1], &byte, 1);
    accept_thread_.join();
  }
  for (int fd : {listen_fd_, stop_fds_[0], stop_fds_[1]}) {
    if (fd >= 0) close(fd);
  }
}

std::string TlsFront::ClientBehind(int backend_peer_port) const {
  std::lock_guard<std::mutex> lock(clients_mu_);
  const auto it = clients_.find(backend_peer_port);
  return it == clients_.end() ? std::string() : it->second;
}

std::shared_ptr<TlsFront::Context> TlsFront::CurrentContext() {
  std::lock_guard<std::mutex> lock(context_mu_);
  return context_;
}

void TlsFront::MaybeReload() {
  std::shared_ptr<Context> current = CurrentContext();
  if (Clock::now() - current->checked < std::chrono::seconds(options_.tls.reload_seconds)) return;
  auto next = std::make_shared<Context>();
  next->files = StampFiles(options_.tls);
  next->checked = Clock::now();
  if (next->files == current->files) {
    current->checked = next->checked;  // only this thread reads or writes `checked`
    return;
  }
  StatusOr<std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)>> ctx = LoadContext(options_.tls);
  if (!ctx.ok()) {
    // Half-written files (the cert renewed before the key, say): keep
    // serving the old pair and try again at the next check.
    LogEvent(LogLevel::kWarn, "tls reload failed",
             Field("error", JsonValue::String(options_.flag + ": " + ctx.status().ToString())));
    current->checked = next->checked;
    return;
  }
  next->ctx = std::move(ctx).value();
  {
    std::lock_guard<std::mutex> lock(context_mu_);
    context_ = std::move(next);
  }
  reloads_.fetch_add(1);
  LogEvent(LogLevel::kInfo, "tls reloaded", Field("port", JsonValue::String(options_.flag)));
}

void TlsFront::AcceptLoop() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fds_[0], POLLIN, 0}};
    const int rc = poll(fds, 2, 1000);
    if (fds[1].revents & POLLIN) break;
    MaybeReload();
    // Reap the connections that ended.
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (it->done.load()) {
        it->thread.join();
        it = workers_.erase(it);
      } else {
        ++it;
      }
    }
    if (rc <= 0 || !(fds[0].revents & POLLIN)) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) continue;
    if (static_cast<int>(workers_.size()) >= options_.max_connections) {
      close(fd);  // at the bound: the client sees the connection close
      continue;
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    Worker& w = workers_.emplace_back();
    w.thread = std::thread([this, fd, context = CurrentContext(), &w] { Serve(fd, context, &w); });
  }
  for (Worker& w : workers_) w.thread.join();  // each sees the stop pipe
  workers_.clear();
}

void TlsFront::Serve(int client_fd, std::shared_ptr<Context> context, Worker* self) {
  SSL* ssl = SSL_new(context->ctx.get());
  int backend_fd = -1;
  int backend_port = 0;  // the backend connection's local port, while listed in clients_
  bool ssl_broken = false;  // after a fatal error SSL_shutdown must not run
  auto finish = [&] {
    if (backend_port != 0) {
      std::lock_guard<std::mutex> lock(clients_mu_);
      clients_.erase(backend_port);
    }
    if (ssl != nullptr) {
      if (!ssl_broken) SSL_shutdown(ssl);
      SSL_free(ssl);
    }
    ERR_clear_error();
    if (backend_fd >= 0) close(backend_fd);
    close(client_fd);
    self->done.store(true);
  };
  if (ssl == nullptr || SSL_set_fd(ssl, client_fd) != 1) {
    ssl_broken = true;
    return finish();
  }

  // A plaintext HTTP client gets an answer it can show, as nginx gives one,
  // rather than a reset: a TLS connection starts with a handshake record
  // (content type 22).
  const auto handshake_deadline = Clock::now() + std::chrono::milliseconds(options_.handshake_timeout_ms);
  {
    pollfd fds[2] = {{client_fd, POLLIN, 0}, {stop_fds_[0], POLLIN, 0}};
    unsigned char first = 0;
    if (!Wait(fds, 2, handshake_deadline) || recv(client_fd, &first, 1, MSG_PEEK) != 1) {
      handshakes_failed_.fetch_add(1);
      ssl_broken = true;
      return finish();
    }
    if (first != 22) {
      static constexpr char kPlaintext[] =
          "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 49\r\nConnection: close\r\n\r\n"
          "this port serves HTTPS: use https:// to reach it\n";
      (void)!send(client_fd, kPlaintext, sizeof(kPlaintext) - 1, MSG_NOSIGNAL);
      // Read what the client sent before closing, for up to a second: closing
      // with unread bytes resets the connection, and the reset can overtake
      // the answer.
      shutdown(client_fd, SHUT_WR);
      const auto linger = Clock::now() + std::chrono::seconds(1);
      char sink[4096];
      for (pollfd w[2] = {{client_fd, POLLIN, 0}, {stop_fds_[0], POLLIN, 0}};
           Wait(w, 2, linger) && recv(client_fd, sink, sizeof(sink), 0) > 0;) {}
      handshakes_failed_.fetch_add(1);
      ssl_broken = true;
      return finish();
    }
  }
  // The handshake, within its deadline.
  for (;;) {
    const int rc = SSL_accept(ssl);
    if (rc == 1) break;
    const int err = SSL_get_error(ssl, rc);
    pollfd fds[2] = {{client_fd, static_cast<short>(err == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN), 0},
                     {stop_fds_[0], POLLIN, 0}};
    if ((err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) || !Wait(fds, 2, handshake_deadline)) {
      // A plaintext client, an untrusted or missing client certificate, a
      // client that never finishes: counted, logged at debug.
      handshakes_failed_.fetch_add(1);
      if (LogEnabled(LogLevel::kDebug)) {
        LogEvent(LogLevel::kDebug, "tls handshake failed", Field("error", JsonValue::String(SslErrors())));
      }
      ssl_broken = true;
      return finish();
    }
  }

  // The plaintext server on loopback.
  backend_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in backend{};
  backend.sin_family = AF_INET;
  backend.sin_port = htons(static_cast<uint16_t>(options_.backend_port));
  backend.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (backend_fd < 0 || connect(backend_fd, reinterpret_cast<sockaddr*>(&backend), sizeof(backend)) != 0 ||
      !SetNonBlocking(backend_fd)) {
    LogEvent(LogLevel::kError, "tls front: backend unreachable",
             Field("error", JsonValue::String(options_.flag + ": " + std::strerror(errno))));
    return finish();
  }
  const int one = 1;
  setsockopt(backend_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  // Listed before any byte reaches the backend, so a request it serves can
  // always name its client.
  sockaddr_in local{};
  socklen_t local_len = sizeof(local);
  if (getsockname(backend_fd, reinterpret_cast<sockaddr*>(&local), &local_len) == 0) {
    backend_port = ntohs(local.sin_port);
    std::lock_guard<std::mutex> lock(clients_mu_);
    clients_[backend_port] = SocketPeerName(client_fd);
  }

  // Relay until either side is done. `up` holds decrypted client bytes on
  // their way to the backend, `down` backend bytes on their way to the
  // client; SSL_write must be retried with the same bytes, so `down` is only
  // refilled once empty.
  std::vector<char> up(kRelayBytes), down(kRelayBytes);
  size_t up_begin = 0, up_end = 0, down_begin = 0, down_end = 0;
  bool client_eof = false, backend_eof = false, backend_shut = false;
  auto idle_deadline = Clock::now() + std::chrono::milliseconds(options_.idle_timeout_ms);
  for (;;) {
    bool progress = false;
    short client_events = 0, backend_events = 0;
    // Client -> backend.
    if (up_begin == up_end && !client_eof) {
      const int n = SSL_read(ssl, up.data(), static_cast<int>(up.size()));
      if (n > 0) {
        up_begin = 0, up_end = static_cast<size_t>(n), progress = true;
      } else {
        const int err = SSL_get_error(ssl, n);
        if (err == SSL_ERROR_WANT_READ) {
          client_events |= POLLIN;
        } else if (err == SSL_ERROR_WANT_WRITE) {
          client_events |= POLLOUT;
        } else {
          client_eof = true, progress = true;
          if (err != SSL_ERROR_ZERO_RETURN) ssl_broken = true;
        }
      }
    }
    if (up_begin < up_end) {
      const ssize_t n = send(backend_fd, up.data() + up_begin, up_end - up_begin, MSG_NOSIGNAL);
      if (n > 0) {
        up_begin += static_cast<size_t>(n), progress = true;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        backend_events |= POLLOUT;
      } else {
        break;
      }
    }
    if (client_eof && up_begin == up_end && !backend_shut) {
      shutdown(backend_fd, SHUT_WR);
      backend_shut = true;
    }
    // Backend -> client.
    if (down_begin == down_end && !backend_eof) {
      const ssize_t n = recv(backend_fd, down.data(), down.size(), 0);
      if (n > 0) {
        down_begin = 0, down_end = static_cast<size_t>(n), progress = true;
      } else if (n == 0) {
        backend_eof = true, progress = true;
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        backend_events |= POLLIN;
      } else {
        break;
      }
    }
    if (down_begin < down_end) {
      if (ssl_broken) break;  // the client is gone: nothing can reach it
      const int n = SSL_write(ssl, down.data() + down_begin, static_cast<int>(down_end - down_begin));
      if (n > 0) {
        down_begin += static_cast<size_t>(n), progress = true;
      } else {
        const int err = SSL_get_error(ssl, n);
        if (err == SSL_ERROR_WANT_WRITE) {
          client_events |= POLLOUT;
        } else if (err == SSL_ERROR_WANT_READ) {
          client_events |= POLLIN;
        } else {
          ssl_broken = true;
          break;
        }
      }
    }
    if (backend_eof && down_begin == down_end) break;  // the server answered and closed
    if (client_eof && ssl_broken) break;  // the client dropped the connection
    if (progress) {
      idle_deadline = Clock::now() + std::chrono::milliseconds(options_.idle_timeout_ms);
      continue;
    }
    // A side with nothing to wait for is left out (fd -1): poll would report
    // its hang-up at once and forever, and the loop would spin.
    pollfd fds[3] = {{client_events ? client_fd : -1, client_events, 0},
                     {backend_events ? backend_fd : -1, backend_events, 0},
                     {stop_fds_[0], POLLIN, 0}};
    if (!Wait(fds, 3, idle_deadline)) break;
  }
  finish();
}

}  // namespace seer
