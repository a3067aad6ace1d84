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

  // Refuses CPU allocations that would take current_bytes() above `bytes` (0: no limit). A refused
  // allocation throws c10::Error as an out-of-memory would, so a job that overruns its budget fails
  // with a clean error instead of taking the machine's memory (the worker caps itself this way).
  void SetLimit(int64_t bytes) { limit_.store(bytes, std::memory_order_relaxed); }
  int64_t limit_bytes() const { return limit_.load(std::memory_order_relaxed); }
  // Allocations refused by the limit so far, and the bytes the last one asked for.
  int64_t refusals() const { return refusals_.load(std::memory_order_relaxed); }
  int64_t last_refused_bytes() const { return last_refused_.load(std::memory_order_relaxed); }

  // Counts `bytes` unless the limit refuses them (then counts a refusal and returns false).
  bool TryAdd(int64_t bytes);
  void Sub(int64_t bytes) { current_.fetch_sub(bytes, std::memory_order_relaxed); }

 private:
  CpuMemoryMeter() = default;
  std::atomic<int64_t> current_{0};
  std::atomic<int64_t> peak_{0};
  std::atomic<int64_t> limit_{0};
  std::atomic<int64_t> refusals_{0};
  std::atomic<int64_t> last_refused_{0};
};

}  // namespace xtrain::core
