#include "core/memory/cuda_memory_meter.h"

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>

#include "absl/strings/str_cat.h"
#include "core/util/torch_guard.h"

namespace xtrain::core {
namespace {

namespace alloc = c10::cuda::CUDACachingAllocator;

const alloc::Stat& Aggregate(const alloc::StatArray& stats) {
  return stats[static_cast<size_t>(alloc::StatType::AGGREGATE)];
}

}  // namespace

absl::StatusOr<CudaMemoryMeter> CudaMemoryMeter::ForDevice(int device, double memory_fraction) {
  const int count = static_cast<int>(c10::cuda::device_count());
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda meter: device ", device, " does not exist (", count, " CUDA devices)"));
  }
  if (memory_fraction <= 0 || memory_fraction > 1) {
    return absl::InvalidArgumentError("cuda meter: memory_fraction must be in (0, 1]");
  }
  return GuardTorch("cuda meter", [&]() -> absl::StatusOr<CudaMemoryMeter> {
    if (memory_fraction < 1) alloc::setMemoryFraction(memory_fraction, device);
    return CudaMemoryMeter(device);
  });
}

int64_t CudaMemoryMeter::current_bytes() const {
  return Aggregate(alloc::getDeviceStats(device_).allocated_bytes).current;
}

int64_t CudaMemoryMeter::peak_bytes() const {
  return Aggregate(alloc::getDeviceStats(device_).allocated_bytes).peak;
}

void CudaMemoryMeter::ResetPeak() { alloc::resetPeakStats(device_); }

int64_t CudaMemoryMeter::reserved_bytes() const {
  return Aggregate(alloc::getDeviceStats(device_).reserved_bytes).current;
}

int64_t CudaMemoryMeter::peak_reserved_bytes() const {
  return Aggregate(alloc::getDeviceStats(device_).reserved_bytes).peak;
}

}  // namespace xtrain::core
