// TLS in front of a plaintext HTTP server of this process: /metrics (our
// MetricsHttpServer) and seer-decode's OpenAI API (civetweb, whose Debian
// build cannot serve TLS with OpenSSL 3; docs/ARCHITECTURE.md, "Platform
// facts"). The plaintext server listens on loopback only; TlsFront listens on
// the public address, completes each TLS handshake with OpenSSL and relays
// the decrypted bytes to the plaintext server and back.
//
// It takes the gRPC port's certificate files (--tls-cert, --tls-key, and
// --tls-client-ca to require client certificates) and re-reads them when
// they change, checked every reload_seconds, as the gRPC port does: a
// renewed certificate is served to new connections without a restart; files
// caught half-written keep the previous certificate until they parse.
//
// Bounds: at most max_connections at once (more are closed on accept), a
// handshake must finish within handshake_timeout_ms, and a connection with
// no bytes either way for idle_timeout_ms is closed. Each connection has a
// thread that sleeps in poll(2) between reads; the accept loop has one more.
#pragma once

#include <atomic>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "base/status.h"
#include "server/common/grpc_server.h"

namespace seer {

struct TlsFrontOptions {
  std::string listen;  // host:port or [v6 host]:port; port 0 picks one
  std::string flag;  // the flag `listen` came from, for errors ("--metrics")
  int backend_port = 0;  // the plaintext server, on 127.0.0.1
  ServerTlsOptions tls;  // must be enabled(); client_ca set: mutual TLS
  int max_connections = 256;
  int handshake_timeout_ms = 10000;
  int idle_timeout_ms = 600000;
};

class TlsFront {
 public:
  // Loads the certificate (INVALID_ARGUMENT naming the --tls-* flag when it
  // does not load) and binds `listen` (UNAVAILABLE when it cannot).
  static StatusOr<std::unique_ptr<TlsFront>> Start(const TlsFrontOptions& options);
  // Closes the port and every connection, and joins their threads.
  ~TlsFront();

  int port() const { return port_; }
  // The client a connection to the plaintext server comes from: its local
  // (loopback) port is `backend_peer_port`, the port the plaintext server
  // sees as its peer's. gRPC's form ("ipv4:10.0.0.7:51234"); "" when no
  // connection of the front has that port.
  std::string ClientBehind(int backend_peer_port) const;
  // Counters, for tests and logs.
  int64_t handshakes_failed() const { return handshakes_failed_.load(); }
  int64_t reloads() const { return reloads_.load(); }

 private:
  struct Context;  // a loaded SSL_CTX and the file state it came from
  struct Worker {
    std::thread thread;
    std::atomic<bool> done{false};
  };

  explicit TlsFront(TlsFrontOptions options) : options_(std::move(options)) {}
  void AcceptLoop();
  void MaybeReload();
  void Serve(int client_fd, std::shared_ptr<Context> context, Worker* self);
  std::shared_ptr<Context> CurrentContext();

  TlsFrontOptions options_;
  int listen_fd_ = -1;
  int port_ = 0;
  int stop_fds_[2] = {-1, -1};  // readable once the front stops
  std::thread accept_thread_;
  std::list<Worker> workers_;  // accept thread only
  std::mutex context_mu_;
  std::shared_ptr<Context> context_;
  mutable std::mutex clients_mu_;
  std::map<int, std::string> clients_;  // backend connection's local port -> client
  std::atomic<int64_t> handshakes_failed_{0};
  std::atomic<int64_t> reloads_{0};
};

}  // namespace seer
