// Exact limit (r = S with orthogonal probes), exact forward/dX/db, and agreement of the two routes.
#include <gtest/gtest.h>

#include "core/memory/cpu_memory_meter.h"
#include "core/xconv/weight_gradient.h"
#include "core/xconv/xconv_op.h"
#include "tests/xconv_test_util.h"

namespace xtrain::core {
namespace {

using testing::ConvCase;
using testing::ExactGrads;
using testing::MakeTensors;
using testing::ReferenceGrads;
using testing::RelativeError;
using testing::XConvGrads;

std::vector<ConvCase> GeometryCases() {
  return {
      {"k1", 2, 4, 6, {7, 6}, {1, 1}, {{1}, {0}, {1}, 1}},
      {"k3", 2, 4, 6, {7, 6}, {3, 3}, {{1}, {1}, {1}, 1}},
      {"k5", 2, 4, 6, {7, 6}, {5, 5}, {{1}, {2}, {1}, 1}},
      {"k3_stride2", 2, 4, 6, {7, 6}, {3, 3}, {{2}, {1}, {1}, 1}},
      {"k5_stride2_nopad", 2, 4, 6, {9, 8}, {5, 5}, {{2}, {0}, {1}, 1}},
      {"k3_dilation2", 2, 4, 6, {7, 6}, {3, 3}, {{1}, {2}, {2}, 1}},
      {"k3_groups2", 2, 4, 6, {7, 6}, {3, 3}, {{1}, {1}, {1}, 2}},
      {"k3x5_nonsquare", 2, 4, 6, {7, 6}, {3, 5}, {{1, 2}, {1, 2}, {1, 1}, 1}},
      {"k3_nobias", 2, 4, 6, {7, 6}, {3, 3}, {{1}, {1}, {1}, 1}, false},
      {"3d_k3", 2, 3, 4, {4, 5, 3}, {3, 3, 3}, {{1}, {1}, {1}, 1}},
      {"3d_k3_stride2_groups3", 2, 3, 6, {5, 4, 4}, {3, 3, 3}, {{2, 1, 2}, {1}, {1}, 3}},
      {"3d_k1x3x5_dilation", 2, 3, 4, {4, 7, 8}, {1, 3, 5}, {{1}, {0, 2, 2}, {1, 2, 1}, 1}},
  };
}

struct ModeRoute {
  ProbeMode mode;
  GradientRoute route;
};

class ExactLimitTest : public ::testing::TestWithParam<ConvCase> {};

// r equal to the probed dimension with orthogonal probes makes Z Z^T / r the identity.
TEST_P(ExactLimitTest, OrthogonalProbesAtFullRankGiveExactWeightGradient) {
  const ConvCase& c = GetParam();
  const auto tensors = MakeTensors(c, torch::kDouble, 11);
  const auto exact = ExactGrads(c, tensors);
  const int64_t s = c.spatial_size();
  for (const ModeRoute& mr : std::vector<ModeRoute>{
           {ProbeMode::kIndependent, GradientRoute::kTap},
           {ProbeMode::kIndependent, GradientRoute::kReconstruct},
           {ProbeMode::kMultiChannel, GradientRoute::kTap},
           {ProbeMode::kMultiChannel, GradientRoute::kReconstruct},
           {ProbeMode::kOrthogonal, GradientRoute::kReconstruct}}) {
    XConvSettings settings;
    settings.mode = mr.mode;
    settings.route = mr.route;
    settings.distribution = ProbeDistribution::kOrthogonal;
    settings.probes = mr.mode == ProbeMode::kIndependent ? s : c.in_channels * s;
    const auto est = XConvGrads(c, tensors, settings, 5);
    EXPECT_LT(RelativeError(est.weight, exact.weight), 1e-6)
        << c.name << " mode " << ProbeModeName(mr.mode) << " route " << GradientRouteName(mr.route);
  }
}

// Output, dX and db do not depend on the probes: they equal the exact conv's to rounding.
TEST_P(ExactLimitTest, ForwardInputAndBiasGradientsAreExact) {
  const ConvCase& c = GetParam();
  const auto tensors = MakeTensors(c, torch::kDouble, 12);
  const auto exact = ExactGrads(c, tensors);
  XConvSettings settings;
  settings.probes = 3;
  for (ProbeMode mode : {ProbeMode::kIndependent, ProbeMode::kMultiChannel, ProbeMode::kOrthogonal}) {
    settings.mode = mode;
    const auto est = XConvGrads(c, tensors, settings, 9);
    EXPECT_LT(RelativeError(est.output, exact.output), 1e-12) << c.name;
    EXPECT_LT(RelativeError(est.input, exact.input), 1e-12) << c.name;
    if (c.bias) {
      EXPECT_LT(RelativeError(est.bias, exact.bias), 1e-12) << c.name;
    }
    EXPECT_EQ(est.input.sizes(), tensors.input.sizes());
  }
}

// The tap and reconstruction routes compute the same estimate from the same probes.
TEST_P(ExactLimitTest, TapAndReconstructionRoutesAgree) {
  const ConvCase& c = GetParam();
  const auto tensors = MakeTensors(c, torch::kDouble, 13);
  for (ProbeMode mode : {ProbeMode::kIndependent, ProbeMode::kMultiChannel}) {
    for (ProbeDistribution dist : {ProbeDistribution::kGaussian, ProbeDistribution::kRademacher}) {
      XConvSettings settings;
      settings.probes = 5;
      settings.mode = mode;
      settings.distribution = dist;
      settings.center = dist == ProbeDistribution::kGaussian;  // both estimators
      settings.route = GradientRoute::kTap;
      const auto tap = XConvGrads(c, tensors, settings, 21);
      settings.route = GradientRoute::kReconstruct;
      const auto rec = XConvGrads(c, tensors, settings, 21);
      settings.reconstruct_batch_chunk = 1;
      const auto chunked = XConvGrads(c, tensors, settings, 21);
      EXPECT_LT(RelativeError(tap.weight, rec.weight), 1e-10) << c.name << " " << ProbeModeName(mode);
      EXPECT_LT(RelativeError(chunked.weight, rec.weight), 1e-12) << c.name;
    }
  }
}

// The reference the next test relies on agrees with LibTorch's convolution to rounding.
TEST_P(ExactLimitTest, ReferenceConvolutionAgreesWithLibTorch) {
  const ConvCase& c = GetParam();
  const auto tensors = MakeTensors(c, torch::kDouble, 14);
  const auto reference = ReferenceGrads(c, tensors);
  const auto torch_grads = ExactGrads(c, tensors);
  EXPECT_LT(RelativeError(reference.output, torch_grads.output), 1e-12) << c.name;
  EXPECT_LT(RelativeError(reference.input, torch_grads.input), 1e-12) << c.name;
  EXPECT_LT(RelativeError(reference.weight, torch_grads.weight), 1e-12) << c.name;
}

// probes = 0 with an input that needs a gradient is the exact convolution: output, dX, dW and db
// equal the convolution's definition (computed without any convolution kernel) to rounding.
TEST_P(ExactLimitTest, ZeroProbesIsTheExactConvolution) {
  const ConvCase& c = GetParam();
  const auto tensors = MakeTensors(c, torch::kDouble, 3);
  XConvSettings settings;
  settings.probes = 0;
  const auto est = XConvGrads(c, tensors, settings, 1);
  const auto reference = ReferenceGrads(c, tensors);
  ASSERT_TRUE(est.input.defined());
  EXPECT_LT(RelativeError(est.output, reference.output), 1e-12) << c.name;
  EXPECT_LT(RelativeError(est.input, reference.input), 1e-12) << c.name;
  EXPECT_LT(RelativeError(est.weight, reference.weight), 1e-12) << c.name;
  if (c.bias) {
    EXPECT_LT(RelativeError(est.bias, reference.bias), 1e-12) << c.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Geometries, ExactLimitTest, ::testing::ValuesIn(GeometryCases()),
                         [](const auto& info) { return info.param.name; });

// A first layer (input without gradient, C_in*K < C_out) runs the unfolded-input kernels: the same
// output, dW and db to rounding (another kernel sums in another order, which differs by CPU), no
// input gradient, and less work space than mkldnn's blocked copies of the output and of G.
TEST(XConvExact, FirstLayerRunsTheWeightOnlyKernels) {
  CpuMemoryMeter& meter = CpuMemoryMeter::Install();
  torch::manual_seed(5);
  const ConvGeometry g{{1}, {1}, {1}, 1};
  const torch::Tensor x = torch::randn({32, 1, 28, 28});
  const torch::Tensor grad = torch::randn({32, 32, 28, 28});
  XConvSettings exact;
  exact.probes = 0;
  // Two threads, as jobs and the memory model's calibration run (LibTorch picks kernels by threads).
  struct Threads {
    int saved = at::get_num_threads();
    Threads() { at::set_num_threads(2); }
    ~Threads() { at::set_num_threads(saved); }
  } threads;
  for (bool with_bias : {true, false}) {
    torch::Tensor w1 = torch::randn({32, 1, 3, 3}).requires_grad_(true);
    torch::Tensor w2 = w1.detach().clone().requires_grad_(true);
    torch::Tensor b1 = with_bias ? torch::randn({32}).requires_grad_(true) : torch::Tensor();
    torch::Tensor b2 = with_bias ? b1.detach().clone().requires_grad_(true) : torch::Tensor();
    int64_t lean_peak = 0, torch_peak = 0;
    torch::Tensor y;
    {
      CpuMemoryMeter::Scope scope(meter);
      y = XConvNd(2, x, w1, b1, g, exact, 0);
      y.backward(grad);
      lean_peak = scope.peak_delta();
    }
    ASSERT_TRUE(y.grad_fn());
    EXPECT_NE(y.grad_fn()->name().find("WeightOnlyConv"), std::string::npos) << y.grad_fn()->name();
    EXPECT_LT(RelativeError(y, torch::conv2d(x, w2, b2, 1, 1)), 1e-6);
    {
      CpuMemoryMeter::Scope scope(meter);
      torch::conv2d(x, w2, b2, 1, 1).backward(grad);
      torch_peak = scope.peak_delta();
    }
    EXPECT_LT(RelativeError(w1.grad(), w2.grad()), 1e-5);
    if (with_bias) {
      EXPECT_LT(RelativeError(b1.grad(), b2.grad()), 1e-5);
    }
    EXPECT_LT(lean_peak, torch_peak) << "weight-only " << lean_peak << " bytes, mkldnn " << torch_peak;
  }
  // An input that needs a gradient takes LibTorch's kernel (dX is computed).
  const torch::Tensor xg = x.clone().requires_grad_(true);
  const torch::Tensor w = torch::randn({32, 1, 3, 3}).requires_grad_(true);
  torch::Tensor y = XConvNd(2, xg, w, torch::Tensor(), g, exact, 0);
  EXPECT_EQ(y.grad_fn()->name().find("WeightOnlyConv"), std::string::npos);
  y.backward(grad);
  EXPECT_TRUE(xg.grad().defined());
}

// float32 and bfloat16 run; bfloat16 keeps a bf16 sketch but accumulates in fp32.
TEST(XConvExact, ReducedPrecisionMatchesFloat32Estimate) {
  const ConvCase c{"k3", 4, 8, 8, {12, 12}, {3, 3}, {{1}, {1}, {1}, 1}};
  const auto t32 = MakeTensors(c, torch::kFloat, 4);
  testing::ConvTensors t16{t32.input.to(torch::kBFloat16), t32.weight.to(torch::kBFloat16),
                           t32.bias.to(torch::kBFloat16), t32.grad_output.to(torch::kBFloat16)};
  XConvSettings settings;
  settings.probes = 16;
  const auto est32 = XConvGrads(c, t32, settings, 8);
  const auto est16 = XConvGrads(c, t16, settings, 8);
  EXPECT_EQ(est16.weight.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(est16.input.scalar_type(), torch::kBFloat16);
  // bf16 has an 8-bit mantissa: inputs rounded by ~0.4% each give a few 1e-3 relative error.
  EXPECT_LT(RelativeError(est16.weight, est32.weight), 2e-2);
  EXPECT_LT(RelativeError(est16.output, est32.output), 2e-2);
  EXPECT_LT(RelativeError(est16.input, est32.input), 2e-2);
}

}  // namespace
}  // namespace xtrain::core

namespace xtrain::core {
namespace {

// The auto rule: tap for few probes per channel, reconstruction when r exceeds C_in by far, and
// never tap for the orthogonal mode (it has none).
TEST(XConvRoute, AutoPicksByModelledCost) {
  const ConvShape layer{64, 64, 64, 1, 9, 32 * 32, 32 * 32};
  EXPECT_EQ(ResolveRoute(GradientRoute::kAuto, layer, 8, ProbeMode::kIndependent), GradientRoute::kTap);
  EXPECT_EQ(ResolveRoute(GradientRoute::kAuto, layer, 512, ProbeMode::kIndependent),
            GradientRoute::kReconstruct);
  EXPECT_EQ(ResolveRoute(GradientRoute::kAuto, layer, 8, ProbeMode::kOrthogonal), GradientRoute::kReconstruct);
  EXPECT_EQ(ResolveRoute(GradientRoute::kReconstruct, layer, 8, ProbeMode::kIndependent),
            GradientRoute::kReconstruct);
  // Multichannel's tap route is an exact weight-gradient call with batch r: cheap while r < B.
  EXPECT_EQ(ResolveRoute(GradientRoute::kAuto, layer, 8, ProbeMode::kMultiChannel), GradientRoute::kTap);
  const RouteCost cost = EstimateRouteCost(layer, 8, ProbeMode::kIndependent);
  EXPECT_LT(cost.tap, cost.exact);
  EXPECT_GT(cost.reconstruct, cost.exact);
}

}  // namespace
}  // namespace xtrain::core
