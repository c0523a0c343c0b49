// TLS helpers for the tests: a throwaway PKI made with the openssl CLI at
// test time (tests/ops/make_test_pki.sh; no key is committed), and an HTTPS
// GET on OpenSSL that verifies the server as curl would.
#pragma once

#include <netdb.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "base/status.h"
#include "tests/server_test_util.h"

namespace seer::testing {

// Two unrelated CAs, "a" and "b", each with a server certificate (localhost,
// 127.0.0.1) and a client certificate: F("a-ca.crt"), F("b-client.key"), ...
struct Pki {
  std::string dir;
  explicit Pki(const std::string& name) : dir(TempDir(name)) {
    for (const char* prefix : {"a", "b"}) {
      CommandResult r =
          RunCommand({"/bin/bash", std::string(SEER_SOURCE_DIR) + "/tests/ops/make_test_pki.sh", dir, prefix});
      EXPECT_EQ(r.exit_code, 0) << r.err;
    }
  }
  std::string F(const std::string& name) const { return dir + "/" + name; }
};

struct TlsClientFiles {
  std::string ca;  // trusted roots; the server must chain to it
  std::string cert, key;  // optional client certificate
};

// GET (or another method, with `body`) https://host:port/path (HTTP/1.0), verifying the server's certificate
// against files.ca and its name against `host` (an IP address or a DNS
// name). The body on 200; UNAVAILABLE naming the handshake or the status
// otherwise.
inline StatusOr<std::string> HttpsRequest(const std::string& host_port, const std::string& method,
                                          const std::string& path, const std::string& body, const TlsClientFiles& files,
                                          int* local_port = nullptr) {
  const std::string host = host_port.substr(0, host_port.rfind(':'));
  auto ssl_errors = [] {
    std::string out;
    while (const unsigned long e = ERR_get_error()) {
      char buf[256];
      ERR_error_string_n(e, buf, sizeof(buf));
      out += out.empty() ? "" : "; ";
      out += buf;
    }
    return out;
  };
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()), &SSL_CTX_free);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  if (SSL_CTX_load_verify_locations(ctx.get(), files.ca.c_str(), nullptr) != 1)
    return InvalidArgument("ca " + files.ca + ": " + ssl_errors());
  if (!files.cert.empty() && (SSL_CTX_use_certificate_chain_file(ctx.get(), files.cert.c_str()) != 1 ||
                              SSL_CTX_use_PrivateKey_file(ctx.get(), files.key.c_str(), SSL_FILETYPE_PEM) != 1)) {
    return InvalidArgument("client cert " + files.cert + ": " + ssl_errors());
  }
  SEER_ASSIGN_OR_RETURN(const int fd, ConnectTcp(host_port));
  if (local_port != nullptr) *local_port = LocalPort(fd);
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), &SSL_free);
  SSL_set_fd(ssl.get(), fd);
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl.get());
  if (X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) != 1) {
    ERR_clear_error();
    X509_VERIFY_PARAM_set1_host(param, host.c_str(), 0);
    SSL_set_tlsext_host_name(ssl.get(), host.c_str());
  }
  auto fail = [&](const std::string& what) -> Status {
    const long verify = SSL_get_verify_result(ssl.get());
    std::string why = what + ": " + ssl_errors();
    if (verify != X509_V_OK) why += " (verify: " + std::string(X509_verify_cert_error_string(verify)) + ")";
    close(fd);
    return Unavailable(why);
  };
  if (SSL_connect(ssl.get()) != 1) return fail("TLS handshake with " + host_port);
  const std::string req = HttpRequestText(host_port, method, path, body);
  if (SSL_write(ssl.get(), req.data(), static_cast<int>(req.size())) != static_cast<int>(req.size()))
    return fail("TLS write");
  std::string resp;
  char buf[16384];
  int n;
  while ((n = SSL_read(ssl.get(), buf, sizeof(buf))) > 0) resp.append(buf, static_cast<size_t>(n));
  if (resp.empty()) return fail("TLS read");  // TLS 1.3 reports a refused client certificate here
  close(fd);
  const size_t head_end = resp.find("\r\n\r\n");
  if (resp.rfind("HTTP/1.", 0) != 0 || head_end == std::string::npos)
    return DataLoss("not HTTP: " + resp.substr(0, 80));
  if (resp.find(" 200 ") == std::string::npos) return Unavailable("HTTP status: " + resp.substr(0, resp.find('\r')));
  return resp.substr(head_end + 4);
}

inline StatusOr<std::string> HttpsGet(const std::string& host_port, const std::string& path,
                                      const TlsClientFiles& files) {
  return HttpsRequest(host_port, "GET", path, "", files);
}

}  // namespace seer::testing
