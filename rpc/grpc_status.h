// One mapping between the engine's Status and gRPC's: the codes share gRPC's
// numbering (base/status.h), so the conversion keeps code and message.
#pragma once

#include <string>
#include <string_view>

#include <grpcpp/support/status.h>

#include "base/status.h"

namespace seer {

inline grpc::Status ToGrpcStatus(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), s.message());
}

inline Status FromGrpcStatus(const grpc::Status& s) {
  if (s.ok()) return OkStatus();
  int code = static_cast<int>(s.error_code());
  if (code < 0 || code > static_cast<int>(StatusCode::kDataLoss)) code = static_cast<int>(StatusCode::kUnknown);
  return Status(static_cast<StatusCode>(code), s.error_message());
}

// "RESOURCE_EXHAUSTED", as Prometheus labels and CLI messages spell it.
inline std::string_view GrpcCodeName(grpc::StatusCode code) {
  int c = static_cast<int>(code);
  if (c < 0 || c > static_cast<int>(StatusCode::kDataLoss)) return "UNKNOWN";
  return StatusCodeName(static_cast<StatusCode>(c));
}

}  // namespace seer
