// The client side of TLS, shared by `seer generate` / `seer prefill` and by
// seer-decode's channels to its prefill endpoints: plaintext, TLS that
// verifies the server against a CA bundle, or mutual TLS with a client
// certificate. The files are watched and reloaded when they change.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/security/credentials.h>

#include "base/status.h"

namespace seer {

struct ClientTlsOptions {
  std::string ca;  // PEM CA bundle that signed the server's certificate
  std::string cert;  // PEM client certificate (mutual TLS), with key
  std::string key;
  int reload_seconds = 60;
  bool enabled() const { return !ca.empty() || !cert.empty(); }
};

// Checks the combination and that the files are readable PEM; `flag_prefix`
// ("--tls-" or "--prefill-tls-") names the flags in errors.
Status CheckClientTls(const ClientTlsOptions& tls, const std::string& flag_prefix);

// Insecure credentials when TLS is off. The server's certificate must name
// the host of the target (a DNS or IP subject alternative name).
std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const ClientTlsOptions& tls);

}  // namespace seer
