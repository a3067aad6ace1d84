#pragma once

#include <torch/torch.h>

#include "core/models/model_spec.h"
#include "core/models/network.h"

namespace xtrain::core {

// "dncnn": a DnCNN-style denoiser at full resolution: conv3x3(width)-ReLU, (depth - 2) x
// conv3x3(width)-BN-ReLU (no BN without batch_norm), conv3x3 -> out_channels. When in_channels ==
// out_channels the body predicts the noise and forward returns input - body(input) (residual
// learning); otherwise it returns body(input). Children: "body".
class DnCnnImpl : public NetworkImpl {
 public:
  // `spec` has width resolved (> 0) and depth >= 2; BuildModel validates it.
  explicit DnCnnImpl(const ModelSpec& spec);
  torch::Tensor forward(const torch::Tensor& input) override;

  // Whether forward subtracts the body's output from the input.
  bool residual() const { return residual_; }

 private:
  bool residual_;
};

}  // namespace xtrain::core
