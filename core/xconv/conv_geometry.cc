#include "core/xconv/conv_geometry.h"

namespace xtrain::core {
namespace {

std::vector<int64_t> Repeat(const std::vector<int64_t>& values, int64_t dims) {
  if (values.size() == 1) return std::vector<int64_t>(dims, values[0]);
  return values;
}

}  // namespace

std::vector<int64_t> SpatialSizes(const std::vector<int64_t>& sizes) {
  return std::vector<int64_t>(sizes.begin() + 2, sizes.end());
}

int64_t SpatialVolume(const std::vector<int64_t>& sizes) {
  int64_t volume = 1;
  for (size_t i = 2; i < sizes.size(); ++i) volume *= sizes[i];
  return volume;
}

ConvGeometry ExpandGeometry(const ConvGeometry& geometry, int64_t dims) {
  return ConvGeometry{Repeat(geometry.stride, dims), Repeat(geometry.padding, dims),
                      Repeat(geometry.dilation, dims), geometry.groups};
}

int64_t ConvOutputSize(int64_t input, int64_t kernel, int64_t stride, int64_t padding,
                       int64_t dilation) {
  return (input + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1;
}

std::vector<int64_t> TransposeOutputPadding(const std::vector<int64_t>& input_sizes,
                                            const std::vector<int64_t>& output_sizes,
                                            const std::vector<int64_t>& kernel_sizes,
                                            const ConvGeometry& geometry) {
  std::vector<int64_t> output_padding(input_sizes.size());
  for (size_t i = 0; i < input_sizes.size(); ++i) {
    const int64_t transposed = (output_sizes[i] - 1) * geometry.stride[i] -
                               2 * geometry.padding[i] +
                               geometry.dilation[i] * (kernel_sizes[i] - 1) + 1;
    output_padding[i] = input_sizes[i] - transposed;
  }
  return output_padding;
}

}  // namespace xtrain::core
