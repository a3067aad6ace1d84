#include "core/models/voxel_shuffle.h"

namespace xtrain::core {

VoxelShuffleImpl::VoxelShuffleImpl(int64_t scale) : scale_(scale) {
  TORCH_CHECK(scale >= 1, "VoxelShuffle: scale must be >= 1, got ", scale);
}

torch::Tensor VoxelShuffleImpl::forward(const torch::Tensor& input) {
  TORCH_CHECK(input.dim() == 5, "VoxelShuffle: expected (N, C, D, H, W), got ", input.sizes());
  const int64_t s = scale_;
  const int64_t n = input.size(0);
  const int64_t c = input.size(1);
  TORCH_CHECK(c % (s * s * s) == 0, "VoxelShuffle: channels (", c, ") must be divisible by scale^3 (",
              s * s * s, ")");
  const int64_t d = input.size(2);
  const int64_t h = input.size(3);
  const int64_t w = input.size(4);
  const int64_t out_c = c / (s * s * s);
  // (n, c, sd, sh, sw, d, h, w) -> (n, c, d, sd, h, sh, w, sw)
  return input.reshape({n, out_c, s, s, s, d, h, w})
      .permute({0, 1, 5, 2, 6, 3, 7, 4})
      .reshape({n, out_c, d * s, h * s, w * s});
}

void VoxelShuffleImpl::pretty_print(std::ostream& stream) const {
  stream << "xtrain::VoxelShuffle(scale=" << scale_ << ")";
}

}  // namespace xtrain::core
