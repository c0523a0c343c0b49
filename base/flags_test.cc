#include "base/flags.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace seer {
namespace {

Status ParseArgs(FlagSet& flags, std::vector<std::string> args) {
  std::vector<char*> argv = {const_cast<char*>("prog")};
  for (std::string& a : args) argv.push_back(a.data());
  return flags.Parse(static_cast<int>(argv.size()), argv.data());
}

TEST(Flags, BooleansTakeABareNameOrAValue) {
  bool a = false, b = true, c = false;
  std::string s;
  FlagSet flags("prog", "test");
  flags.Bool("a", &a, "");
  flags.Bool("b", &b, "");
  flags.Bool("c", &c, "");
  flags.String("s", &s, "");
  ASSERT_TRUE(ParseArgs(flags, {"--a", "--b", "false", "--c=yes", "--s", "x"}).ok());
  EXPECT_TRUE(a);
  EXPECT_FALSE(b);
  EXPECT_TRUE(c);
  EXPECT_EQ(s, "x");
  EXPECT_TRUE(flags.WasSet("b"));
}

TEST(Flags, ABadBooleanValueNamesTheFlag) {
  bool a = false;
  FlagSet flags("prog", "test");
  flags.Bool("last-block-dense", &a, "");
  const Status s = ParseArgs(flags, {"--last-block-dense", "maybe"});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("--last-block-dense"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("maybe"), std::string::npos) << s.message();
}

TEST(Flags, UnknownFlagsAndMissingValuesAreErrors) {
  int64_t n = 0;
  FlagSet flags("prog", "test");
  flags.Int("n", &n, "");
  EXPECT_FALSE(ParseArgs(flags, {"--m", "1"}).ok());
  EXPECT_FALSE(ParseArgs(flags, {"--n"}).ok());
  EXPECT_FALSE(ParseArgs(flags, {"--n", "x"}).ok());
}

}  // namespace
}  // namespace seer
