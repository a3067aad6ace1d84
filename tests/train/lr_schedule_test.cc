#include "core/train/lr_schedule.h"

#include <gtest/gtest.h>

namespace xtrain::core {
namespace {

TEST(LrSchedule, WarmsUpLinearly) {
  const LrSchedule schedule({.kind = ScheduleKind::kNone, .warmup_steps = 4}, 0.4, 100);
  EXPECT_DOUBLE_EQ(schedule.At(0), 0.1);
  EXPECT_DOUBLE_EQ(schedule.At(3), 0.4);
  EXPECT_DOUBLE_EQ(schedule.At(50), 0.4);
}

TEST(LrSchedule, StepDecaysByGammaEveryStepSize) {
  const LrSchedule schedule({.kind = ScheduleKind::kStep, .warmup_steps = 2, .step_size = 10, .gamma = 0.5},
                            1.0, 100);
  EXPECT_DOUBLE_EQ(schedule.At(2), 1.0);
  EXPECT_DOUBLE_EQ(schedule.At(11), 1.0);
  EXPECT_DOUBLE_EQ(schedule.At(12), 0.5);
  EXPECT_DOUBLE_EQ(schedule.At(32), 0.125);
}

TEST(LrSchedule, CosineReachesZeroAtTheEnd) {
  const LrSchedule schedule({.kind = ScheduleKind::kCosine, .warmup_steps = 10}, 2.0, 110);
  EXPECT_DOUBLE_EQ(schedule.At(10), 2.0);
  EXPECT_NEAR(schedule.At(60), 1.0, 1e-12);
  EXPECT_NEAR(schedule.At(110), 0.0, 1e-12);
  EXPECT_NEAR(schedule.At(500), 0.0, 1e-12);
}

TEST(ScheduleKind, ParsesNamesAndRejectsOthers) {
  EXPECT_EQ(*ParseScheduleKind("Cosine"), ScheduleKind::kCosine);
  EXPECT_EQ(ScheduleKindName(*ParseScheduleKind("step")), "step");
  EXPECT_EQ(ParseScheduleKind("linear").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xtrain::core
