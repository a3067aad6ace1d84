#include "core/models/srnet.h"

#include "core/models/layers.h"
#include "core/models/voxel_shuffle.h"

namespace xtrain::core {

SrNetImpl::SrNetImpl(const ModelSpec& spec) : NetworkImpl(spec) {
  const int64_t dims = spec.dims;
  int64_t sub_pixels = 1;
  for (int64_t axis = 0; axis < dims; ++axis) sub_pixels *= spec.scale;
  torch::nn::Sequential body;
  int64_t channels = spec.in_channels;
  for (int64_t layer = 0; layer < spec.depth; ++layer) {
    AppendConvBnRelu(*body, dims, {.in = channels, .out = spec.width}, /*batch_norm=*/false);
    channels = spec.width;
  }
  body->push_back(Conv(dims, {.in = channels, .out = spec.out_channels * sub_pixels}));
  if (dims == 2) {
    body->push_back(torch::nn::PixelShuffle(torch::nn::PixelShuffleOptions(spec.scale)));
  } else {
    body->push_back(VoxelShuffle(spec.scale));
  }
  register_module("body", body);
}

torch::Tensor SrNetImpl::forward(const torch::Tensor& input) { return Seq("body").forward(input); }

}  // namespace xtrain::core
