#include "train/schedule.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "base/error.h"

namespace hymba {
namespace {

TEST(LrSchedule, WsdBoundaries) {
  LrSchedule s;
  s.kind = LrScheduleKind::WSD;
  s.max_lr = 1.0f;
  s.min_lr = 0.1f;
  s.total_steps = 1000;  // warmup 1% = 10 steps, decay 20% = steps 800..999
  EXPECT_EQ(s.warmup(), 10);
  EXPECT_EQ(s.decay_start(), 800);
  EXPECT_FLOAT_EQ(s.lr(0), 0.1f);  // (0+1)/10
  EXPECT_FLOAT_EQ(s.lr(4), 0.5f);
  EXPECT_FLOAT_EQ(s.lr(9), 1.0f);
  EXPECT_FLOAT_EQ(s.lr(10), 1.0f);
  EXPECT_FLOAT_EQ(s.lr(799), 1.0f);
  EXPECT_FLOAT_EQ(s.lr(800), 1.0f - 0.9f / 200);
  EXPECT_FLOAT_EQ(s.lr(899), 1.0f - 0.9f * 100 / 200);
  EXPECT_FLOAT_EQ(s.lr(999), 0.1f);
  EXPECT_FLOAT_EQ(s.lr(5000), 0.1f);
  for (int64_t t = 801; t < 1000; ++t) EXPECT_LT(s.lr(t), s.lr(t - 1));
}

TEST(LrSchedule, WsdCustomFractionsAndNoWarmup) {
  LrSchedule s;
  s.kind = LrScheduleKind::WSD;
  s.max_lr = 2.0f;
  s.min_lr = 0.0f;
  s.total_steps = 10;
  s.warmup_frac = 0.0;
  s.decay_frac = 0.5;
  EXPECT_FLOAT_EQ(s.lr(0), 2.0f);
  EXPECT_FLOAT_EQ(s.lr(4), 2.0f);
  EXPECT_FLOAT_EQ(s.lr(5), 1.6f);
  EXPECT_FLOAT_EQ(s.lr(9), 0.0f);
  s.decay_frac = 0.0;  // pure warmup-stable
  EXPECT_FLOAT_EQ(s.lr(9), 2.0f);
}

TEST(LrSchedule, CosineBoundaries) {
  LrSchedule s;
  s.kind = LrScheduleKind::Cosine;
  s.max_lr = 1.0f;
  s.min_lr = 0.2f;
  s.total_steps = 101;
  s.warmup_steps = 11;  // explicit; cosine over steps 11..100 (span 89)
  EXPECT_FLOAT_EQ(s.lr(0), 1.0f / 11);
  EXPECT_FLOAT_EQ(s.lr(10), 1.0f);
  EXPECT_FLOAT_EQ(s.lr(11), 1.0f);
  const double p = 40.0 / 89.0;
  EXPECT_FLOAT_EQ(s.lr(51), float(0.2 + 0.8 * 0.5 * (1 + std::cos(std::numbers::pi * p))));
  EXPECT_FLOAT_EQ(s.lr(100), 0.2f);
  EXPECT_FLOAT_EQ(s.lr(1000), 0.2f);
  for (int64_t t = 12; t <= 100; ++t) EXPECT_LT(s.lr(t), s.lr(t - 1));
}

TEST(LrSchedule, ConstantAndParse) {
  LrSchedule s;
  s.kind = parse_lr_schedule("constant");
  s.max_lr = 3e-4f;
  s.total_steps = 200;  // warmup 1% = 2 steps
  EXPECT_FLOAT_EQ(s.lr(0), 1.5e-4f);
  EXPECT_FLOAT_EQ(s.lr(1), 3e-4f);
  EXPECT_FLOAT_EQ(s.lr(199), 3e-4f);
  EXPECT_EQ(parse_lr_schedule("wsd"), LrScheduleKind::WSD);
  EXPECT_EQ(parse_lr_schedule("cosine"), LrScheduleKind::Cosine);
  EXPECT_EQ(to_string(LrScheduleKind::WSD), "wsd");
  EXPECT_THROW(parse_lr_schedule("linear"), Error);
  s.total_steps = 0;
  EXPECT_THROW(s.lr(0), Error);
}

TEST(LrSchedule, TinyRunsStayFinite) {
  for (auto k : {LrScheduleKind::Constant, LrScheduleKind::Cosine, LrScheduleKind::WSD}) {
    for (int64_t T : {1, 2, 3}) {
      LrSchedule s;
      s.kind = k;
      s.total_steps = T;
      s.warmup_frac = 0.5;
      for (int64_t t = 0; t < T + 2; ++t) {
        const float lr = s.lr(t);
        EXPECT_TRUE(std::isfinite(lr) && lr >= 0 && lr <= s.max_lr) << to_string(k) << " T=" << T << " t=" << t;
      }
    }
  }
}

}  // namespace
}  // namespace hymba
