// Picking the engine's device: --device cpu | cuda | cuda:N | auto. A malformed
// device is INVALID_ARGUMENT naming it, whether or not the build or the host
// has CUDA; a well-formed index past the visible devices is refused by the
// CUDA backend (checked on the GPU host; here there may be none).
#include <gtest/gtest.h>

#include "engine/engine.h"
#include "tests/fixture_reader.h"

namespace seer {
namespace {

TEST(EngineDevice, CudaIndicesParse) {
  EXPECT_EQ(ParseCudaDeviceIndex("cuda").value(), 0);
  EXPECT_EQ(ParseCudaDeviceIndex("cuda:0").value(), 0);
  EXPECT_EQ(ParseCudaDeviceIndex("cuda:1").value(), 1);
  EXPECT_EQ(ParseCudaDeviceIndex("cuda:15").value(), 15);
  for (const char* bad : {"cuda:", "cuda:-1", "cuda:x", "cuda:1a", "cuda:12345", "gpu", "cuda1", "CUDA:0"}) {
    auto r = ParseCudaDeviceIndex(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(r.status().message().find(bad), std::string::npos) << r.status().ToString();
  }
}

TEST(EngineDevice, AMalformedDeviceIsRefusedBeforeAnythingLoads) {
  EngineOptions o;
  o.model_dir = fixtures::Path("llama");
  for (const char* bad : {"cuda:x", "gpu", "cuda:"}) {
    o.device = bad;
    auto e = CreateEngine(o);
    ASSERT_FALSE(e.ok()) << bad;
    EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument) << e.status().ToString();
  }
  o.device = "cpu";
  EXPECT_TRUE(CreateEngine(o).ok());
}

}  // namespace
}  // namespace seer
