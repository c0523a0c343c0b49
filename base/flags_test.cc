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

TEST(Flags, NumbersAreFiniteAndSecondsInRange) {
  double x = 1.0, t = 30.0;
  FlagSet flags("prog", "test");
  flags.Double("x", &x, "");
  flags.Seconds("drain-seconds", &t, "");
  ASSERT_TRUE(ParseArgs(flags, {"--x", "-2.5", "--drain-seconds", "0.25"}).ok());
  EXPECT_EQ(x, -2.5);
  EXPECT_EQ(t, 0.25);
  for (const char* bad : {"inf", "nan", "-inf", "1e999"}) {
    const Status s = ParseArgs(flags, {"--x", bad});
    EXPECT_FALSE(s.ok()) << bad;
    EXPECT_NE(s.message().find("--x: expected a finite number"), std::string::npos) << s.message();
  }
  for (const char* bad : {"-1", "1e300", "2592001"}) {
    const Status s = ParseArgs(flags, {"--drain-seconds", bad});
    EXPECT_FALSE(s.ok()) << bad;
    EXPECT_NE(s.message().find("--drain-seconds: " + std::string(bad) + " seconds is out of range [0, 2592000]"),
              std::string::npos)
        << s.message();
  }
  EXPECT_TRUE(ParseArgs(flags, {"--drain-seconds", "2592000"}).ok());
  EXPECT_NE(flags.Help().find("--drain-seconds SECONDS"), std::string::npos) << flags.Help();
}

TEST(Flags, BoundedIntegersAreNeverNarrowed) {
  int64_t queue = 8;
  FlagSet flags("prog", "test");
  flags.Int("max-queue", &queue, "", 0, 100000);
  ASSERT_TRUE(ParseArgs(flags, {"--max-queue", "100000"}).ok());
  EXPECT_EQ(queue, 100000);
  for (const char* bad : {"4294967296", "-1", "100001"}) {
    const Status s = ParseArgs(flags, {"--max-queue", bad});
    EXPECT_FALSE(s.ok()) << bad;
    EXPECT_NE(s.message().find("--max-queue: " + std::string(bad) + " is out of range [0, 100000]"), std::string::npos)
        << s.message();
  }
  EXPECT_EQ(queue, 100000) << "a refused value is not stored";
}

TEST(Flags, ADefaultTextCanBeReplacedOrDropped) {
  bool dense = true;
  int64_t n = 3;
  FlagSet flags("prog", "test");
  flags.Bool("last-block-dense", &dense, "Default: the server's.");
  flags.Int("n", &n, "");
  flags.SetDefaultText("last-block-dense", "");
  flags.SetDefaultText("n", "the file's");
  const std::string help = flags.Help();
  EXPECT_EQ(help.find("(default: true)"), std::string::npos) << help;
  EXPECT_NE(help.find("(default: the file's)"), std::string::npos) << help;
}

TEST(Flags, PositionalArgumentsCanBeRefused) {
  int64_t n = 0;
  FlagSet flags("prog", "test");
  flags.Int("n", &n, "");
  ASSERT_TRUE(ParseArgs(flags, {"--n", "3"}).ok());
  EXPECT_TRUE(flags.RefusePositional().ok());
  FlagSet stray("prog", "test");
  stray.Int("n", &n, "");
  ASSERT_TRUE(ParseArgs(stray, {"--n", "3", "extra"}).ok());
  const Status s = stray.RefusePositional();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("'extra'"), std::string::npos) << s.message();
}

// A repeatable flag keeps every value in order (a plain String keeps the
// last), replaces its initial contents, and says so in --help.
TEST(Flags, RepeatableStringsKeepEveryValue) {
  std::vector<std::string> stops = {"default"};
  std::string last;
  FlagSet flags("prog", "test");
  flags.Strings("stop", &stops, "a stop string");
  flags.String("one", &last, "");
  ASSERT_TRUE(ParseArgs(flags, {"--stop", "ol", "--one", "a", "--stop=zz", "--one", "b", "--stop", ""}).ok());
  EXPECT_EQ(stops, (std::vector<std::string>{"ol", "zz", ""}));
  EXPECT_EQ(last, "b");
  EXPECT_TRUE(flags.WasSet("stop"));
  EXPECT_NE(flags.Help().find("--stop STRING (repeatable)"), std::string::npos) << flags.Help();
  std::vector<std::string> untouched = {"kept"};
  FlagSet none("prog", "test");
  none.Strings("stop", &untouched, "");
  ASSERT_TRUE(ParseArgs(none, {}).ok());
  EXPECT_EQ(untouched, (std::vector<std::string>{"kept"}));
}

}  // namespace
}  // namespace seer
