#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/xconv/conv_geometry.h"
#include "core/xconv/xconv_op.h"
#include "core/xconv/xconv_options.h"

namespace xtrain::core::testing {

// One convolution layer's shapes and geometry.
struct ConvCase {
  std::string name;
  int64_t batch = 2;
  int64_t in_channels = 4;
  int64_t out_channels = 6;
  std::vector<int64_t> spatial;  // 2 or 3 entries
  std::vector<int64_t> kernel;
  ConvGeometry geometry{{1}, {1}, {1}, 1};
  bool bias = true;

  int64_t dims() const { return static_cast<int64_t>(spatial.size()); }
  int64_t spatial_size() const {
    int64_t s = 1;
    for (int64_t v : spatial) s *= v;
    return s;
  }
};

// gtest prints a case by its name (test listings and CTest names stay readable).
inline void PrintTo(const ConvCase& c, std::ostream* os) { *os << c.name; }

// The layer's tensors: input, weight, bias and a fixed output gradient.
struct ConvTensors {
  torch::Tensor input, weight, bias, grad_output;
};

// Gradients of sum(y * grad_output) and the output.
struct ConvGrads {
  torch::Tensor output, input, weight, bias;
};

// Seeded random tensors for `c` in `dtype`.
ConvTensors MakeTensors(const ConvCase& c, torch::ScalarType dtype, uint64_t seed);

// Exact gradients through LibTorch's own convolution autograd.
ConvGrads ExactGrads(const ConvCase& c, const ConvTensors& t);

// Output and gradients from the convolution's definition, independent of LibTorch's convolution
// kernels: the zero-padded input cut into one strided slice per kernel tap, each contracted with
// that tap's weights (tensordot), summed; autograd through those ops gives dX, dW and db.
ConvGrads ReferenceGrads(const ConvCase& c, const ConvTensors& t);

// Gradients through XConvNd with `settings` and `seed`.
ConvGrads XConvGrads(const ConvCase& c, const ConvTensors& t, const XConvSettings& settings,
                     uint64_t seed);

// ||a - b||_F / ||b||_F in float64.
double RelativeError(const torch::Tensor& a, const torch::Tensor& b);

}  // namespace xtrain::core::testing
