#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "core/memory/memory_meter.h"

namespace xtrain::core {

// The meter of one CUDA device, over CUDACachingAllocator's device statistics: allocated bytes
// (what tensors hold, in 512-byte blocks) and reserved bytes (what the cache holds from the driver).
// Built only when LibTorch has CUDA (XTRAIN_HAVE_CUDA_METER); the CPU build leaves it out.
class CudaMemoryMeter final : public MemoryMeter {
 public:
  // The meter of `device`. A `memory_fraction` below 1 caps the caching allocator at that share of
  // the card (setMemoryFraction), to emulate a smaller one; allocations beyond it fail as OOM.
  static absl::StatusOr<CudaMemoryMeter> ForDevice(int device, double memory_fraction = 1.0);

  int64_t current_bytes() const override;  // allocated
  int64_t peak_bytes() const override;     // allocated, peak since ResetPeak
  void ResetPeak() override;
  int64_t reserved_bytes() const;
  int64_t peak_reserved_bytes() const;
  int device() const { return device_; }

 private:
  explicit CudaMemoryMeter(int device) : device_(device) {}
  int device_;
};

}  // namespace xtrain::core
