// What happens to every seer.v1 call on its way through the server, outside
// the services (a gRPC server interceptor):
//
//   - one JSON log line when it ends (logging.h): request_id, peer, method,
//     status code (and message when not OK), prompt tokens, the timings and
//     byte counts its summary message carried, and bytes in and out;
//   - a request with no request_id gets one here, so that the log line, the
//     service and (through seer-decode) the prefill server's line agree;
//   - a request that does not parse as its message type (malformed protobuf,
//     a string field that is not UTF-8) gets INVALID_ARGUMENT with a message,
//     instead of the callback API's UNIMPLEMENTED with none, and is counted;
//   - the server's load goes back to the caller in initial metadata
//     (kLoadMetadata*), so that a client can prefer the least loaded replica.
#pragma once

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/server_context.h>
#include <grpcpp/support/server_interceptor.h>
#include <grpcpp/support/status.h>

#include "rpc/load_metadata.h"

namespace seer {

struct ServerLoad {
  int running = 0, queued = 0, max_concurrent = 0, max_queue = 0;
};

struct CallHooks {
  // Prefix of the request ids this server makes up ("prefill" makes
  // "prefill-3f2a9c01-7").
  std::string request_id_prefix = "call";
  // The load to report; null: no load metadata.
  std::function<ServerLoad()> load;
  // A call that ended before its service saw it (its request did not parse),
  // with the status it got: the services' request counters count it here.
  std::function<void(grpc::StatusCode)> count_unserved;
  // Methods served raw (grpc::ByteBuffer messages, RawMethodsService): their
  // requests and responses are read as bytes. GrpcServer fills this in.
  std::set<std::string> raw_methods;
};

// A call this process makes to its own gRPC server on behalf of an HTTP
// client (seer-decode's OpenAI API) names that client in this metadata, as
// "<token> <address>"; the token is this process's own (random, never sent
// off the host), so a remote gRPC client cannot pass for someone else. The
// request log and the services' log lines then name the HTTP client as the
// call's peer.
inline constexpr char kHttpClientMetadata[] = "seer-http-client";
std::string HttpClientMetadataValue(std::string_view client_address);

// Who sent the call: the HTTP client a call made for it names (above), else
// gRPC's peer ("ipv4:10.0.0.7:51234"). `via_http` (optional) is set when the
// call came through the HTTP API.
std::string CallPeer(const grpc::ServerContextBase& context, bool* via_http = nullptr);

// A service that serves some seer.v1 methods with the generated
// WithRawCallbackMethod_* (ByteBuffers instead of messages) names them, so
// that the interceptor reads their messages as bytes. A raw method's service
// answers a request that does not parse itself (UnparsedRequestStatus) and
// counts it.
class RawMethodsService {
 public:
  virtual ~RawMethodsService() = default;
  // Full method names: "/seer.v1.PrefillService/Prefill".
  virtual std::vector<std::string> RawMethods() const = 0;
};

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeCallInterceptorFactory(CallHooks hooks);

// The status a seer.v1 call whose request did not parse gets.
grpc::Status UnparsedRequestStatus(std::string_view method);

}  // namespace seer
