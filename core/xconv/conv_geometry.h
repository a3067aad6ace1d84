#pragma once

#include <cstdint>
#include <vector>

namespace xtrain::core {

// Stride, zero padding, dilation and groups of a 2-D or 3-D convolution, one entry per spatial dim.
struct ConvGeometry {
  std::vector<int64_t> stride;
  std::vector<int64_t> padding;
  std::vector<int64_t> dilation;
  int64_t groups = 1;
};

// The spatial part (dims 2..) of a (B, C, spatial...) shape, and its number of elements.
std::vector<int64_t> SpatialSizes(const std::vector<int64_t>& sizes);
int64_t SpatialVolume(const std::vector<int64_t>& sizes);

// A geometry with every per-dimension list of length `dims` (a single value is repeated).
ConvGeometry ExpandGeometry(const ConvGeometry& geometry, int64_t dims);

// Spatial output size of the convolution for one dimension.
int64_t ConvOutputSize(int64_t input, int64_t kernel, int64_t stride, int64_t padding,
                       int64_t dilation);

// output_padding that makes conv_transpose(G, W) return exactly `input_sizes` (spatial dims).
std::vector<int64_t> TransposeOutputPadding(const std::vector<int64_t>& input_sizes,
                                            const std::vector<int64_t>& output_sizes,
                                            const std::vector<int64_t>& kernel_sizes,
                                            const ConvGeometry& geometry);

}  // namespace xtrain::core
