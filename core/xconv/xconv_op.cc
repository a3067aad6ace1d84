#include "core/xconv/xconv_op.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/util/memory_phase.h"
#include "core/xconv/probes.h"
#include "core/xconv/weight_gradient.h"

namespace xtrain::core {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Everything backward needs besides the saved tensors.
struct SavedCall {
  ConvGeometry geometry;
  XConvSettings settings;
  uint64_t seed = 0;
  std::vector<int64_t> input_sizes;
  bool has_bias = false;
};

void Save(const SavedCall& call, AutogradContext* ctx) {
  auto& d = ctx->saved_data;
  d["stride"] = call.geometry.stride;
  d["padding"] = call.geometry.padding;
  d["dilation"] = call.geometry.dilation;
  d["groups"] = call.geometry.groups;
  d["probes"] = call.settings.probes;
  d["mode"] = static_cast<int64_t>(call.settings.mode);
  d["distribution"] = static_cast<int64_t>(call.settings.distribution);
  d["route"] = static_cast<int64_t>(call.settings.route);
  d["chunk"] = call.settings.reconstruct_batch_chunk;
  d["center"] = call.settings.center;
  d["seed"] = static_cast<int64_t>(call.seed);
  d["input_sizes"] = call.input_sizes;
  d["has_bias"] = call.has_bias;
}

SavedCall Load(AutogradContext* ctx) {
  auto& d = ctx->saved_data;
  SavedCall call;
  call.geometry.stride = d["stride"].toIntVector();
  call.geometry.padding = d["padding"].toIntVector();
  call.geometry.dilation = d["dilation"].toIntVector();
  call.geometry.groups = d["groups"].toInt();
  call.settings.probes = d["probes"].toInt();
  call.settings.mode = static_cast<ProbeMode>(d["mode"].toInt());
  call.settings.distribution = static_cast<ProbeDistribution>(d["distribution"].toInt());
  call.settings.route = static_cast<GradientRoute>(d["route"].toInt());
  call.settings.reconstruct_batch_chunk = d["chunk"].toInt();
  call.settings.center = d["center"].toBool();
  call.seed = static_cast<uint64_t>(d["seed"].toInt());
  call.input_sizes = d["input_sizes"].toIntVector();
  call.has_bias = d["has_bias"].toBool();
  return call;
}

torch::Tensor InputGradient(const torch::Tensor& grad, const torch::Tensor& weight,
                            const std::vector<int64_t>& input_sizes, const ConvGeometry& geometry) {
  // The kernel reads only the input's shape; an uninitialised stand-in is the cheapest one it takes
  // (a zero-stride view gets copied into a dense buffer, which costs a pass over memory).
  const torch::Tensor shape_only = torch::empty(input_sizes, grad.options());
  const std::vector<int64_t> no_output_padding(geometry.stride.size(), 0);
  return std::get<0>(at::convolution_backward(grad, shape_only, weight, c10::nullopt, geometry.stride,
                                              geometry.padding, geometry.dilation, /*transposed=*/false,
                                              no_output_padding, geometry.groups, {true, false, false}));
}

// Autograd function: keeps the sketch (and the seed) instead of the input.
class XConvFunction : public torch::autograd::Function<XConvFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input,
                               const torch::Tensor& weight, const c10::optional<torch::Tensor>& bias,
                               const SavedCall& call, bool keep_sketch) {
    const std::vector<int64_t> no_output_padding(call.geometry.stride.size(), 0);
    torch::Tensor output = at::convolution(input, weight, bias.value_or(torch::Tensor()), call.geometry.stride,
                                           call.geometry.padding, call.geometry.dilation,
                                           /*transposed=*/false, no_output_padding,
                                           call.geometry.groups);
    torch::Tensor sketch, means;
    if (keep_sketch) {
      const torch::ScalarType compute = XConvComputeDtype(input.scalar_type());
      const ProbeSet probes = MakeProbes(call.settings, input.size(1), SpatialVolume(input.sizes().vec()),
                                         call.seed, compute, input.device());
      if (call.settings.center) means = ChannelMeans(input, compute);
      sketch = ComputeSketch(input, probes, call.settings.mode, compute, means);
      if (means.defined()) means = means.to(input.scalar_type());
    }
    ctx->save_for_backward({sketch, weight, means});
    Save(call, ctx);
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const SavedCall call = Load(ctx);
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& sketch = saved[0];
    const torch::Tensor& weight = saved[1];
    const torch::Tensor grad = grad_outputs[0].contiguous();
    const ConvGeometry& geometry = call.geometry;

    torch::Tensor grad_input, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0)) {
      // dX is exact and needs only W. Through convolution_backward rather than conv_transpose:
      // LibTorch 1.13's CPU bfloat16 conv_transpose returns wrong values (rel. error ~1.4).
      grad_input = InputGradient(grad, weight, call.input_sizes, geometry);
      MarkMemoryPhase();
    }
    if (ctx->needs_input_grad(1) && sketch.defined()) {
      const torch::ScalarType compute = XConvComputeDtype(sketch.scalar_type());
      const int64_t spatial = SpatialVolume(call.input_sizes);
      const ProbeSet probes = MakeProbes(call.settings, call.input_sizes[1], spatial, call.seed,
                                         compute, sketch.device());
      MarkMemoryPhase();
      const SketchedInput sketched{sketch, &probes, call.settings.mode, call.input_sizes, saved[2]};
      const ConvShape shape{call.input_sizes[0], call.input_sizes[1], weight.size(0), geometry.groups,
                            weight[0][0].numel(), spatial, SpatialVolume(grad.sizes().vec())};
      const GradientRoute route =
          ResolveRoute(call.settings.route, shape, call.settings.probes, call.settings.mode);
      grad_weight = route == GradientRoute::kTap
                        ? TapWeightGradient(grad, sketched, weight, geometry, compute)
                        : ReconstructWeightGradient(grad, sketched, weight, geometry,
                                                    call.settings.reconstruct_batch_chunk, compute);
      grad_weight = grad_weight.to(weight.scalar_type());
      MarkMemoryPhase();
    }
    if (call.has_bias && ctx->needs_input_grad(2)) {
      std::vector<int64_t> reduce = {0};
      for (int64_t d = 2; d < grad.dim(); ++d) reduce.push_back(d);
      grad_bias = grad.sum(reduce, /*keepdim=*/false, XConvComputeDtype(grad.scalar_type()))
                      .to(grad.scalar_type());
    }
    return {grad_input, grad_weight, grad_bias, torch::Tensor(), torch::Tensor()};
  }
};

std::vector<int64_t> KernelSizes(const torch::Tensor& weight) {
  return std::vector<int64_t>(weight.sizes().begin() + 2, weight.sizes().end());
}

// An exact convolution whose input needs no gradient (the first layer): its backward computes only
// dW, which LibTorch's default CPU kernel gets by reordering a copy of G (as large as the layer's
// output), and its forward writes a blocked copy of the output. The unfolded-input kernels need
// C_in*K/C_out of that instead, so they run when that is smaller (same output bit for bit; dW
// summed in another order).
class WeightOnlyConvFunction : public torch::autograd::Function<WeightOnlyConvFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input, const torch::Tensor& weight,
                               const c10::optional<torch::Tensor>& bias, const SavedCall& call) {
    ctx->save_for_backward({input, weight});
    Save(call, ctx);
    // The unfolded-input kernel here too: the default one writes a blocked copy of the output.
    return at::_slow_conv2d_forward(input, weight, KernelSizes(weight), bias, call.geometry.stride,
                                    call.geometry.padding);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const SavedCall call = Load(ctx);
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& weight = saved[1];
    auto [grad_input, grad_weight, grad_bias] =
        at::_slow_conv2d_backward(grad_outputs[0], saved[0], weight, KernelSizes(weight), call.geometry.stride,
                                  call.geometry.padding, {false, ctx->needs_input_grad(1),
                                                          call.has_bias && ctx->needs_input_grad(2)});
    return {torch::Tensor(), grad_weight, grad_bias, torch::Tensor()};
  }
};

// Whether an exact convolution runs WeightOnlyConvFunction: a CPU float 2-D convolution without
// groups or dilation, whose weight but not input needs a gradient, with C_in*K < C_out.
bool WeightOnlyApplies(const torch::Tensor& input, const torch::Tensor& weight, const ConvGeometry& g) {
  if (!torch::GradMode::is_enabled() || !weight.requires_grad() || input.requires_grad()) return false;
  if (!input.device().is_cpu() || input.dim() != 4 || g.groups != 1) return false;
  if (input.scalar_type() != torch::kFloat && input.scalar_type() != torch::kDouble) return false;
  for (int64_t d : g.dilation) {
    if (d != 1) return false;
  }
  return weight[0].numel() < weight.size(0);
}

std::string Join(const std::vector<int64_t>& values) { return absl::StrJoin(values, ", "); }

}  // namespace

torch::ScalarType XConvComputeDtype(torch::ScalarType input_dtype) {
  return input_dtype == torch::kDouble ? torch::kDouble : torch::kFloat;
}

absl::Status ValidateXConvArgs(int64_t dims, const torch::Tensor& input, const torch::Tensor& weight,
                               const torch::Tensor& bias, const ConvGeometry& geometry,
                               const XConvSettings& settings) {
  const std::string name = absl::StrCat("xconv", dims, "d");
  if (!input.defined() || !weight.defined()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": input and weight must be defined tensors"));
  }
  if (input.dim() != dims + 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": input must have ", dims + 2, " dimensions (batch, channels, ", dims,
        " spatial), got ", input.dim(), "; add a batch dimension with unsqueeze(0) for one sample"));
  }
  if (weight.dim() != dims + 2) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": weight must have ", dims + 2,
                                                   " dimensions (out, in/groups, kernel...), got ",
                                                   weight.dim()));
  }
  for (const auto* list : {&geometry.stride, &geometry.padding, &geometry.dilation}) {
    if (list->size() != 1 && static_cast<int64_t>(list->size()) != dims) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": stride, padding and dilation need 1 or ", dims, " values each, got [",
          Join(*list), "]"));
    }
  }
  const ConvGeometry g = ExpandGeometry(geometry, dims);
  for (int64_t i = 0; i < dims; ++i) {
    if (g.stride[i] < 1 || g.dilation[i] < 1) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": stride and dilation must be >= 1, got stride [",
                                                     Join(g.stride), "] dilation [", Join(g.dilation), "]"));
    }
    if (g.padding[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": padding must be >= 0 (zero padding only), got [", Join(g.padding), "]"));
    }
  }
  if (g.groups < 1 || weight.size(0) % g.groups != 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": groups (", g.groups,
                                                   ") must be >= 1 and divide the output channels (",
                                                   weight.size(0), ")"));
  }
  if (input.size(1) != weight.size(1) * g.groups) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": input has ", input.size(1), " channels but weight expects ", weight.size(1), " x ",
        g.groups, " groups = ", weight.size(1) * g.groups, "; make them agree"));
  }
  if (bias.defined() && (bias.dim() != 1 || bias.size(0) != weight.size(0))) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": bias must have shape [", weight.size(0),
                                                   "] (one value per output channel)"));
  }
  for (int64_t i = 0; i < dims; ++i) {
    if (ConvOutputSize(input.size(2 + i), weight.size(2 + i), g.stride[i], g.padding[i],
                       g.dilation[i]) < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ": the input's spatial size ", input.size(2 + i), " in dimension ", i,
          " is smaller than the dilated kernel; use a larger input, more padding or a smaller kernel"));
    }
  }
  if (settings.probes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": probes must be >= 0 (0 = exact), got ", settings.probes));
  }
  if (settings.reconstruct_batch_chunk < 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": reconstruct_batch_chunk must be >= 0"));
  }
  if (settings.mode == ProbeMode::kOrthogonal && settings.route == GradientRoute::kTap) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": the orthogonal probe mode has no tap route; use route 'auto' or 'reconstruct'"));
  }
  const torch::ScalarType dtype = input.scalar_type();
  if (dtype != torch::kFloat && dtype != torch::kDouble && dtype != torch::kBFloat16 &&
      dtype != torch::kHalf) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": input dtype ", c10::toString(dtype),
        " is not supported; use float32, float64 or bfloat16 (float16 on CUDA)"));
  }
  if (dtype == torch::kHalf && input.device().is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": LibTorch has no float16 convolution kernel on the CPU; use bfloat16 or float32 there"));
  }
  if (weight.scalar_type() != dtype || (bias.defined() && bias.scalar_type() != dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, ": input, weight and bias must share one dtype; got input ", c10::toString(dtype),
        ", weight ", c10::toString(weight.scalar_type())));
  }
  if (weight.device() != input.device() || (bias.defined() && bias.device() != input.device())) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": input, weight and bias must be on one device; move them with .to()"));
  }
  return absl::OkStatus();
}

torch::Tensor XConvNd(int64_t dims, const torch::Tensor& input, const torch::Tensor& weight,
                      const torch::Tensor& bias, const ConvGeometry& geometry,
                      const XConvSettings& settings, uint64_t seed) {
  const absl::Status status = ValidateXConvArgs(dims, input, weight, bias, geometry, settings);
  TORCH_CHECK(status.ok(), std::string(status.message()));
  const ConvGeometry g = ExpandGeometry(geometry, dims);
  const std::vector<int64_t> no_output_padding(dims, 0);
  SavedCall call{g, settings, seed, input.sizes().vec(), bias.defined()};
  // Bias travels as an optional: autograd skips an absent one.
  const c10::optional<torch::Tensor> maybe_bias =
      bias.defined() ? c10::optional<torch::Tensor>(bias) : c10::nullopt;
  if (settings.probes == 0) {
    if (WeightOnlyApplies(input, weight, g)) {
      torch::Tensor output = WeightOnlyConvFunction::apply(input, weight, maybe_bias, call);
      MarkForwardOutput(output);
      return output;
    }
    return at::convolution(input, weight, bias, g.stride, g.padding, g.dilation,
                           /*transposed=*/false, no_output_padding, g.groups);
  }
  // The sketch is needed only if the weight gradient will be asked for.
  const bool keep_sketch = torch::GradMode::is_enabled() && weight.requires_grad();
  torch::Tensor output = XConvFunction::apply(input, weight, maybe_bias, call, keep_sketch);
  MarkForwardOutput(output);
  return output;
}

}  // namespace xtrain::core
