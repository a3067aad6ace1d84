#pragma once

#include <torch/torch.h>

#include "core/models/model_spec.h"
#include "core/models/network.h"

namespace xtrain::core {

// "strided_grouped": a classifier whose convolutions cover the geometries the memory planner must
// model. In "features", each conv followed by BN (with batch_norm) and ReLU, named by its role:
//   stem       conv3x3 stride 2,           in -> width
//   grouped    conv3x3 groups 2,           width -> 2 * width
//   strided    conv3x3 stride 2, groups 4, 2 * width -> 2 * width
//   depthwise  conv3x3 groups 2 * width,   2 * width -> 2 * width
//   pointwise  conv1x1,                    2 * width -> 4 * width
//   dilated    conv3x3 dilation 2,         4 * width -> 4 * width
// then "head": global average pool, flatten, linear -> classes. width must be even.
class StridedGroupedImpl : public NetworkImpl {
 public:
  // `spec` has width resolved (positive, even); BuildModel validates it.
  explicit StridedGroupedImpl(const ModelSpec& spec);
  torch::Tensor forward(const torch::Tensor& input) override;
};

}  // namespace xtrain::core
