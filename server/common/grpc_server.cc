#include "server/common/grpc_server.h"

#include <signal.h>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <thread>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <grpc/compression.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>

#include "server/common/reflection_v1.h"
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include "grpc/health/v1/health.pb.h"

namespace seer {
namespace {

Status CheckPemFile(const std::string& path, const std::string& flag, const std::string& what) {
  std::ifstream in(path);
  if (!in) return InvalidArgument(flag + ": cannot read '" + path + "'");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.find("-----BEGIN ") == std::string::npos || text.find(what) == std::string::npos)
    return InvalidArgument(flag + ": '" + path + "' holds no PEM " + what);
  return OkStatus();
}

// The key must be the certificate's: gRPC would otherwise log "Invalid
// private key" and fail every handshake while the server reports ready.
Status CheckKeyMatchesCertificate(const std::string& cert_path, const std::string& key_path) {
  std::unique_ptr<BIO, decltype(&BIO_free)> cert_bio(BIO_new_file(cert_path.c_str(), "r"), &BIO_free);
  std::unique_ptr<BIO, decltype(&BIO_free)> key_bio(BIO_new_file(key_path.c_str(), "r"), &BIO_free);
  if (cert_bio == nullptr) return InvalidArgument("--tls-cert: cannot read '" + cert_path + "'");
  if (key_bio == nullptr) return InvalidArgument("--tls-key: cannot read '" + key_path + "'");
  std::unique_ptr<X509, decltype(&X509_free)> cert(PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr),
                                                   &X509_free);
  if (cert == nullptr) return InvalidArgument("--tls-cert: '" + cert_path + "' holds no certificate OpenSSL can read");
  // No passphrase callback: an encrypted key fails here, as it would in gRPC.
  auto no_passphrase = [](char*, int, int, void*) { return 0; };
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, no_passphrase, nullptr), &EVP_PKEY_free);
  ERR_clear_error();
  if (key == nullptr) {
    return InvalidArgument("--tls-key: '" + key_path +
                           "' holds no private key OpenSSL can read (it must not be "
                           "encrypted)");
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    ERR_clear_error();
    return InvalidArgument("--tls-key: '" + key_path + "' is not the private key of --tls-cert's certificate '" +
                           cert_path + "'");
  }
  return OkStatus();
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const ServerTlsOptions& tls) {
  if (!tls.enabled()) return grpc::InsecureServerCredentials();
  // The provider re-reads the files every reload_seconds and switches to
  // their new contents when they changed (and parse).
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(tls.key, tls.cert, tls.client_ca,
                                                                                       tls.reload_seconds);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (!tls.client_ca.empty()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

}  // namespace

Status CheckServerTls(const ServerTlsOptions& tls) {
  if (tls.cert.empty() != tls.key.empty()) return InvalidArgument("--tls-cert and --tls-key go together");
  if (!tls.enabled()) {
    if (!tls.client_ca.empty()) return InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key");
    return OkStatus();
  }
  if (tls.reload_seconds < 1) return InvalidArgument("--tls-reload-seconds: must be at least 1");
  SEER_RETURN_IF_ERROR(CheckPemFile(tls.cert, "--tls-cert", "CERTIFICATE"));
  SEER_RETURN_IF_ERROR(CheckPemFile(tls.key, "--tls-key", "PRIVATE KEY"));
  SEER_RETURN_IF_ERROR(CheckKeyMatchesCertificate(tls.cert, tls.key));
  if (!tls.client_ca.empty()) SEER_RETURN_IF_ERROR(CheckPemFile(tls.client_ca, "--tls-client-ca", "CERTIFICATE"));
  return OkStatus();
}

Status SplitHostPort(const std::string& address, const std::string& flag, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 == address.size())
    return InvalidArgument(flag + ": '" + address + "' is not host:port");
  if (address.front() == '[' && address[colon - 1] != ']')
    return InvalidArgument(flag + ": '" + address + "' is not [v6 host]:port");
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
  GrpcServerOptions options;
  options.listen = listen;
  options.services = services;
  options.health_names = health_names;
  options.max_receive_bytes = max_receive_bytes;
  return Start(std::move(options));
}

StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(GrpcServerOptions o) {
  std::string host;
  int requested_port = 0;
  SEER_RETURN_IF_ERROR(SplitHostPort(o.listen, "--listen", &host, &requested_port));
  SEER_RETURN_IF_ERROR(CheckServerTls(o.tls));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  // The health service's descriptor in the generated pool, so that
  // reflection can describe grpc.health.v1.Health (grpcurl needs no -proto).
  grpc::health::v1::HealthCheckRequest::descriptor();

  std::unique_ptr<GrpcServer> out(new GrpcServer());
  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(o.listen, MakeServerCredentials(o.tls), &bound_port);
  for (grpc::Service* s : o.services) builder.RegisterService(s);
  // Reflection v1 beside gRPC's v1alpha, listing every service served.
  std::vector<std::string> listed = o.health_names;
  for (const char* s :
       {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}) {
    listed.push_back(s);
  }
  out->reflection_v1_ = std::make_unique<ReflectionV1Service>(std::move(listed));
  builder.RegisterService(out->reflection_v1_.get());
  // A second server on a port already in use fails instead of sharing it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // The edge limits (docs/SERVICE.md, "Limits"). A request above the largest
  // valid one is refused before it is parsed. Compressed requests are
  // refused (UNIMPLEMENTED) before their message is read: gRPC checks the
  // receive limit against the compressed size, so a small gzip body could
  // inflate far past it; no valid request is big enough to gain from it.
  builder.SetMaxReceiveMessageSize(o.max_receive_bytes);
  // Synchronous handlers (reflection: ours and gRPC's v1alpha) hold a thread
  // for as long as their stream stays open, so one client could open
  // thousands; the quota bounds those threads, and past it gRPC refuses a
  // new synchronous call (RESOURCE_EXHAUSTED). The services themselves use
  // the callback API and take no thread of this pool.
  grpc::ResourceQuota quota("seer-grpc-server");
  quota.SetMaxThreads(kMaxSyncHandlerThreads);
  builder.SetResourceQuota(quota);
  builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, kMaxMetadataBytes);
  builder.AddChannelArgument(GRPC_COMPRESSION_CHANNEL_ENABLED_ALGORITHMS_BITSET, 1 << GRPC_COMPRESS_NONE);
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
  for (grpc::Service* s : o.services)
    if (const auto* raw = dynamic_cast<const RawMethodsService*>(s))
      for (const std::string& m : raw->RawMethods()) o.hooks.raw_methods.insert(m);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(MakeCallInterceptorFactory(std::move(o.hooks)));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  out->server_ = builder.BuildAndStart();
  if (!out->server_ || bound_port == 0)
    return Unavailable("--listen " + o.listen + ": cannot bind (address in use or not local?)");
  out->port_ = bound_port;
  out->address_ = host + ":" + std::to_string(bound_port);
  out->service_names_ = o.health_names;
  out->SetServing(false);
  return out;
}

GrpcServer::~GrpcServer() { Shutdown(0.0); }

std::shared_ptr<grpc::Channel> GrpcServer::InProcessChannel() const {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  return server_->InProcessChannel(args);
}

void GrpcServer::SetServing(bool serving) {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  std::lock_guard<std::mutex> lock(names_mu_);
  health->SetServingStatus("", serving);
  for (const std::string& name : service_names_) health->SetServingStatus(name, serving);
}

void GrpcServer::AddHealthName(const std::string& name) {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  std::lock_guard<std::mutex> lock(names_mu_);
  service_names_.push_back(name);
  health->SetServingStatus(name, false);
}

void GrpcServer::Shutdown(double drain_seconds, std::function<void()> drain_expired) {
  if (shut_down_ || !server_) return;
  shut_down_ = true;
  SetServing(false);
  const auto drain = std::chrono::milliseconds(static_cast<int64_t>(drain_seconds * 1000));
  const auto deadline = std::chrono::system_clock::now() + drain;
  // The hook runs a little ahead of gRPC's own timer, so that the calls it
  // cancels find it done.
  std::mutex mu;
  std::condition_variable cv;
  bool drained = false;
  std::thread timer;
  if (drain_expired) {
    timer = std::thread([&, expiry = std::chrono::steady_clock::now() + drain - std::chrono::milliseconds(20)] {
      std::unique_lock<std::mutex> lock(mu);
      if (!cv.wait_until(lock, expiry, [&] { return drained; })) drain_expired();
    });
  }
  server_->Shutdown(deadline);
  server_->Wait();
  if (timer.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu);
      drained = true;
    }
    cv.notify_all();
    timer.join();
  }
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
  while (sigwait(&set, &sig) != 0) {}
  return sig;
}

}  // namespace seer
