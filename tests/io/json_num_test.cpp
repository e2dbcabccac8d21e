#include "io/json_num.h"

#include <gtest/gtest.h>

namespace hymba {
namespace {

using nlohmann::json;

TEST(JsonNumberBadInput, RejectsWhatTheTypeCannotHold) {
  int32_t i = 7;
  EXPECT_FALSE(json_number(json::parse("2e25"), &i));
  EXPECT_FALSE(json_number(json::parse("4294967301"), &i));
  EXPECT_FALSE(json_number(json::parse("-2147483649"), &i));
  EXPECT_FALSE(json_number(json::parse("1.5"), &i));
  EXPECT_FALSE(json_number(json::parse("\"3\""), &i));
  EXPECT_FALSE(json_number(json::parse("true"), &i));
  EXPECT_EQ(i, 7);  // untouched
  uint64_t u = 0;
  EXPECT_FALSE(json_number(json::parse("-1"), &u));
  EXPECT_TRUE(json_number(json::parse("18446744073709551615"), &u));
  EXPECT_EQ(u, UINT64_MAX);
  float f = 0;
  EXPECT_FALSE(json_number(json::parse("1e300"), &f));
  EXPECT_TRUE(json_number(json::parse("-2147483648"), &i));
  EXPECT_EQ(i, INT32_MIN);
  EXPECT_TRUE(json_number(json::parse("3e3"), &i));
  EXPECT_EQ(i, 3000);
  EXPECT_TRUE(json_number(json::parse("0.25"), &f));
  EXPECT_EQ(f, 0.25f);
  bool b = false;
  EXPECT_FALSE(json_number(json::parse("1"), &b));
}

}  // namespace
}  // namespace hymba
