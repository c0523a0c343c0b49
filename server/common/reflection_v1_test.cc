// Reflection v1 on a real server: it lists the services and describes them,
// the health service included, from the generated descriptors; a symbol the
// server does not know is NOT_FOUND in the response, not a broken stream.
#include "server/common/reflection_v1.h"

#include <gtest/gtest.h>

#include <google/protobuf/descriptor.pb.h>

#include "grpc/health/v1/health.pb.h"
#include "seer/v1/seer.grpc.pb.h"
#include "server/common/grpc_server.h"

namespace seer {
namespace {

namespace rv1 = grpc::reflection::v1;

class PrefillStub final : public v1::PrefillService::Service {};

TEST(ReflectionV1, ListsAndDescribesEveryServiceWithoutAProto) {
  PrefillStub prefill;
  auto server = GrpcServer::Start("127.0.0.1:0", {&prefill}, {"seer.v1.PrefillService"}, 1 << 20);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
  auto stub = rv1::ServerReflection::NewStub(channel);
  grpc::ClientContext ctx;
  auto stream = stub->ServerReflectionInfo(&ctx);

  rv1::ServerReflectionRequest req;
  rv1::ServerReflectionResponse resp;
  req.set_list_services("");
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  std::vector<std::string> names;
  for (const auto& s : resp.list_services_response().service()) names.push_back(s.name());
  for (const char* want : {"seer.v1.PrefillService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), want), names.end()) << want;
  }

  for (auto [symbol, file] : {std::pair{"grpc.health.v1.Health", "grpc/health/v1/health.proto"},
                              std::pair{"seer.v1.PrefillService.Prefill", "seer/v1/seer.proto"},
                              std::pair{"seer.v1.Prefill.Prefill", "seer/v1/seer.proto"},  // the deprecated name
                              std::pair{"seer.v1.GenerateRequest", "seer/v1/seer.proto"}}) {
    req.set_file_containing_symbol(symbol);
    ASSERT_TRUE(stream->Write(req));
    ASSERT_TRUE(stream->Read(&resp));
    ASSERT_TRUE(resp.has_file_descriptor_response()) << symbol << ": " << resp.error_response().error_message();
    google::protobuf::FileDescriptorProto proto;
    ASSERT_TRUE(proto.ParseFromString(resp.file_descriptor_response().file_descriptor_proto(0)));
    EXPECT_EQ(proto.name(), file);
  }
  req.set_file_containing_symbol("no.such.Service");
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.error_response().error_code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

}  // namespace
}  // namespace seer
