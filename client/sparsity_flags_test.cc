// SparsityFlags: the baselines (streaming=, oracle=) are taken only where the
// command says it runs them (`seer run`, on the CPU); a remote command refuses
// them before anything is sent, because the wire's Sparsity message has no
// field for them.

#include "client/sparsity_flags.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace seer {
namespace {

StatusOr<SparsityRequest> Parse(bool baselines, std::vector<std::string> args, std::string* help = nullptr) {
  SparsityFlags f;
  f.baselines = baselines;
  FlagSet flags("test", "");
  f.Register(flags, "the test's");
  std::vector<char*> argv = {const_cast<char*>("test")};
  for (std::string& a : args) argv.push_back(a.data());
  SEER_RETURN_IF_ERROR(flags.Parse(static_cast<int>(argv.size()), argv.data(), 1));
  if (help != nullptr) *help = flags.Help();
  return f.ToRequest(flags);
}

TEST(SparsityFlags, RunTakesTheBaselines) {
  std::string help;
  auto r = Parse(true, {"--sparsity", "streaming=1,4"}, &help);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_TRUE(r->mode.has_value());
  EXPECT_EQ(r->mode->mode, SparsityMode::kStreaming);
  EXPECT_NE(help.find("streaming=SINK,WINDOW"), std::string::npos) << help;
  EXPECT_NE(help.find("oracle=R"), std::string::npos) << help;
  auto o = Parse(true, {"--sparsity", "oracle=0.2"});
  ASSERT_TRUE(o.ok()) << o.status().ToString();
  EXPECT_EQ(o->mode->mode, SparsityMode::kOracle);
}

TEST(SparsityFlags, RemoteCommandsRefuseTheBaselines) {
  std::string help;
  auto plain = Parse(false, {"--sparsity", "nz_ratio=0.1"}, &help);
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  EXPECT_EQ(help.find("streaming="), std::string::npos) << help;
  for (const char* text : {"streaming=1,4", "oracle=0.2"}) {
    auto r = Parse(false, {"--sparsity", text});
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("--sparsity"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find(text), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find("seer run"), std::string::npos) << r.status().message();
  }
}

}  // namespace
}  // namespace seer
