#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "core/models/model_spec.h"
#include "core/models/network.h"

namespace xtrain::core {

// SqueezeNet's Fire module: squeeze 1x1 conv-ReLU, then expand 1x1 conv-ReLU and expand 3x3
// conv-ReLU concatenated along channels. Children: "squeeze", "expand1x1", "expand3x3".
class FireImpl : public ZooModule {
 public:
  FireImpl(int64_t dims, int64_t in, int64_t squeeze, int64_t expand1x1, int64_t expand3x3);
  torch::Tensor forward(const torch::Tensor& input);
};
TORCH_MODULE(Fire);

// "squeezenet1_1": torchvision's SqueezeNet 1.1 layout and initialisation. features: conv3x3
// stride 2 (width) - ReLU - maxpool(3, 2, ceil), Fire x2, maxpool, Fire x2, maxpool, Fire x4;
// classifier: dropout(0.5), conv1x1 -> classes, ReLU, global average pool, flatten. width 64 (the
// default) gives torchvision's channels; other widths scale them all by width / 64. Inputs need at
// least 17 pixels per side (32 and up is comfortable). Children: "features", "classifier".
class SqueezeNetImpl : public NetworkImpl {
 public:
  // `spec` has width resolved (a positive multiple of 4); BuildModel validates it.
  explicit SqueezeNetImpl(const ModelSpec& spec);
  torch::Tensor forward(const torch::Tensor& input) override;
};

}  // namespace xtrain::core
