// The operator on a GPU, where LibTorch has CUDA and a device is present; skipped elsewhere so that
// one test binary passes on CPU-only CI.
#include <gtest/gtest.h>

#include "core/xconv/mask_relu.h"
#include "tests/xconv_test_util.h"

namespace xtrain::core {
namespace {

using testing::ConvCase;
using testing::ConvTensors;

ConvTensors ToCuda(const ConvTensors& t) {
  const torch::Device cuda(torch::kCUDA, 0);
  return {t.input.to(cuda), t.weight.to(cuda), t.bias.defined() ? t.bias.to(cuda) : t.bias,
          t.grad_output.to(cuda)};
}

TEST(XConvCuda, ExactLimitAndRoutesMatchTheCpu_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const ConvCase& c : {ConvCase{"k3_s2_g2", 2, 4, 6, {9, 8}, {3, 3}, {{2}, {1}, {1}, 2}},
                            ConvCase{"3d", 2, 3, 4, {4, 5, 3}, {3, 3, 3}, {{1}, {1}, {1}, 1}}}) {
    const ConvTensors cpu = testing::MakeTensors(c, torch::kDouble, 3);
    const ConvTensors gpu = ToCuda(cpu);
    const auto exact = testing::ExactGrads(c, gpu);
    XConvSettings settings;
    settings.distribution = ProbeDistribution::kOrthogonal;
    settings.probes = c.spatial_size();
    for (GradientRoute route : {GradientRoute::kTap, GradientRoute::kReconstruct}) {
      settings.route = route;
      EXPECT_LT(testing::RelativeError(testing::XConvGrads(c, gpu, settings, 4).weight, exact.weight), 1e-6)
          << c.name;
    }
    // Probes come from the same private CPU generator: the GPU estimate equals the CPU one.
    settings.probes = 5;
    settings.distribution = ProbeDistribution::kRademacher;
    EXPECT_LT(testing::RelativeError(testing::XConvGrads(c, gpu, settings, 8).weight.cpu(),
                                     testing::XConvGrads(c, cpu, settings, 8).weight),
              1e-10)
        << c.name;
  }
}

TEST(XConvCuda, MaskReluAndHalfPrecision_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device cuda(torch::kCUDA, 0);
  torch::Tensor x = torch::randn({3, 5, 7}, cuda).requires_grad_(true);
  torch::Tensor y = x.detach().clone().requires_grad_(true);
  const torch::Tensor g = torch::randn({3, 5, 7}, cuda);
  MaskRelu(x).backward(g);
  torch::relu(y).backward(g);
  EXPECT_TRUE(torch::equal(x.grad(), y.grad()));

  const ConvCase c{"k3", 4, 8, 8, {12, 12}, {3, 3}, {{1}, {1}, {1}, 1}};
  const ConvTensors t32 = ToCuda(testing::MakeTensors(c, torch::kFloat, 4));
  XConvSettings settings;
  settings.probes = 16;
  const auto est32 = testing::XConvGrads(c, t32, settings, 8);
  for (torch::ScalarType dtype : {torch::kHalf, torch::kBFloat16}) {
    const ConvTensors t16{t32.input.to(dtype), t32.weight.to(dtype), t32.bias.to(dtype),
                          t32.grad_output.to(dtype)};
    const auto est16 = testing::XConvGrads(c, t16, settings, 8);
    EXPECT_LT(testing::RelativeError(est16.weight, est32.weight), 2e-2) << c10::toString(dtype);
  }
}

}  // namespace
}  // namespace xtrain::core
