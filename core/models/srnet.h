#pragma once

#include <torch/torch.h>

#include "core/models/model_spec.h"
#include "core/models/network.h"

namespace xtrain::core {

// "srnet": super-resolution in the ESPCN manner. All features are computed at the low input
// resolution: conv3x3(width)-ReLU, (depth - 1) x conv3x3(width)-ReLU, conv3x3 -> out_channels *
// scale^dims, then a sub-pixel shuffle by `scale` per side (PixelShuffle for images, VoxelShuffle
// for volumes). No BatchNorm. Children: "body".
class SrNetImpl : public NetworkImpl {
 public:
  // `spec` has width and depth resolved (> 0) and scale >= 1; BuildModel validates it.
  explicit SrNetImpl(const ModelSpec& spec);
  torch::Tensor forward(const torch::Tensor& input) override;
};

}  // namespace xtrain::core
