#include "base/strings.h"

#include <gtest/gtest.h>

namespace seer {
namespace {

TEST(ParseByteSize, TakesNumbersWithBinaryAndDecimalUnits) {
  EXPECT_EQ(*ParseByteSize("4096", "--x"), 4096);
  EXPECT_EQ(*ParseByteSize("512MiB", "--x"), int64_t{512} << 20);
  EXPECT_EQ(*ParseByteSize("8GiB", "--x"), int64_t{8} << 30);
  EXPECT_EQ(*ParseByteSize(" 1.5 GB ", "--x"), 1500000000);
  EXPECT_EQ(*ParseByteSize("2KB", "--x"), 2000);
  EXPECT_EQ(*ParseByteSize("0B", "--x"), 0);
}

TEST(ParseByteSize, RefusesWhatIsNotASizeNamingTheFlag) {
  for (const char* bad : {"", "GiB", "-1", "1.5", "12 parsecs", "1e3", "1..2MiB", "99999999999TB"}) {
    StatusOr<int64_t> v = ParseByteSize(bad, "--kv-pool");
    ASSERT_FALSE(v.ok()) << bad;
    EXPECT_EQ(v.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(v.status().message().find("--kv-pool"), std::string::npos) << v.status().message();
  }
}

}  // namespace
}  // namespace seer
