#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "core/xconv/conv_geometry.h"
#include "core/xconv/probes.h"
#include "core/xconv/xconv_options.h"

namespace xtrain::core {

// Sizes of one convolution call, enough to price the weight-gradient routes.
struct ConvShape {
  int64_t batch = 0;
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t groups = 1;
  int64_t kernel_volume = 0;   // prod(kernel sizes)
  int64_t input_spatial = 0;   // S = prod(input spatial sizes)
  int64_t output_spatial = 0;  // prod(output spatial sizes)
};

// Multiply-adds of each weight-gradient computation for `probes` probes in `mode`.
struct RouteCost {
  double exact = 0;        // the library's exact weight gradient on the stored input
  double tap = 0;          // tap route; infinity where the mode has no tap route
  double reconstruct = 0;  // reconstruction route
};
RouteCost EstimateRouteCost(const ConvShape& shape, int64_t probes, ProbeMode mode);

// The route `requested` resolves to: kAuto picks the cheaper one by EstimateRouteCost, weighting the
// tap route by kTapCostWeight: its one large GEMM runs faster per multiply-add than the library's
// weight-gradient kernel that the reconstruction route calls. On the CPU grid of
// bench/results/layer-cpu-2026-11-28.md the tap route was faster wherever its modelled cost was
// below ~0.7x the reconstruction route's, either won near 1.6x, and tap lost above 3x.
GradientRoute ResolveRoute(GradientRoute requested, const ConvShape& shape, int64_t probes,
                           ProbeMode mode);
inline constexpr double kTapCostWeight = 0.75;

// The sketch an XConv layer keeps: (B, C_in, r) for kIndependent, (B, r) otherwise, computed in
// `compute_dtype` (fp32 for reduced-precision inputs) and returned in the input's dtype. With
// `means` (B, C_in) defined, it sketches the residual input - means instead.
torch::Tensor ComputeSketch(const torch::Tensor& input, const ProbeSet& probes, ProbeMode mode,
                            torch::ScalarType compute_dtype, const torch::Tensor& means = {});

// Per-sample, per-channel spatial means (B, C_in) in `compute_dtype`.
torch::Tensor ChannelMeans(const torch::Tensor& input, torch::ScalarType compute_dtype);

// The exact weight gradient of conv(input, weight) for output gradient `grad_output`.
torch::Tensor ExactWeightGradient(const torch::Tensor& grad_output, const torch::Tensor& input,
                                  const torch::Tensor& weight, const ConvGeometry& geometry);

// What backward needs to estimate dW from a sketch.
struct SketchedInput {
  torch::Tensor sketch;                   // from ComputeSketch
  const ProbeSet* probes = nullptr;       // the same probes, regenerated from the seed
  ProbeMode mode = ProbeMode::kIndependent;
  std::vector<int64_t> input_sizes;       // (B, C_in, spatial...)
  torch::Tensor means;                    // (B, C_in) if the sketch is of the centred input
};

// Tap route (DESIGN.md §1): conv weight-gradient of the probes against G, contracted with the
// sketch. kOrthogonal has no tap route. Result in `compute_dtype`.
torch::Tensor TapWeightGradient(const torch::Tensor& grad_output, const SketchedInput& sketched,
                                const torch::Tensor& weight, const ConvGeometry& geometry,
                                torch::ScalarType compute_dtype);

// Reconstruction route: X_hat = (1/r) Z Z^T X from the sketch, `batch_chunk` samples at a time
// (0 = all), then the exact weight-gradient kernel on X_hat. Result in `compute_dtype`.
torch::Tensor ReconstructWeightGradient(const torch::Tensor& grad_output,
                                        const SketchedInput& sketched, const torch::Tensor& weight,
                                        const ConvGeometry& geometry, int64_t batch_chunk,
                                        torch::ScalarType compute_dtype);

// The probes (r, spatial...) read through each kernel tap: (r, K, S_out), the value at output pixel
// y for tap k being Z[p, y*stride + k*dilation - padding] (zero outside the image).
torch::Tensor UnfoldProbes(const torch::Tensor& probes, const std::vector<int64_t>& kernel,
                           const std::vector<int64_t>& out_spatial, const ConvGeometry& geometry);

// Exact weight gradient of the per-channel mean part of the input: conv(means * 1, W)'s dW.
torch::Tensor MeanWeightGradient(const torch::Tensor& grad_output, const torch::Tensor& means,
                                 const std::vector<int64_t>& input_sizes, const torch::Tensor& weight,
                                 const ConvGeometry& geometry, torch::ScalarType compute_dtype);

// X_hat for samples [begin, end) of the batch, in `compute_dtype` (means added back when centred).
torch::Tensor ReconstructInput(const SketchedInput& sketched, int64_t begin, int64_t end,
                               torch::ScalarType compute_dtype);

}  // namespace xtrain::core
