// EnableGrpcExperiments (grpc_experiments.h): it sets GRPC_EXPERIMENTS and
// says so, leaves an operator's setting alone, and sets nothing when asked
// for none. (That gRPC honours the variable shows in seer-kv-stream-bench:
// docs/KV_TRANSPORT.md; the server end-to-end tests run seer-decode with it.)
#include "server/common/grpc_experiments.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdlib>
#include <string>

namespace seer {
namespace {

TEST(GrpcExperiments, SetsTheListUnlessTheEnvironmentHasOne) {
  const char* before = std::getenv("GRPC_EXPERIMENTS");
  const std::string saved = before != nullptr ? before : "";
  unsetenv("GRPC_EXPERIMENTS");

  EXPECT_EQ(EnableGrpcExperiments(""), "gRPC experiments: none");
  EXPECT_EQ(std::getenv("GRPC_EXPERIMENTS"), nullptr);

  EXPECT_EQ(EnableGrpcExperiments(kBulkReceiveGrpcExperiments),
            "gRPC experiments: tcp_frame_size_tuning,tcp_rcv_lowat");
  ASSERT_NE(std::getenv("GRPC_EXPERIMENTS"), nullptr);
  EXPECT_STREQ(std::getenv("GRPC_EXPERIMENTS"), "tcp_frame_size_tuning,tcp_rcv_lowat");

  setenv("GRPC_EXPERIMENTS", "tcp_rcv_lowat", 1);
  EXPECT_EQ(EnableGrpcExperiments(kBulkReceiveGrpcExperiments),
            "gRPC experiments: left as GRPC_EXPERIMENTS sets them (\"tcp_rcv_lowat\")");
  EXPECT_STREQ(std::getenv("GRPC_EXPERIMENTS"), "tcp_rcv_lowat");

  if (before != nullptr) {
    setenv("GRPC_EXPERIMENTS", saved.c_str(), 1);
  } else {
    unsetenv("GRPC_EXPERIMENTS");
  }
}

}  // namespace
}  // namespace seer
