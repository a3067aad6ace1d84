#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/data/task.h"
#include "core/train/train_event.h"

namespace xtrain::core {

// Gradient-fidelity telemetry: the paper's criterion that the XConv weight gradient's error
// variance be comparable to SGD's minibatch noise. At one step, for each XConv layer:
//   V_x   = tr Var over probe draws of its weight gradient on the step's batch, estimated from the
//           step's own gradient g1 and one more pass with fresh probes g2: ||g1 - g2||^2 / 2;
//   V_sgd = tr Var of the minibatch-mean exact gradient: exact gradients gA, gB of two disjoint
//           micro-batches of size m give the per-sample variance m ||gA - gB||^2 / 2, over B.
// Cost: one forward+backward of the batch and two exact ones of m samples each.
class FidelityProbe {
 public:
  // Forward and loss of the model on a batch, in the model's current (training) mode.
  using LossFn = std::function<torch::Tensor(const Batch& batch)>;

  // Watches the XConv layers of `model` whose weight is trained.
  FidelityProbe(std::shared_ptr<torch::nn::Module> model, LossFn loss);

  // No XConv layer with a trained weight: nothing to measure.
  bool empty() const { return layers_.empty(); }
  std::vector<std::string> paths() const;

  // Measures at the current step: `batch` is the step's batch and the watched weights' .grad hold
  // its gradient (one backward since zero_grad). 2 * micro_batch must not exceed the batch size.
  // Layers running exact at the moment (probes 0) are skipped. Leaves every .grad, every buffer
  // (BatchNorm statistics, XConv seed streams), the layer settings and the global generator as
  // they were, so training continues exactly as without the measurement. `salt` picks the fresh
  // probes (use the step number).
  absl::StatusOr<FidelityReport> Measure(const Batch& batch, int64_t micro_batch, uint64_t salt);

 private:
  struct Layer {
    std::string path;
    std::shared_ptr<torch::nn::Module> module;  // an XConv2d or XConv3d
    torch::Tensor weight;
    torch::Tensor seed;  // its "xconv_seed" buffer
  };

  std::shared_ptr<torch::nn::Module> model_;
  LossFn loss_;
  std::vector<Layer> layers_;
};

}  // namespace xtrain::core
