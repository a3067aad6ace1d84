#include "tests/xconv_test_util.h"

#include <ATen/CPUGeneratorImpl.h>

namespace xtrain::core::testing {

ConvTensors MakeTensors(const ConvCase& c, torch::ScalarType dtype, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto options = torch::TensorOptions().dtype(torch::kDouble);
  std::vector<int64_t> input_sizes = {c.batch, c.in_channels};
  input_sizes.insert(input_sizes.end(), c.spatial.begin(), c.spatial.end());
  std::vector<int64_t> weight_sizes = {c.out_channels, c.in_channels / c.geometry.groups};
  weight_sizes.insert(weight_sizes.end(), c.kernel.begin(), c.kernel.end());
  ConvTensors t;
  t.input = at::randn(input_sizes, gen, options).to(dtype);
  t.weight = at::randn(weight_sizes, gen, options).div(3.0).to(dtype);
  if (c.bias) t.bias = at::randn({c.out_channels}, gen, options).to(dtype);
  const ConvGeometry g = ExpandGeometry(c.geometry, c.dims());
  const std::vector<int64_t> no_pad(c.dims(), 0);
  const torch::Tensor y = at::convolution(t.input, t.weight, t.bias, g.stride, g.padding, g.dilation,
                                          false, no_pad, g.groups);
  t.grad_output = at::randn(y.sizes(), gen, options).to(dtype);
  return t;
}

namespace {

ConvGrads Run(const ConvTensors& t, const std::function<torch::Tensor(const torch::Tensor&,
                                                                      const torch::Tensor&,
                                                                      const torch::Tensor&)>& conv) {
  torch::Tensor x = t.input.detach().clone().requires_grad_(true);
  torch::Tensor w = t.weight.detach().clone().requires_grad_(true);
  torch::Tensor b = t.bias.defined() ? t.bias.detach().clone().requires_grad_(true) : torch::Tensor();
  torch::Tensor y = conv(x, w, b);
  y.backward(t.grad_output);
  return ConvGrads{y.detach(), x.grad(), w.grad(), b.defined() ? b.grad() : torch::Tensor()};
}

}  // namespace

ConvGrads ExactGrads(const ConvCase& c, const ConvTensors& t) {
  const ConvGeometry g = ExpandGeometry(c.geometry, c.dims());
  const std::vector<int64_t> no_pad(c.dims(), 0);
  return Run(t, [&](const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
    return at::convolution(x, w, b, g.stride, g.padding, g.dilation, false, no_pad, g.groups);
  });
}

ConvGrads ReferenceGrads(const ConvCase& c, const ConvTensors& t) {
  const ConvGeometry g = ExpandGeometry(c.geometry, c.dims());
  const int64_t dims = c.dims();
  return Run(t, [&](const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
    std::vector<int64_t> pad;  // constant_pad_nd lists the last dimension first
    for (int64_t d = dims - 1; d >= 0; --d) pad.insert(pad.end(), {g.padding[d], g.padding[d]});
    const torch::Tensor padded = torch::constant_pad_nd(x, pad, 0);
    std::vector<int64_t> kernel(w.sizes().begin() + 2, w.sizes().end());
    std::vector<int64_t> out(dims);
    for (int64_t d = 0; d < dims; ++d) {
      out[d] = (x.size(2 + d) + 2 * g.padding[d] - g.dilation[d] * (kernel[d] - 1) - 1) / g.stride[d] + 1;
    }
    const int64_t groups = g.groups;
    const int64_t in_per_group = x.size(1) / groups;
    const int64_t out_per_group = w.size(0) / groups;
    std::vector<torch::Tensor> group_outputs(groups);
    std::vector<int64_t> tap(dims, 0);
    for (bool more = true; more;) {
      torch::Tensor slice = padded;
      torch::Tensor weight = w;
      for (int64_t d = 0; d < dims; ++d) {
        const int64_t begin = tap[d] * g.dilation[d];
        slice = slice.slice(2 + d, begin, begin + g.stride[d] * (out[d] - 1) + 1, g.stride[d]);
        weight = weight.select(2, tap[d]);  // (C_out, C_in / groups) once every dimension is chosen
      }
      for (int64_t gi = 0; gi < groups; ++gi) {
        // (B, C_in/g, out...) x (C_out/g, C_in/g) -> (B, out..., C_out/g) -> (B, C_out/g, out...)
        const torch::Tensor part = torch::tensordot(slice.narrow(1, gi * in_per_group, in_per_group),
                                                    weight.narrow(0, gi * out_per_group, out_per_group), {1}, {1})
                                       .movedim(-1, 1);
        group_outputs[gi] = group_outputs[gi].defined() ? group_outputs[gi] + part : part;
      }
      more = false;
      for (int64_t d = dims - 1; d >= 0 && !more; --d) {
        if (++tap[d] < kernel[d]) {
          more = true;
        } else {
          tap[d] = 0;
        }
      }
    }
    torch::Tensor y = torch::cat(group_outputs, 1);
    if (b.defined()) {
      std::vector<int64_t> shape(dims + 2, 1);
      shape[1] = b.size(0);
      y = y + b.view(shape);
    }
    return y;
  });
}

ConvGrads XConvGrads(const ConvCase& c, const ConvTensors& t, const XConvSettings& settings,
                     uint64_t seed) {
  return Run(t, [&](const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
    return XConvNd(c.dims(), x, w, b, c.geometry, settings, seed);
  });
}

double RelativeError(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor a64 = a.to(torch::kDouble);
  const torch::Tensor b64 = b.to(torch::kDouble);
  return (a64 - b64).norm().item<double>() / b64.norm().item<double>();
}

}  // namespace xtrain::core::testing
