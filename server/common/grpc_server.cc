#include "server/common/grpc_server.h"

#include <signal.h>

#include <chrono>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

namespace seer {

Status SplitHostPort(const std::string& address, const std::string& flag, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 == address.size())
    return InvalidArgument(flag + ": '" + address + "' is not host:port");
  const std::string port_text = address.substr(colon + 1);
  int value = 0;
  for (char c : port_text) {
    if (c < '0' || c > '9' || value > 65535)
      return InvalidArgument(flag + ": '" + address + "' has a port that is not a number in [0, 65535]");
    value = value * 10 + (c - '0');
  }
  if (value > 65535) return InvalidArgument(flag + ": port " + port_text + " is out of range [0, 65535]");
  *host = address.substr(0, colon);
  *port = value;
  return OkStatus();
}

StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(const std::string& listen,
                                                        const std::vector<grpc::Service*>& services,
                                                        const std::vector<std::string>& health_names,
                                                        int max_receive_bytes) {
  std::string host;
  int requested_port = 0;
  SEER_RETURN_IF_ERROR(SplitHostPort(listen, "--listen", &host, &requested_port));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  std::unique_ptr<GrpcServer> out(new GrpcServer());
  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &bound_port);
  for (grpc::Service* s : services) builder.RegisterService(s);
  builder.SetMaxReceiveMessageSize(max_receive_bytes);
  // Decode workers ping every few seconds while they wait on a stream, to
  // find a stopped prefill server quickly (rpc/prefill_client.h,
  // --prefill-keepalive); pings that often must not count as abuse.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // The server pings its peers too: a peer that vanished without a TCP reset
  // (a partitioned node) is found within ~40 s and its stream cancelled,
  // instead of holding a prefill blocked in a write until TCP gives up.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  // Clients reconnect every few minutes, re-resolving their target, so that a
  // dns:/// name over a headless Service picks up new replicas. Streams in
  // flight keep their connection until they end (the grace period).
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, 5 * 60 * 1000);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS, 60 * 60 * 1000);
  out->server_ = builder.BuildAndStart();
  if (!out->server_ || bound_port == 0)
    return Unavailable("--listen " + listen + ": cannot bind (address in use or not local?)");
  out->port_ = bound_port;
  out->address_ = host + ":" + std::to_string(bound_port);
  out->service_names_ = health_names;
  out->SetServing(false);
  return out;
}

GrpcServer::~GrpcServer() { Shutdown(0.0); }

void GrpcServer::SetServing(bool serving) {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus("", serving);
  for (const std::string& name : service_names_) health->SetServingStatus(name, serving);
}

void GrpcServer::Shutdown(double drain_seconds) {
  if (shut_down_ || !server_) return;
  shut_down_ = true;
  SetServing(false);
  const auto deadline =
      std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(drain_seconds * 1000));
  server_->Shutdown(deadline);
  server_->Wait();
}

void BlockTerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForTerminationSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  return sig;
}

}  // namespace seer
