#pragma once

// Reading and writing a LibTorch generator's full state (seed, offset, normal cache) under its
// lock, and a scope that puts the process-wide CPU generator back as it found it.

#include <mutex>

#include <ATen/core/Generator.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

namespace xtrain::core {

inline torch::Tensor GeneratorState(at::Generator& generator) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

inline void SetGeneratorState(at::Generator& generator, const torch::Tensor& state) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
}

// Saves LibTorch's default CPU generator (which dropout and torch::randn draw from) and restores it
// on scope exit, exceptions included.
class GlobalGeneratorScope {
 public:
  GlobalGeneratorScope() : generator_(at::detail::getDefaultCPUGenerator()), saved_(GeneratorState(generator_)) {}
  ~GlobalGeneratorScope() { SetGeneratorState(generator_, saved_); }
  GlobalGeneratorScope(const GlobalGeneratorScope&) = delete;
  GlobalGeneratorScope& operator=(const GlobalGeneratorScope&) = delete;

  at::Generator& generator() { return generator_; }

 private:
  at::Generator generator_;
  torch::Tensor saved_;
};

}  // namespace xtrain::core
