#include "core/models/strided_grouped.h"

#include "core/models/layers.h"

namespace xtrain::core {

StridedGroupedImpl::StridedGroupedImpl(const ModelSpec& spec) : NetworkImpl(spec) {
  const int64_t dims = spec.dims;
  const int64_t w = spec.width;
  const bool bn = spec.batch_norm;
  torch::nn::Sequential features;
  AppendConvBnRelu(*features, dims, {.in = spec.in_channels, .out = w, .stride = 2}, bn, "stem");
  AppendConvBnRelu(*features, dims, {.in = w, .out = 2 * w, .groups = 2}, bn, "grouped");
  AppendConvBnRelu(*features, dims, {.in = 2 * w, .out = 2 * w, .stride = 2, .groups = 4}, bn, "strided");
  AppendConvBnRelu(*features, dims, {.in = 2 * w, .out = 2 * w, .groups = 2 * w}, bn, "depthwise");
  AppendConvBnRelu(*features, dims, {.in = 2 * w, .out = 4 * w, .kernel = 1}, bn, "pointwise");
  AppendConvBnRelu(*features, dims, {.in = 4 * w, .out = 4 * w, .dilation = 2}, bn, "dilated");
  register_module("features", features);

  torch::nn::Sequential head;
  head->push_back(GlobalAvgPool(dims));
  head->push_back(torch::nn::Flatten());
  head->push_back(torch::nn::Linear(4 * w, spec.classes));
  register_module("head", head);
}

torch::Tensor StridedGroupedImpl::forward(const torch::Tensor& input) {
  return Seq("head").forward(Seq("features").forward(input));
}

}  // namespace xtrain::core
