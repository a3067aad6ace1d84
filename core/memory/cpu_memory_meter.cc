#include "core/memory/cpu_memory_meter.h"

#include <c10/core/CPUAllocator.h>

#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace xtrain::core {
namespace {

// Wraps the default CPU allocator. The DataPtr's context is the data pointer itself (LibTorch's
// raw_allocate requires that), so each block's size and owner live in a map keyed by address.
class CountingAllocator final : public c10::Allocator {
 public:
  CountingAllocator(c10::Allocator* base, CpuMemoryMeter* meter) : base_(base), meter_(meter) {
    instance_ = this;
  }

  c10::DataPtr allocate(size_t bytes) const override {
    if (bytes > 0 && !meter_->TryAdd(static_cast<int64_t>(bytes))) {
      TORCH_CHECK(false, "CPU allocation of ", bytes, " bytes refused: the job would hold ",
                  meter_->current_bytes() + static_cast<int64_t>(bytes), " bytes, over its memory limit of ",
                  meter_->limit_bytes(), " bytes");
    }
    c10::DataPtr inner;
    try {
      inner = base_->allocate(bytes);
    } catch (...) {
      // Not the guard: an allocator throws as LibTorch expects; this only takes back the count.
      if (bytes > 0) meter_->Sub(static_cast<int64_t>(bytes));
      throw;
    }
    void* data = inner.get();
    if (data == nullptr) {  // zero-byte allocations own nothing
      if (bytes > 0) meter_->Sub(static_cast<int64_t>(bytes));
      return inner;
    }
    {
      absl::MutexLock lock(&mutex_);
      blocks_.emplace(data, Block{std::move(inner), static_cast<int64_t>(bytes)});
    }
    return {data, data, &Free, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &Free; }

 private:
  struct Block {
    c10::DataPtr inner;  // frees through the base allocator when destroyed
    int64_t bytes;
  };

  static void Free(void* data) {
    Block block;
    {
      absl::MutexLock lock(&instance_->mutex_);
      auto it = instance_->blocks_.find(data);
      if (it == instance_->blocks_.end()) return;
      block = std::move(it->second);
      instance_->blocks_.erase(it);
    }
    instance_->meter_->Sub(block.bytes);
  }

  static inline CountingAllocator* instance_ = nullptr;
  c10::Allocator* base_;
  CpuMemoryMeter* meter_;
  mutable absl::Mutex mutex_;
  mutable std::unordered_map<void*, Block> blocks_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace

bool CpuMemoryMeter::TryAdd(int64_t bytes) {
  const int64_t now = current_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  const int64_t limit = limit_.load(std::memory_order_relaxed);
  if (limit > 0 && now > limit) {
    current_.fetch_sub(bytes, std::memory_order_relaxed);
    refusals_.fetch_add(1, std::memory_order_relaxed);
    last_refused_.store(bytes, std::memory_order_relaxed);
    return false;
  }
  int64_t peak = peak_.load(std::memory_order_relaxed);
  while (now > peak && !peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
  return true;
}

CpuMemoryMeter& CpuMemoryMeter::Install() {
  static CpuMemoryMeter* meter = [] {
    auto* m = new CpuMemoryMeter();
    // Leaked on purpose: tensors may outlive static destruction.
    static CountingAllocator* allocator = new CountingAllocator(c10::GetCPUAllocator(), m);
    c10::SetCPUAllocator(allocator, /*priority=*/100);
    return m;
  }();
  return *meter;
}

}  // namespace xtrain::core
