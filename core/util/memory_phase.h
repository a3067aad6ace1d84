#pragma once

// The memory-phase hook: operators below (XConv, the lean layers) mark phases and outputs; the
// memory model above installs the observer that measures them. It sits in util so that neither
// folder includes the other's headers for it.

#include <torch/torch.h>

namespace xtrain::core {

// Receives the phase boundaries that backward functions mark (see MarkMemoryPhase).
class MemoryPhaseObserver {
 public:
  virtual ~MemoryPhaseObserver() = default;
  virtual void OnPhase() = 0;
  // A forward of ours (XConv, mask ReLU) produced `output` through a custom autograd function,
  // which LibTorch's op callbacks do not see.
  virtual void OnForwardOutput(const torch::Tensor& output) {}
};

// Marks a boundary between two working-set phases inside a backward function. XConv's backward
// has phases that scale differently with batch and probes (the input gradient, the probe unfold,
// the tap buffers); the memory model measures each one's peak on its own so it can extrapolate
// them. A relaxed atomic load when nobody observes.
void MarkMemoryPhase();

// Reports a custom autograd function's output to the observer, if any.
void MarkForwardOutput(const torch::Tensor& output);

// Installs `observer` process-wide (nullptr removes it). The memory model's calibration does.
void SetMemoryPhaseObserver(MemoryPhaseObserver* observer);

// Installs `observer` (nullptr: none) for its lifetime and removes it on exit, exceptions included,
// so a failed backward never leaves the hook pointing at a destroyed observer.
class MemoryPhaseScope {
 public:
  explicit MemoryPhaseScope(MemoryPhaseObserver* observer) { SetMemoryPhaseObserver(observer); }
  ~MemoryPhaseScope() { SetMemoryPhaseObserver(nullptr); }
  MemoryPhaseScope(const MemoryPhaseScope&) = delete;
  MemoryPhaseScope& operator=(const MemoryPhaseScope&) = delete;
};

}  // namespace xtrain::core
