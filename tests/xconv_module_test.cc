// XConv2d / XConv3d modules: determinism, RNG isolation, seed stream, state dicts.
#include <gtest/gtest.h>

#include <sstream>

#include "core/memory/cpu_memory_meter.h"
#include "core/xconv/modules.h"
#include "tests/xconv_test_util.h"

namespace xtrain::core {
namespace {

XConv2d MakeLayer(uint64_t seed, int64_t probes = 4) {
  XConvSettings settings;
  settings.probes = probes;
  return XConv2d(XConv2dOptions(3, 5, 3).padding(1).settings(settings).seed(seed));
}

torch::Tensor WeightGrad(XConv2d& layer, const torch::Tensor& x) {
  layer->zero_grad();
  layer->forward(x).pow(2).sum().backward();
  return layer->weight.grad().clone();
}

TEST(XConvDeterminism, SameSeedSameGradientOtherSeedOther) {
  const testing::ConvCase c{"k3", 2, 4, 6, {7, 6}, {3, 3}, {{1}, {1}, {1}, 1}};
  const auto t = testing::MakeTensors(c, torch::kFloat, 1);
  XConvSettings settings;
  settings.probes = 3;
  const auto a = testing::XConvGrads(c, t, settings, 77);
  const auto b = testing::XConvGrads(c, t, settings, 77);
  const auto other = testing::XConvGrads(c, t, settings, 78);
  EXPECT_TRUE(torch::equal(a.weight, b.weight));
  EXPECT_FALSE(torch::equal(a.weight, other.weight));
}

TEST(XConvDeterminism, NeverTouchesTheGlobalGenerator) {
  const testing::ConvCase c{"k3", 2, 4, 6, {7, 6}, {3, 3}, {{1}, {1}, {1}, 1}};
  const auto t = testing::MakeTensors(c, torch::kFloat, 2);
  for (ProbeDistribution dist : {ProbeDistribution::kGaussian, ProbeDistribution::kRademacher,
                                 ProbeDistribution::kOrthogonal}) {
    XConvSettings settings;
    settings.probes = 3;
    settings.distribution = dist;
    torch::manual_seed(123);
    const torch::Tensor expected = torch::randn({4});
    torch::manual_seed(123);
    testing::XConvGrads(c, t, settings, 5);
    EXPECT_TRUE(torch::equal(torch::randn({4}), expected)) << ProbeDistributionName(dist);
  }
  // A module draws its seed stream at construction only.
  XConv2d layer = MakeLayer(9);
  const torch::Tensor x = torch::randn({2, 3, 8, 8});
  torch::manual_seed(7);
  const torch::Tensor expected = torch::randn({4});
  torch::manual_seed(7);
  WeightGrad(layer, x);
  WeightGrad(layer, x);
  EXPECT_TRUE(torch::equal(torch::randn({4}), expected));
}

TEST(XConvModule, FreshProbesEachStepReproducibleFromTheModuleSeed) {
  const torch::Tensor x = torch::randn({2, 3, 8, 8});
  XConv2d a = MakeLayer(42), b = MakeLayer(42);
  {
    torch::NoGradGuard no_grad;
    b->weight.copy_(a->weight);
    b->bias.copy_(a->bias);
  }
  const torch::Tensor a1 = WeightGrad(a, x), a2 = WeightGrad(a, x);
  const torch::Tensor b1 = WeightGrad(b, x), b2 = WeightGrad(b, x);
  EXPECT_FALSE(torch::equal(a1, a2));  // a new probe draw each step
  EXPECT_TRUE(torch::equal(a1, b1));
  EXPECT_TRUE(torch::equal(a2, b2));
  EXPECT_EQ(a->named_buffers()["xconv_step"].item<int64_t>(), 2);
}

TEST(XConvModule, InferenceNeitherAdvancesTheStreamNorKeepsASketch) {
  CpuMemoryMeter& meter = CpuMemoryMeter::Install();
  XConv2d layer = MakeLayer(1);  // 3 -> 5 channels, r = 4
  const torch::Tensor x = torch::randn({4, 3, 8, 8});
  torch::Tensor y;
  int64_t inference_kept = 0;
  {
    torch::NoGradGuard no_grad;
    CpuMemoryMeter::Scope scope(meter);
    y = layer->forward(x);
    inference_kept = scope.current_delta();
  }
  EXPECT_EQ(y.sizes(), torch::IntArrayRef({4, 5, 8, 8}));
  EXPECT_FALSE(y.requires_grad());
  EXPECT_EQ(inference_kept, static_cast<int64_t>(y.nbytes()));  // the output alone: nothing kept for backward
  EXPECT_EQ(layer->named_buffers()["xconv_step"].item<int64_t>(), 0);

  // The same forward in training keeps the sketch (4 x 3 x (4 + 1) floats with centring) and
  // advances the stream: what the inference check above would have caught.
  int64_t training_kept = 0;
  {
    CpuMemoryMeter::Scope scope(meter);
    const torch::Tensor z = layer->forward(x);
    training_kept = scope.current_delta() - static_cast<int64_t>(z.nbytes());
  }
  EXPECT_GE(training_kept, 4 * 3 * (4 + 1) * 4);
  EXPECT_EQ(layer->named_buffers()["xconv_step"].item<int64_t>(), 1);
}

TEST(XConvModule, StateDictMatchesTorchConvAndRoundTrips) {
  XConv2d layer = MakeLayer(3);
  const auto params = layer->named_parameters();
  EXPECT_TRUE(params.contains("weight"));
  EXPECT_TRUE(params.contains("bias"));
  const torch::Tensor x = torch::randn({2, 3, 8, 8});
  WeightGrad(layer, x);

  std::stringstream stream;
  torch::save(layer, stream);
  XConv2d loaded = MakeLayer(999);
  torch::load(loaded, stream);
  EXPECT_TRUE(torch::equal(loaded->weight, layer->weight));
  EXPECT_EQ(loaded->named_buffers()["xconv_step"].item<int64_t>(), 1);
  // Same seed stream position: the next step's probes agree.
  EXPECT_TRUE(torch::equal(WeightGrad(loaded, x), WeightGrad(layer, x)));
}

TEST(XConvModule, CloneIsIndependent) {
  XConv2d layer = MakeLayer(5);
  auto copy = std::dynamic_pointer_cast<XConv2dImpl>(layer->clone());
  ASSERT_TRUE(copy);
  EXPECT_TRUE(torch::equal(copy->weight, layer->weight));
  EXPECT_NE(copy->weight.data_ptr(), layer->weight.data_ptr());
  EXPECT_EQ(copy->settings().probes, 4);
}

TEST(XConvModule, ThreeDimensionalLayerTrains) {
  XConvSettings settings;
  settings.probes = 8;
  XConv3d layer(XConv3dOptions(2, 4, {3, 3, 1}).padding({1, 1, 0}).stride(2).settings(settings).seed(3));
  torch::Tensor y = layer->forward(torch::randn({2, 2, 6, 6, 5}));
  EXPECT_EQ(y.sizes(), torch::IntArrayRef({2, 4, 3, 3, 3}));
  y.sum().backward();
  EXPECT_EQ(layer->weight.grad().sizes(), layer->weight.sizes());
  std::stringstream printed;
  layer->pretty_print(printed);
  EXPECT_NE(printed.str().find("probes=8"), std::string::npos);
}

}  // namespace
}  // namespace xtrain::core
