// What seer-prefill and seer-decode share around their service: a gRPC server
// with grpc.health.v1.Health and server reflection, bound to a given address
// (port 0 picks a free port), and SIGTERM handling for a graceful shutdown.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "base/status.h"

namespace seer {

class GrpcServer {
 public:
  // Starts serving `services` (not owned) on `listen` (host:port). Health
  // says NOT_SERVING for "" and for each of `health_names` (the services'
  // full names) until SetServing(true). Messages up to `max_receive_bytes`
  // are accepted.
  static StatusOr<std::unique_ptr<GrpcServer>> Start(const std::string& listen,
                                                     const std::vector<grpc::Service*>& services,
                                                     const std::vector<std::string>& health_names,
                                                     int max_receive_bytes);
  ~GrpcServer();

  int port() const { return port_; }
  // host:port with the port actually bound.
  std::string address() const { return address_; }

  // Health of "" and of every service name.
  void SetServing(bool serving);
  // Health goes to NOT_SERVING, new calls are refused, in-flight calls get up
  // to `drain_seconds` to finish, then the rest are cancelled. Returns once
  // every call is done.
  void Shutdown(double drain_seconds);

 private:
  GrpcServer() = default;
  std::unique_ptr<grpc::Server> server_;
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

// Parses "host:port" into its parts; INVALID_ARGUMENT naming `flag`.
Status SplitHostPort(const std::string& address, const std::string& flag, std::string* host, int* port);

}  // namespace seer
