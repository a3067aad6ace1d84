#pragma once

#include <atomic>
#include <cstdint>

#include <c10/core/Allocator.h>

#include "core/memory/memory_meter.h"

namespace xtrain::core {

// Counts every byte LibTorch allocates on the CPU, exactly, while installed
// (c10::SetCPUAllocator). Current and peak are atomics: safe under LibTorch's worker threads.
// Memory allocated before installation is freed through its own deleter and never counted.
class CpuMemoryMeter final : public MemoryMeter {
 public:
  // Installs the counting allocator process-wide (once) and returns the meter.
  static CpuMemoryMeter& Install();

  int64_t current_bytes() const override { return current_.load(std::memory_order_relaxed); }
  int64_t peak_bytes() const override { return peak_.load(std::memory_order_relaxed); }
  void ResetPeak() override { peak_.store(current_bytes(), std::memory_order_relaxed); }

  // Peak above the starting point within a scope: peak_bytes() - bytes at construction.
  class Scope {
   public:
    explicit Scope(CpuMemoryMeter& meter) : meter_(meter), start_(meter.current_bytes()) {
      meter_.ResetPeak();
    }
    int64_t peak_delta() const { return meter_.peak_bytes() - start_; }
    int64_t current_delta() const { return meter_.current_bytes() - start_; }

   private:
    CpuMemoryMeter& meter_;
    int64_t start_;
  };

  void Add(int64_t bytes);
  void Sub(int64_t bytes) { current_.fetch_sub(bytes, std::memory_order_relaxed); }

 private:
  CpuMemoryMeter() = default;
  std::atomic<int64_t> current_{0};
  std::atomic<int64_t> peak_{0};
};

}  // namespace xtrain::core
