#include <gtest/gtest.h>
#include <torch/torch.h>

#include "core/memory/cpu_memory_meter.h"

namespace xtrain::core {
namespace {

// Restores "no limit" when a test ends, even when it fails.
struct LimitReset {
  ~LimitReset() { CpuMemoryMeter::Install().SetLimit(0); }
};

TEST(CpuMemoryLimit, RefusesAllocationsPastTheLimitAndCountsNothingForThem) {
  CpuMemoryMeter& meter = CpuMemoryMeter::Install();
  LimitReset reset;
  const int64_t start = meter.current_bytes();
  meter.SetLimit(start + (1 << 20));
  torch::Tensor fits = torch::empty({(1 << 19) / 4}, torch::kFloat);  // 512 KiB
  EXPECT_EQ(meter.current_bytes(), start + (1 << 19));
  const int64_t refused_before = meter.refusals();
  try {
    torch::Tensor too_big = torch::empty({(1 << 20) / 4}, torch::kFloat);  // 1 MiB more: over
    FAIL() << "an allocation past the limit succeeded";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("over its memory limit"), std::string::npos) << e.what();
  }
  EXPECT_EQ(meter.refusals(), refused_before + 1);
  EXPECT_EQ(meter.last_refused_bytes(), 1 << 20);
  EXPECT_EQ(meter.current_bytes(), start + (1 << 19));  // the refused bytes were never counted
  meter.SetLimit(0);
  torch::Tensor now_fine = torch::empty({(1 << 20) / 4}, torch::kFloat);
  EXPECT_EQ(meter.current_bytes(), start + (1 << 19) + (1 << 20));
}

TEST(CpuMemoryLimit, AnOverrunInsideAnOpLeavesTheMeterConsistent) {
  CpuMemoryMeter& meter = CpuMemoryMeter::Install();
  LimitReset reset;
  torch::Tensor a = torch::randn({256, 256});
  const int64_t start = meter.current_bytes();
  meter.SetLimit(start + 1000);  // less than one 256 x 256 result
  EXPECT_THROW(torch::matmul(a, a), c10::Error);
  EXPECT_EQ(meter.current_bytes(), start);
  meter.SetLimit(0);
  EXPECT_EQ(torch::matmul(a, a).size(0), 256);
}

}  // namespace
}  // namespace xtrain::core
