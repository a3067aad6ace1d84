#include "core/models/dncnn.h"

#include "core/models/layers.h"

namespace xtrain::core {

DnCnnImpl::DnCnnImpl(const ModelSpec& spec)
    : NetworkImpl(spec), residual_(spec.in_channels == spec.out_channels) {
  const int64_t dims = spec.dims;
  torch::nn::Sequential body;
  AppendConvBnRelu(*body, dims, {.in = spec.in_channels, .out = spec.width}, /*batch_norm=*/false);
  for (int64_t layer = 0; layer < spec.depth - 2; ++layer) {
    AppendConvBnRelu(*body, dims, {.in = spec.width, .out = spec.width}, spec.batch_norm);
  }
  body->push_back(Conv(dims, {.in = spec.width, .out = spec.out_channels}));
  register_module("body", body);
}

torch::Tensor DnCnnImpl::forward(const torch::Tensor& input) {
  torch::Tensor predicted = Seq("body").forward(input);
  return residual_ ? input - predicted : predicted;
}

}  // namespace xtrain::core
