#include "rpc/channel_credentials.h"

#include <fstream>
#include <iterator>

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

namespace seer {
namespace {

Status CheckPem(const std::string& path, const std::string& flag, const std::string& what) {
  std::ifstream in(path);
  if (!in) return InvalidArgument(flag + ": cannot read '" + path + "'");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.find("-----BEGIN ") == std::string::npos || text.find(what) == std::string::npos)
    return InvalidArgument(flag + ": '" + path + "' holds no PEM " + what);
  return OkStatus();
}

}  // namespace

Status CheckClientTls(const ClientTlsOptions& tls, const std::string& flag_prefix) {
  if (tls.cert.empty() != tls.key.empty())
    return InvalidArgument(flag_prefix + "cert and " + flag_prefix + "key go together");
  if (!tls.cert.empty() && tls.ca.empty())
    return InvalidArgument(flag_prefix + "cert needs " + flag_prefix + "ca (the CA that signed the server)");
  if (!tls.ca.empty()) SEER_RETURN_IF_ERROR(CheckPem(tls.ca, flag_prefix + "ca", "CERTIFICATE"));
  if (!tls.cert.empty()) {
    SEER_RETURN_IF_ERROR(CheckPem(tls.cert, flag_prefix + "cert", "CERTIFICATE"));
    SEER_RETURN_IF_ERROR(CheckPem(tls.key, flag_prefix + "key", "PRIVATE KEY"));
  }
  return OkStatus();
}

std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const ClientTlsOptions& tls) {
  if (!tls.enabled()) return grpc::InsecureChannelCredentials();
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(tls.key, tls.cert, tls.ca,
                                                                                       tls.reload_seconds);
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(provider);
  options.watch_root_certs();
  if (!tls.cert.empty()) options.watch_identity_key_cert_pairs();
  return grpc::experimental::TlsCredentials(options);
}

}  // namespace seer
