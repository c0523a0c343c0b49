// grpc.reflection.v1.ServerReflection over the process's generated
// descriptors, beside the v1alpha service Debian's gRPC brings, so that
// tools that ask v1 first (grpcurl, Postman, ...) can list and describe
// every service, the health service included, with no .proto at hand.
#pragma once

#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "grpc/reflection/v1/reflection.grpc.pb.h"

namespace seer {

class ReflectionV1Service final : public grpc::reflection::v1::ServerReflection::Service {
 public:
  // `services`: the fully-qualified names list_services answers with.
  explicit ReflectionV1Service(std::vector<std::string> services) : services_(std::move(services)) {}

  grpc::Status ServerReflectionInfo(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<grpc::reflection::v1::ServerReflectionResponse,
                               grpc::reflection::v1::ServerReflectionRequest>* stream) override;

 private:
  const std::vector<std::string> services_;
};

}  // namespace seer
