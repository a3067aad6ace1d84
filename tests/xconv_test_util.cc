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
