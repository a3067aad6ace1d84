#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "core/xconv/conv_geometry.h"
#include "core/xconv/xconv_options.h"

namespace xtrain::core {

// Checks the arguments of a `dims`-D XConv call; InvalidArgument says what to change.
absl::Status ValidateXConvArgs(int64_t dims, const torch::Tensor& input, const torch::Tensor& weight,
                               const torch::Tensor& bias, const ConvGeometry& geometry,
                               const XConvSettings& settings);

// Convolution with exact forward, exact input and bias gradients and an XConv-estimated weight
// gradient (DESIGN.md §1). `bias` may be undefined. settings.probes == 0 runs the exact conv.
// The probes are regenerated in backward from `seed` with a private generator.
// Throws c10::Error (the LibTorch convention at this layer) with ValidateXConvArgs' message.
torch::Tensor XConvNd(int64_t dims, const torch::Tensor& input, const torch::Tensor& weight,
                      const torch::Tensor& bias, const ConvGeometry& geometry,
                      const XConvSettings& settings, uint64_t seed);

// Dtype XConv's sketch and weight-gradient arithmetic run in: float64 for float64, else float32.
torch::ScalarType XConvComputeDtype(torch::ScalarType input_dtype);

}  // namespace xtrain::core
