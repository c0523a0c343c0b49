// What seer-prefill and seer-decode share around their service: a gRPC server
// with grpc.health.v1.Health and server reflection, bound to a given address
// (port 0 picks a free port), optionally TLS or mutual TLS, with the edge
// limits of docs/SERVICE.md ("Limits"), and SIGTERM handling for a graceful
// shutdown.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "base/status.h"
#include "server/common/request_log.h"

namespace seer {

// --tls-cert / --tls-key: serve TLS; --tls-client-ca: also require a client
// certificate signed by this CA (mutual TLS). The files are watched and
// reloaded every `reload_seconds` when they change, so a renewed certificate
// (a Kubernetes Secret update, cert-manager) needs no restart.
struct ServerTlsOptions {
  std::string cert, key, client_ca;
  int reload_seconds = 60;
  bool enabled() const { return !cert.empty(); }
};

// Checks the flag combination and that every file is readable PEM; names the
// flag on error.
Status CheckServerTls(const ServerTlsOptions& tls);

struct GrpcServerOptions {
  std::string listen;  // host:port or [v6 host]:port
  std::vector<grpc::Service*> services;  // not owned
  // The services' full names: health says NOT_SERVING for these and "" until
  // SetServing(true).
  std::vector<std::string> health_names;
  // The largest request message accepted; larger ones get RESOURCE_EXHAUSTED
  // before they are parsed. Servers pass MaxRequestBytes(limits) plus
  // kReceiveMarginBytes.
  int max_receive_bytes = 1 << 20;
  ServerTlsOptions tls;
  CallHooks hooks;
};

// Room above the largest valid request in the receive limit.
inline constexpr int kReceiveMarginBytes = 16 << 10;
// Request metadata (headers) a call may carry; more is refused.
inline constexpr int kMaxMetadataBytes = 16 << 10;
// Threads for synchronous handlers (server reflection) at once; each open
// reflection stream holds one.
inline constexpr int kMaxSyncHandlerThreads = 64;

class GrpcServer {
 public:
  static StatusOr<std::unique_ptr<GrpcServer>> Start(GrpcServerOptions options);
  // Plaintext, without call hooks: the tests' and benchmarks' short form.
  static StatusOr<std::unique_ptr<GrpcServer>> Start(const std::string& listen,
                                                     const std::vector<grpc::Service*>& services,
                                                     const std::vector<std::string>& health_names,
                                                     int max_receive_bytes);
  ~GrpcServer();

  int port() const { return port_; }
  // host:port with the port actually bound.
  std::string address() const { return address_; }

  // A channel into this server within the process (no socket, no TLS),
  // through the same interceptors and limits as a network call: how
  // seer-decode's OpenAI front door calls Generate.
  std::shared_ptr<grpc::Channel> InProcessChannel() const;

  // Health of "" and of every service name.
  void SetServing(bool serving);
  // One more name whose health follows the others' (from the next
  // SetServing; NOT_SERVING until then): seer-prefill's
  // PrefillModelHealthName once its model has loaded.
  void AddHealthName(const std::string& name);
  // Health goes to NOT_SERVING, new calls are refused, in-flight calls get up
  // to `drain_seconds` to finish, then the rest are cancelled. Returns once
  // every call is done.
  // `drain_expired`, if given, runs (on another thread) when the drain time
  // runs out with calls still open, just before gRPC cancels them.
  void Shutdown(double drain_seconds, std::function<void()> drain_expired = nullptr);

 private:
  GrpcServer() = default;
  std::unique_ptr<grpc::Service> reflection_v1_;  // outlives server_ (declared first)
  std::unique_ptr<grpc::Server> server_;
  std::mutex names_mu_;  // service_names_ and the health statuses set from them
  std::vector<std::string> service_names_;
  std::string address_;
  int port_ = 0;
  bool shut_down_ = false;
};

// Blocks SIGTERM and SIGINT in this thread and every thread started after it;
// call first thing in main. WaitForTerminationSignal then receives them.
void BlockTerminationSignals();
// Returns the signal number (SIGTERM or SIGINT).
int WaitForTerminationSignal();

// Parses "host:port" or "[v6 host]:port" into its parts (the host keeps its
// brackets); INVALID_ARGUMENT naming `flag`.
Status SplitHostPort(const std::string& address, const std::string& flag, std::string* host, int* port);

}  // namespace seer
