#include "core/models/small_cnn.h"

#include "core/models/layers.h"

namespace xtrain::core {

SmallCnnImpl::SmallCnnImpl(const ModelSpec& spec) : NetworkImpl(spec) {
  const int64_t dims = spec.dims;
  const int64_t width = spec.width;
  torch::nn::Sequential features;
  // Pool before ReLU: max and ReLU commute (same output, same gradient), and the ReLU then runs
  // on, and its backward allocates, a quarter of the elements.
  features->push_back(Conv(dims, {.in = spec.in_channels, .out = width}));
  features->push_back(MaxPool(dims, 2, 2));
  features->push_back(Relu());
  features->push_back(Conv(dims, {.in = width, .out = 2 * width}));
  features->push_back(MaxPool(dims, 2, 2));
  features->push_back(Relu());
  register_module("features", features);

  torch::nn::Sequential head;
  head->push_back(GlobalAvgPool(dims));
  head->push_back(torch::nn::Flatten());
  head->push_back(torch::nn::Linear(2 * width, spec.classes));
  register_module("head", head);
}

torch::Tensor SmallCnnImpl::forward(const torch::Tensor& input) {
  return Seq("head").forward(Seq("features").forward(input));
}

}  // namespace xtrain::core
