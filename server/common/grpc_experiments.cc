#include "server/common/grpc_experiments.h"

#include <stdlib.h>

#include <cstdlib>

namespace seer {

std::string EnableGrpcExperiments(const std::string& experiments) {
  if (const char* set = std::getenv("GRPC_EXPERIMENTS"); set != nullptr) {
    return std::string("gRPC experiments: left as GRPC_EXPERIMENTS sets them (\"") + set + "\")";
  }
  if (experiments.empty()) return "gRPC experiments: none";
  if (setenv("GRPC_EXPERIMENTS", experiments.c_str(), 1) != 0) {
    return "gRPC experiments: could not set GRPC_EXPERIMENTS; none";
  }
  return "gRPC experiments: " + experiments;
}

}  // namespace seer
