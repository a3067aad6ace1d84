#include "core/xconv/weight_gradient.h"

#include <limits>

#include "core/util/memory_phase.h"

namespace xtrain::core {
namespace {

// A tensor with `sizes` that owns no memory: the weight-gradient kernel reads only the weight's shape.
torch::Tensor ShapeOnly(torch::IntArrayRef sizes, const torch::TensorOptions& options) {
  return torch::zeros({1}, options).expand(sizes);
}

}  // namespace

torch::Tensor UnfoldProbes(const torch::Tensor& probes, const std::vector<int64_t>& kernel,
                           const std::vector<int64_t>& out_spatial, const ConvGeometry& geometry) {
  const int64_t dims = static_cast<int64_t>(kernel.size());
  std::vector<int64_t> pad;  // constant_pad_nd lists the last dimension first
  for (int64_t d = dims - 1; d >= 0; --d) {
    pad.push_back(geometry.padding[d]);
    pad.push_back(geometry.padding[d]);
  }
  const torch::Tensor padded = torch::constant_pad_nd(probes, pad);
  int64_t taps = 1;
  for (int64_t k : kernel) taps *= k;
  std::vector<torch::Tensor> columns;
  columns.reserve(taps);
  std::vector<int64_t> tap(dims, 0);
  for (int64_t t = 0; t < taps; ++t) {
    torch::Tensor view = padded;
    for (int64_t d = 0; d < dims; ++d) {
      const int64_t start = tap[d] * geometry.dilation[d];
      view = view.slice(1 + d, start, start + (out_spatial[d] - 1) * geometry.stride[d] + 1,
                        geometry.stride[d]);
    }
    columns.push_back(view.reshape({probes.size(0), -1}));
    for (int64_t d = dims - 1; d >= 0; --d) {  // next tap, last dimension fastest (weight layout)
      if (++tap[d] < kernel[d]) break;
      tap[d] = 0;
    }
  }
  return torch::stack(columns, 1);
}

RouteCost EstimateRouteCost(const ConvShape& s, int64_t probes, ProbeMode mode) {
  const double r = static_cast<double>(probes);
  const double b = static_cast<double>(s.batch);
  const double cin = static_cast<double>(s.in_channels);
  const double cout = static_cast<double>(s.out_channels);
  const double cin_group = cin / static_cast<double>(s.groups);
  const double k = static_cast<double>(s.kernel_volume);
  const double s_in = static_cast<double>(s.input_spatial);
  const double s_out = static_cast<double>(s.output_spatial);

  RouteCost cost;
  cost.exact = b * cout * cin_group * k * s_out;
  switch (mode) {
    case ProbeMode::kIndependent:
      cost.tap = b * cout * r * k * s_out + cout * k * b * r * cin_group;
      cost.reconstruct = b * cin * r * s_in + cost.exact;
      break;
    case ProbeMode::kMultiChannel:
      cost.tap = r * b * cout * s_out + r * cout * cin_group * k * s_out;
      cost.reconstruct = b * r * cin * s_in + cost.exact;
      break;
    case ProbeMode::kOrthogonal:
      cost.tap = std::numeric_limits<double>::infinity();
      cost.reconstruct = b * r * s_in + cost.exact;
      break;
  }
  return cost;
}

GradientRoute ResolveRoute(GradientRoute requested, const ConvShape& shape, int64_t probes,
                           ProbeMode mode) {
  if (mode == ProbeMode::kOrthogonal) return GradientRoute::kReconstruct;
  if (requested != GradientRoute::kAuto) return requested;
  const RouteCost cost = EstimateRouteCost(shape, probes, mode);
  return kTapCostWeight * cost.tap < cost.reconstruct ? GradientRoute::kTap
                                                      : GradientRoute::kReconstruct;
}

torch::Tensor ChannelMeans(const torch::Tensor& input, torch::ScalarType compute_dtype) {
  return input.reshape({input.size(0), input.size(1), -1}).mean(2, /*keepdim=*/false, compute_dtype);
}

torch::Tensor ComputeSketch(const torch::Tensor& input, const ProbeSet& probes, ProbeMode mode,
                            torch::ScalarType compute_dtype, const torch::Tensor& means) {
  const int64_t batch = input.size(0);
  const int64_t channels = input.size(1);
  const torch::Tensor x = input.to(compute_dtype);
  const torch::Tensor& z = probes.matrix;
  torch::Tensor sketch;
  switch (mode) {
    case ProbeMode::kIndependent:  // E[b, c, p] = sum_x (X[b, c, x] - mu[b, c]) Z[p, x]
      sketch = torch::matmul(x.reshape({batch, channels, -1}), z.t());
      if (means.defined()) sketch.sub_(means.unsqueeze(2) * z.sum(1));
      break;
    case ProbeMode::kMultiChannel:  // E[b, p] = sum_{c, x} (X[b, c, x] - mu[b, c]) Z[p, (c, x)]
      sketch = torch::matmul(x.reshape({batch, -1}), z.t());
      if (means.defined()) {
        sketch.sub_(torch::matmul(means, z.reshape({z.size(0), channels, -1}).sum(2).t()));
      }
      break;
    case ProbeMode::kOrthogonal: {  // E[b, col(c, j)] += sum_x (X[b, c, x] - mu[b, c]) Z[c, j, x]
      const int64_t n = z.size(1);
      torch::Tensor centred = x.reshape({batch, channels, -1});
      if (means.defined()) centred = centred - means.unsqueeze(2);
      torch::Tensor per_channel = torch::bmm(centred.transpose(0, 1),  // (C, B, S)
                                             z.transpose(1, 2));       // (C, S, n)
      torch::Tensor flat = per_channel.permute({1, 0, 2}).reshape({batch, channels * n});
      sketch = torch::zeros({batch, probes.count}, flat.options());
      sketch.index_add_(1, probes.columns, flat);
      break;
    }
  }
  return sketch.to(input.scalar_type());
}

torch::Tensor ExactWeightGradient(const torch::Tensor& grad_output, const torch::Tensor& input,
                                  const torch::Tensor& weight, const ConvGeometry& geometry) {
  const std::vector<int64_t> output_padding(geometry.stride.size(), 0);
  return std::get<1>(at::convolution_backward(
      grad_output, input, ShapeOnly(weight.sizes(), input.options()), c10::nullopt,
      geometry.stride, geometry.padding, geometry.dilation, /*transposed=*/false, output_padding,
      geometry.groups, {false, true, false}));
}

torch::Tensor TapWeightGradient(const torch::Tensor& grad_output, const SketchedInput& sketched,
                                const torch::Tensor& weight, const ConvGeometry& geometry,
                                torch::ScalarType compute_dtype) {
  TORCH_CHECK(sketched.mode != ProbeMode::kOrthogonal,
              "the orthogonal probe mode has no tap route: use the reconstruction route");
  const int64_t r = sketched.probes->count;
  const int64_t batch = sketched.input_sizes[0];
  const int64_t in_channels = sketched.input_sizes[1];
  const int64_t out_channels = weight.size(0);
  const int64_t groups = geometry.groups;
  const std::vector<int64_t> in_spatial = SpatialSizes(sketched.input_sizes);
  const std::vector<int64_t> out_spatial = SpatialSizes(grad_output.sizes().vec());
  const torch::Tensor g = grad_output.to(compute_dtype);
  const torch::Tensor sketch = sketched.sketch.to(compute_dtype);

  if (sketched.mode == ProbeMode::kIndependent) {
    // Centred, the channel means enter as one more probe, all ones, with coefficient r * mu (so the
    // 1/r below leaves mu): one GEMM and one contraction serve both parts.
    torch::Tensor probes = sketched.probes->matrix;  // (rows, S)
    torch::Tensor coefficients = sketch;              // (B, C_in, rows)
    if (sketched.means.defined()) {
      probes = torch::cat({probes, torch::ones({1, probes.size(1)}, probes.options())}, 0);
      coefficients = torch::cat(
          {sketch, sketched.means.to(compute_dtype).unsqueeze(2) * static_cast<double>(r)}, 2);
    }
    const int64_t rows = probes.size(0);
    // T[(p, k), (b, co)] = sum_y G[b, co, y] Z[p, y*stride + k*dilation - padding]: one GEMM of G
    // against the probes unfolded per tap (rows*K x S_out, small), zero outside the image.
    std::vector<int64_t> z_sizes = {rows};
    z_sizes.insert(z_sizes.end(), in_spatial.begin(), in_spatial.end());
    const torch::Tensor columns = UnfoldProbes(probes.reshape(z_sizes), weight.sizes().slice(2).vec(),
                                               out_spatial, geometry);
    const int64_t kernel = columns.size(1);
    MarkMemoryPhase();  // the unfold's copies are gone; the tap buffers follow
    // (rows*K x S_out) @ (S_out x B*C_out): the skinny operand first is the faster GEMM here.
    const torch::Tensor taps =
        torch::mm(columns.reshape({rows * kernel, -1}), g.reshape({batch * out_channels, -1}).t());
    // dW[co, ci, k] = (1/r) sum_{b, p} T[p, k, b, co] E[b, ci, p], within each group.
    const int64_t out_group = out_channels / groups;
    const int64_t in_group = in_channels / groups;
    const torch::Tensor lhs = taps.reshape({rows, kernel, batch, groups, out_group})
                                  .permute({3, 4, 1, 2, 0})
                                  .reshape({groups, out_group * kernel, batch * rows});
    const torch::Tensor rhs = coefficients.reshape({batch, groups, in_group, rows})
                                  .permute({1, 0, 3, 2})
                                  .reshape({groups, batch * rows, in_group});
    return torch::bmm(lhs, rhs)
        .reshape({groups, out_group, kernel, in_group})
        .permute({0, 1, 3, 2})
        .reshape(weight.sizes())
        .div_(static_cast<double>(r));
  }

  // Multichannel: G~[p] = sum_b E[b, p] G[b], then one exact weight-gradient call with the r
  // probes as a batch of C_in-channel images: cost r/B of the exact kernel.
  std::vector<int64_t> gt_sizes = {r, out_channels};
  gt_sizes.insert(gt_sizes.end(), out_spatial.begin(), out_spatial.end());
  std::vector<int64_t> z_sizes = {r, in_channels};
  z_sizes.insert(z_sizes.end(), in_spatial.begin(), in_spatial.end());
  const torch::Tensor g_tilde = torch::matmul(sketch.t(), g.reshape({batch, -1})).reshape(gt_sizes);
  torch::Tensor grad_weight =
      ExactWeightGradient(g_tilde, sketched.probes->matrix.reshape(z_sizes), weight, geometry)
          .div_(static_cast<double>(r));
  MarkMemoryPhase();
  if (sketched.means.defined()) {
    grad_weight.add_(MeanWeightGradient(grad_output, sketched.means, sketched.input_sizes, weight,
                                        geometry, compute_dtype));
  }
  return grad_weight;
}

torch::Tensor MeanWeightGradient(const torch::Tensor& grad_output, const torch::Tensor& means,
                                 const std::vector<int64_t>& input_sizes, const torch::Tensor& weight,
                                 const ConvGeometry& geometry, torch::ScalarType compute_dtype) {
  // dW_mean[co, ci, k] = sum_b mu[b, ci] sum_y G[b, co, y] [y*stride + k*dilation - padding inside]:
  // the tap route with a single all-ones probe, weighted by the means.
  const int64_t batch = input_sizes[0];
  const int64_t in_channels = input_sizes[1];
  const int64_t out_channels = weight.size(0);
  const int64_t groups = geometry.groups;
  std::vector<int64_t> ones_sizes = {1};
  ones_sizes.insert(ones_sizes.end(), input_sizes.begin() + 2, input_sizes.end());
  const torch::Tensor g = grad_output.to(compute_dtype);
  const torch::Tensor inside = UnfoldProbes(torch::ones(ones_sizes, g.options()),
                                            weight.sizes().slice(2).vec(),
                                            SpatialSizes(grad_output.sizes().vec()), geometry);
  const int64_t kernel = inside.size(1);
  const int64_t out_group = out_channels / groups;
  const int64_t in_group = in_channels / groups;
  const torch::Tensor taps = torch::mm(inside.reshape({kernel, -1}), g.reshape({batch * out_channels, -1}).t());
  const torch::Tensor lhs = taps.reshape({kernel, batch, groups, out_group})
                                .permute({2, 3, 0, 1})
                                .reshape({groups, out_group * kernel, batch});
  const torch::Tensor rhs = means.to(compute_dtype).reshape({batch, groups, in_group}).permute({1, 0, 2});
  return torch::bmm(lhs, rhs)
      .reshape({groups, out_group, kernel, in_group})
      .permute({0, 1, 3, 2})
      .reshape(weight.sizes());
}

torch::Tensor ReconstructInput(const SketchedInput& sketched, int64_t begin, int64_t end,
                               torch::ScalarType compute_dtype) {
  const int64_t count = end - begin;
  const int64_t channels = sketched.input_sizes[1];
  const double r = static_cast<double>(sketched.probes->count);
  std::vector<int64_t> sizes = sketched.input_sizes;
  sizes[0] = count;
  const torch::Tensor sketch = sketched.sketch.slice(0, begin, end).to(compute_dtype);
  const torch::Tensor& z = sketched.probes->matrix;
  torch::Tensor x_hat;  // (count, C, S)
  switch (sketched.mode) {
    case ProbeMode::kIndependent:
    case ProbeMode::kMultiChannel:
      x_hat = torch::matmul(sketch, z).div_(r).reshape({count, channels, -1});
      break;
    case ProbeMode::kOrthogonal: {
      const int64_t n = z.size(1);
      const torch::Tensor gathered = sketch.index_select(1, sketched.probes->columns)
                                         .reshape({count, channels, n})
                                         .transpose(0, 1);  // (C, B, n)
      x_hat = torch::bmm(gathered, z).div_(r).transpose(0, 1);
      break;
    }
  }
  if (sketched.means.defined()) {
    x_hat = x_hat + sketched.means.slice(0, begin, end).to(compute_dtype).unsqueeze(2);
  }
  return x_hat.reshape(sizes);
}

torch::Tensor ReconstructWeightGradient(const torch::Tensor& grad_output,
                                        const SketchedInput& sketched, const torch::Tensor& weight,
                                        const ConvGeometry& geometry, int64_t batch_chunk,
                                        torch::ScalarType compute_dtype) {
  const int64_t batch = sketched.input_sizes[0];
  const int64_t chunk = batch_chunk > 0 ? std::min(batch_chunk, batch) : batch;
  const torch::Tensor g = grad_output.to(compute_dtype);
  const torch::Tensor w = ShapeOnly(weight.sizes(), g.options());
  torch::Tensor grad_weight;
  for (int64_t begin = 0; begin < batch; begin += chunk) {
    const int64_t end = std::min(batch, begin + chunk);
    torch::Tensor part = ExactWeightGradient(g.slice(0, begin, end),
                                             ReconstructInput(sketched, begin, end, compute_dtype),
                                             w, geometry);
    grad_weight = grad_weight.defined() ? grad_weight.add_(part) : part;
    MarkMemoryPhase();
  }
  return grad_weight;
}

}  // namespace xtrain::core
