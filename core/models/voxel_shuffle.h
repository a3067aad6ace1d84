#pragma once

#include <cstdint>
#include <ostream>

#include <torch/torch.h>

namespace xtrain::core {

// PixelShuffle for volumes: (N, C * s^3, D, H, W) -> (N, C, D * s, H * s, W * s), reading the
// channel index as (c, sd, sh, sw) the way torch's PixelShuffle reads (c, sh, sw). LibTorch 1.13
// has no 3-D pixel shuffle; this lets srnet run on volumes.
class VoxelShuffleImpl : public torch::nn::Cloneable<VoxelShuffleImpl> {
 public:
  explicit VoxelShuffleImpl(int64_t scale);

  void reset() override {}
  torch::Tensor forward(const torch::Tensor& input);
  void pretty_print(std::ostream& stream) const override;

  int64_t scale() const { return scale_; }

 private:
  int64_t scale_;
};
TORCH_MODULE(VoxelShuffle);

}  // namespace xtrain::core
