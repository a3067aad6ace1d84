#pragma once

#include <torch/torch.h>

#include "core/models/model_spec.h"
#include "core/models/network.h"

namespace xtrain::core {

// "unet" and "ddpm_unet": a U-Net over images or volumes. `depth` levels; level i has width * 2^i
// channels and a double conv (conv3x3-BN-ReLU twice; no BN without batch_norm), then max-pool 2;
// a double conv bottleneck at width * 2^depth; on the way up a 2x2 stride-2 transposed conv, the
// level's encoder output concatenated before it (skip), and a double conv; a final 1x1 conv ->
// out_channels. Spatial sizes must be divisible by 2^depth.
// ddpm_unet is this network for DDPM noise prediction: the data adapter appends t / T as one
// constant input channel, so in_channels = data channels + 1 and out_channels = data channels.
// Children: "enc<i>", "pool<i>", "bottleneck", "up<i>", "dec<i>" (i = 0 is the full resolution), "head".
class UNetImpl : public NetworkImpl {
 public:
  // `spec` has width and depth resolved (> 0); BuildModel validates it.
  explicit UNetImpl(const ModelSpec& spec);
  torch::Tensor forward(const torch::Tensor& input) override;
};

}  // namespace xtrain::core
