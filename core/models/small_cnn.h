#pragma once

#include <torch/torch.h>

#include "core/models/model_spec.h"
#include "core/models/network.h"

namespace xtrain::core {

// "small_cnn": conv3x3(width)-ReLU-maxpool2, conv3x3(2 * width)-ReLU-maxpool2, global average
// pool, flatten, linear -> classes. Sized for Fashion-MNIST (1 x 28 x 28); no BatchNorm.
// Children: "features", "head".
class SmallCnnImpl : public NetworkImpl {
 public:
  // `spec` has width resolved (> 0); BuildModel validates it.
  explicit SmallCnnImpl(const ModelSpec& spec);
  torch::Tensor forward(const torch::Tensor& input) override;
};

}  // namespace xtrain::core
