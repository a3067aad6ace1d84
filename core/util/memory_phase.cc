#include "core/util/memory_phase.h"

#include <atomic>

namespace xtrain::core {
namespace {

std::atomic<MemoryPhaseObserver*> observer{nullptr};

}  // namespace

void MarkMemoryPhase() {
  if (MemoryPhaseObserver* o = observer.load(std::memory_order_acquire)) o->OnPhase();
}

void MarkForwardOutput(const torch::Tensor& output) {
  if (MemoryPhaseObserver* o = observer.load(std::memory_order_acquire)) o->OnForwardOutput(output);
}

void SetMemoryPhaseObserver(MemoryPhaseObserver* o) { observer.store(o, std::memory_order_release); }

}  // namespace xtrain::core
