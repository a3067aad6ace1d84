// Statistics of the estimator: unbiasedness, the closed-form variance, and no bias at the borders.
// Tolerances come from the variance (closed form, or the sample's own for modes without one).
#include <gtest/gtest.h>

#include <cmath>

#include "tests/xconv_test_util.h"

namespace xtrain::core {
namespace {

using testing::ConvCase;
using testing::ConvTensors;
using testing::ExactGrads;
using testing::MakeTensors;
using testing::XConvGrads;

// Stride 1, K = 3, zero padding 1 on an 8x8 image: the case where a wrap-around roll was biased.
const ConvCase kSmall{"k3_8x8", 2, 2, 3, {8, 8}, {3, 3}, {{1}, {1}, {1}, 1}};

// Per-entry variance of a single-probe estimate, from M = sum_b u_b v_b^T (DESIGN.md §1):
// Gaussian ||M||_F^2 + tr(M^2); Rademacher the same minus 2 sum_i M_ii^2.
torch::Tensor SingleProbeVariance(const ConvCase& c, const ConvTensors& t, ProbeDistribution dist) {
  const int64_t h = c.spatial[0], w = c.spatial[1], pad = c.geometry.padding[0];
  const int64_t k = c.kernel[0];
  const int64_t s = h * w;
  const torch::Tensor x = t.input.reshape({c.batch, c.in_channels, s});
  const torch::Tensor g = t.grad_output;  // (B, C_out, H, W): stride 1, same size
  torch::Tensor variance = torch::zeros({c.out_channels, c.in_channels, k, k}, torch::kDouble);
  for (int64_t co = 0; co < c.out_channels; ++co) {
    for (int64_t ky = 0; ky < k; ++ky) {
      for (int64_t kx = 0; kx < k; ++kx) {
        // u_b[input pixel] = G[b, co, output pixel] for the output pixel that reads it through tap k.
        torch::Tensor u = torch::zeros({c.batch, s}, torch::kDouble);
        for (int64_t oy = 0; oy < h; ++oy) {
          for (int64_t ox = 0; ox < w; ++ox) {
            const int64_t iy = oy + ky - pad, ix = ox + kx - pad;
            if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
            u.select(1, iy * w + ix).copy_(g.select(1, co).select(1, oy).select(1, ox));
          }
        }
        for (int64_t ci = 0; ci < c.in_channels; ++ci) {
          const torch::Tensor m = torch::matmul(u.t(), x.select(1, ci));  // sum_b u_b v_b^T
          double var = m.pow(2).sum().item<double>() + (m * m.t()).sum().item<double>();
          if (dist == ProbeDistribution::kRademacher) var -= 2 * m.diagonal().pow(2).sum().item<double>();
          variance[co][ci][ky][kx] = var;
        }
      }
    }
  }
  return variance;
}

// N weight-gradient estimates with consecutive seeds, stacked: (N, weight sizes...).
torch::Tensor Estimates(const ConvCase& c, const ConvTensors& t, const XConvSettings& settings,
                        int64_t count, uint64_t first_seed) {
  std::vector<torch::Tensor> all;
  all.reserve(count);
  for (int64_t i = 0; i < count; ++i) {
    all.push_back(XConvGrads(c, t, settings, first_seed + i).weight);
  }
  return torch::stack(all);
}

// Squared error of the mean over the variance the mean should have: E[T] = 1 if unbiased.
double NormalizedError(const torch::Tensor& mean, const torch::Tensor& exact,
                       const torch::Tensor& variance_of_one, int64_t count) {
  return (mean - exact).pow(2).sum().item<double>() /
         (variance_of_one.sum().item<double>() / static_cast<double>(count));
}

TEST(XConvStatistics, UnbiasedWithErrorFallingLikeOneOverSqrtCount) {
  const ConvTensors t = MakeTensors(kSmall, torch::kDouble, 31);
  const torch::Tensor exact = ExactGrads(kSmall, t).weight;
  XConvSettings settings;
  settings.probes = 2;
  settings.distribution = ProbeDistribution::kRademacher;
  settings.center = false;  // the plain estimator, whose variance the closed form gives
  const torch::Tensor variance =
      SingleProbeVariance(kSmall, t, settings.distribution) / static_cast<double>(settings.probes);
  const torch::Tensor est = Estimates(kSmall, t, settings, 1024, 1000);
  double previous_error = 0;
  for (int64_t n : {64, 256, 1024}) {
    const torch::Tensor mean = est.slice(0, 0, n).mean(0);
    const double normalized = NormalizedError(mean, exact, variance, n);
    // sqrt(T) is the error in units of its expected size sigma/sqrt(n): it stays O(1) for every n.
    EXPECT_GT(std::sqrt(normalized), 1.0 / 3) << "n=" << n;
    EXPECT_LT(std::sqrt(normalized), 3.0) << "n=" << n;
    const double error = (mean - exact).norm().item<double>();
    if (previous_error > 0) {
      EXPECT_LT(error, previous_error) << "n=" << n;
    }
    previous_error = error;
  }
}

TEST(XConvStatistics, EveryModeAndDistributionIsUnbiased) {
  const ConvTensors t = MakeTensors(kSmall, torch::kDouble, 32);
  const torch::Tensor exact = ExactGrads(kSmall, t).weight;
  for (ProbeMode mode : {ProbeMode::kIndependent, ProbeMode::kMultiChannel, ProbeMode::kOrthogonal}) {
    for (ProbeDistribution dist : {ProbeDistribution::kGaussian, ProbeDistribution::kRademacher,
                                   ProbeDistribution::kOrthogonal}) {
      for (bool center : {true, false}) {
        XConvSettings settings;
        settings.probes = 4;
        settings.mode = mode;
        settings.distribution = dist;
        settings.center = center;
        const int64_t n = 400;
        const torch::Tensor est = Estimates(kSmall, t, settings, n, 5000);
        const double normalized = NormalizedError(est.mean(0), exact, est.var(0), n);
        EXPECT_LT(std::sqrt(normalized), 3.0)
            << ProbeModeName(mode) << " " << ProbeDistributionName(dist) << " center " << center;
      }
    }
  }
}

// Measured Var * r against the closed forms, entry by entry, within 5 standard errors of the
// sample variance (estimated from the sample's fourth moment).
TEST(XConvStatistics, VarianceMatchesClosedFormAndRademacherIsLower) {
  const ConvTensors t = MakeTensors(kSmall, torch::kDouble, 33);
  double total[2] = {0, 0};
  int index = 0;
  for (ProbeDistribution dist : {ProbeDistribution::kGaussian, ProbeDistribution::kRademacher}) {
    XConvSettings settings;
    settings.probes = 1;
    settings.distribution = dist;
    settings.center = false;
    const int64_t n = 3000;
    const torch::Tensor est = Estimates(kSmall, t, settings, n, 90000 + 7 * index);
    const torch::Tensor formula = SingleProbeVariance(kSmall, t, dist);
    const torch::Tensor centered = est - est.mean(0);
    const torch::Tensor sample_var = centered.pow(2).mean(0);
    const torch::Tensor m4 = centered.pow(4).mean(0);
    const torch::Tensor standard_error = ((m4 - sample_var.pow(2)) / n).sqrt();
    const torch::Tensor z = (sample_var - formula).abs() / standard_error;
    EXPECT_LT(z.max().item<double>(), 5.0) << ProbeDistributionName(dist);
    // Aggregate agreement: the total measured variance is within a few percent of the formula.
    EXPECT_NEAR(sample_var.sum().item<double>() / formula.sum().item<double>(), 1.0, 0.1)
        << ProbeDistributionName(dist);
    total[index++] = formula.sum().item<double>();
  }
  EXPECT_LT(total[1], total[0]);
}

// Centring sketches X - mean: its variance is the closed form with the residual in place of X, and
// on activations with a positive mean (after a ReLU) it is far below the plain estimator's.
TEST(XConvStatistics, CentringFollowsTheFormulaOnTheResidualAndCutsVariance) {
  ConvTensors t = MakeTensors(kSmall, torch::kDouble, 35);
  t.input = torch::relu(t.input) + 0.5;
  ConvTensors residual = t;
  residual.input = t.input - t.input.mean({2, 3}, /*keepdim=*/true);
  XConvSettings settings;
  settings.probes = 1;
  settings.distribution = ProbeDistribution::kRademacher;
  const int64_t n = 3000;
  const torch::Tensor est = Estimates(kSmall, t, settings, n, 40000);
  const torch::Tensor formula = SingleProbeVariance(kSmall, residual, settings.distribution);
  const torch::Tensor centered = est - est.mean(0);
  const torch::Tensor sample_var = centered.pow(2).mean(0);
  const torch::Tensor standard_error =
      ((centered.pow(4).mean(0) - sample_var.pow(2)) / n).sqrt();
  EXPECT_LT(((sample_var - formula).abs() / standard_error).max().item<double>(), 5.0);
  const double plain = SingleProbeVariance(kSmall, t, settings.distribution).sum().item<double>();
  EXPECT_LT(formula.sum().item<double>(), 0.5 * plain);
}

TEST(XConvStatistics, NoBiasAtTheZeroPaddedBorders) {
  // Input non-zero only on the border ring, so every product in dW touches the padding.
  ConvTensors t = MakeTensors(kSmall, torch::kDouble, 34);
  torch::Tensor ring = torch::ones({8, 8}, torch::kDouble);
  ring.slice(0, 1, 7).slice(1, 1, 7).zero_();
  t.input = t.input * ring;
  const torch::Tensor exact = ExactGrads(kSmall, t).weight;
  XConvSettings settings;
  settings.probes = 2;
  settings.distribution = ProbeDistribution::kRademacher;
  settings.center = false;
  const torch::Tensor variance =
      SingleProbeVariance(kSmall, t, settings.distribution) / static_cast<double>(settings.probes);
  const int64_t n = 4096;
  for (GradientRoute route : {GradientRoute::kTap, GradientRoute::kReconstruct}) {
    settings.route = route;
    const torch::Tensor mean = Estimates(kSmall, t, settings, n, 700).mean(0);
    EXPECT_LT(std::sqrt(NormalizedError(mean, exact, variance, n)), 3.0) << GradientRouteName(route);
  }
  // The test sees a border bias: what a roll of the flattened image estimates (taps wrap into the
  // next row and around the image) lies far outside the tolerance above.
  const int64_t side = 8, s_size = side * side;
  const torch::Tensor g = t.grad_output.reshape({kSmall.batch, kSmall.out_channels, s_size});
  const torch::Tensor x = t.input.reshape({kSmall.batch, kSmall.in_channels, s_size});
  torch::Tensor rolled = torch::zeros_like(exact);
  for (int64_t ky = 0; ky < 3; ++ky) {
    for (int64_t kx = 0; kx < 3; ++kx) {
      const torch::Tensor shifted = x.roll({-((ky - 1) * side + (kx - 1))}, {2});
      rolled.select(2, ky).select(2, kx).copy_(torch::einsum("bos,bis->oi", {g, shifted}));
    }
  }
  const double roll_bias = (rolled - exact).norm().item<double>() / exact.norm().item<double>();
  EXPECT_GT(roll_bias, 0.2);
  EXPECT_GT(std::sqrt(NormalizedError(rolled, exact, variance, n)), 6.0);
}

}  // namespace
}  // namespace xtrain::core
