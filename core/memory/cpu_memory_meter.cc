#include "core/memory/cpu_memory_meter.h"

#include <c10/core/CPUAllocator.h>

#include <mutex>

namespace xtrain::core {
namespace {

// Wraps the default CPU allocator; each block carries its size to the deleter.
class CountingAllocator final : public c10::Allocator {
 public:
  CountingAllocator(c10::Allocator* base, CpuMemoryMeter* meter) : base_(base), meter_(meter) {}

  c10::DataPtr allocate(size_t bytes) const override {
    c10::DataPtr inner = base_->allocate(bytes);
    void* data = inner.get();
    auto* block = new Block{std::move(inner), static_cast<int64_t>(bytes), meter_};
    meter_->Add(block->bytes);
    return {data, block, &Free, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }

 private:
  struct Block {
    c10::DataPtr inner;
    int64_t bytes;
    CpuMemoryMeter* meter;
  };

  static void Free(void* context) {
    auto* block = static_cast<Block*>(context);
    block->meter->Sub(block->bytes);
    delete block;
  }

  c10::Allocator* base_;
  CpuMemoryMeter* meter_;
};

}  // namespace

void CpuMemoryMeter::Add(int64_t bytes) {
  const int64_t now = current_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  int64_t peak = peak_.load(std::memory_order_relaxed);
  while (now > peak && !peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
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
