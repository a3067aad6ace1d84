// IndexMaxPool: torch's max pooling forward and gradients, keeping one byte per output.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/memory/cpu_memory_meter.h"
#include "core/xconv/convert.h"
#include "core/xconv/index_max_pool.h"
#include "core/xconv/modules.h"

namespace xtrain::core {
namespace {

PoolGeometry Geometry(int64_t dims, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation,
                      bool ceil_mode) {
  PoolGeometry g;
  g.kernel.assign(dims, kernel);
  g.stride.assign(dims, stride);
  g.padding.assign(dims, padding);
  g.dilation.assign(dims, dilation);
  g.ceil_mode = ceil_mode;
  return g;
}

torch::Tensor TorchPool(const torch::Tensor& x, const PoolGeometry& g) {
  return g.kernel.size() == 2 ? torch::max_pool2d(x, g.kernel, g.stride, g.padding, g.dilation, g.ceil_mode)
                              : torch::max_pool3d(x, g.kernel, g.stride, g.padding, g.dilation, g.ceil_mode);
}

struct Case {
  int64_t dims, kernel, stride, padding, dilation;
  bool ceil_mode;
};

class IndexMaxPoolGeometry : public ::testing::TestWithParam<Case> {};

// Same output and the same input gradient, bit for bit, as torch's pooling (the CPU loop adds the
// output gradients in torch's order), for float, double and (2-D) bfloat16.
TEST_P(IndexMaxPoolGeometry, OutputAndGradientEqualTorch) {
  const Case c = GetParam();
  const PoolGeometry g = Geometry(c.dims, c.kernel, c.stride, c.padding, c.dilation, c.ceil_mode);
  torch::manual_seed(3);
  std::vector<int64_t> sizes = {2, 3};
  for (int64_t i = 0; i < c.dims; ++i) sizes.push_back(c.dims == 2 ? 11 + i : 7 + i);
  for (torch::ScalarType dtype : {torch::kFloat, torch::kDouble, torch::kBFloat16}) {
    if (c.dims == 3 && dtype == torch::kBFloat16) continue;  // LibTorch 1.13 has no bfloat16 3-D pool on CPU
    const torch::Tensor base = torch::randn(sizes).to(dtype);
    torch::Tensor a = base.clone().requires_grad_(true);
    torch::Tensor b = base.clone().requires_grad_(true);
    const torch::Tensor ya = IndexMaxPooling(a, g);
    const torch::Tensor yb = TorchPool(b, g);
    ASSERT_EQ(ya.sizes(), yb.sizes());
    EXPECT_TRUE(torch::equal(ya, yb)) << c10::toString(dtype);
    const torch::Tensor grad = torch::randn(yb.sizes()).to(dtype);
    ya.backward(grad);
    yb.backward(grad);
    EXPECT_TRUE(torch::equal(a.grad(), b.grad())) << c10::toString(dtype);
  }
}

// Ties, NaNs and all -inf windows (with padding): the same element as torch's, so the same gradient.
TEST(IndexMaxPool, TiesNanAndInfinityPickTorchsElement) {
  const PoolGeometry g = Geometry(2, 3, 2, 1, 1, true);
  torch::Tensor base = torch::randint(0, 3, {2, 3, 9, 9}).to(torch::kFloat);  // many ties
  base.index_put_({0, 0, 0, 0}, std::nan(""));
  base.index_put_({0, 1, 4, 5}, std::nan(""));
  base.index_put_({0, 1, 4, 6}, std::nan(""));
  base.index_put_({1, 2}, -std::numeric_limits<float>::infinity());
  torch::Tensor a = base.clone().requires_grad_(true);
  torch::Tensor b = base.clone().requires_grad_(true);
  const torch::Tensor ya = IndexMaxPooling(a, g);
  const torch::Tensor yb = TorchPool(b, g);
  EXPECT_TRUE(torch::equal(ya.isnan(), yb.isnan()));
  EXPECT_TRUE(torch::equal(ya.nan_to_num(0), yb.nan_to_num(0)));
  const torch::Tensor grad = torch::randn(yb.sizes());
  ya.backward(grad);
  yb.backward(grad);
  EXPECT_TRUE(torch::equal(a.grad(), b.grad()));
}

// The tensor-op path (what a GPU runs) gives the CPU loop's gradient.
TEST_P(IndexMaxPoolGeometry, GenericBackwardEqualsTheCpuLoop) {
  const Case c = GetParam();
  const PoolGeometry g = Geometry(c.dims, c.kernel, c.stride, c.padding, c.dilation, c.ceil_mode);
  torch::manual_seed(4);
  std::vector<int64_t> sizes = {2, 2};
  for (int64_t i = 0; i < c.dims; ++i) sizes.push_back(9 + i);
  const torch::Tensor x = torch::randn(sizes, torch::kDouble);
  torch::Tensor output, indices;
  std::tie(output, indices) = c.dims == 2 ? torch::max_pool2d_with_indices(x, g.kernel, g.stride, g.padding,
                                                                             g.dilation, g.ceil_mode)
                                          : torch::max_pool3d_with_indices(x, g.kernel, g.stride, g.padding,
                                                                             g.dilation, g.ceil_mode);
  const torch::Tensor offsets = WindowOffsets(indices, x.sizes(), g);
  EXPECT_EQ(offsets.scalar_type(), torch::kUInt8);
  EXPECT_EQ(offsets.sizes(), output.sizes());
  const torch::Tensor grad = torch::randn(output.sizes(), torch::kDouble);
  const torch::Tensor packed = PackOffsets(offsets, OffsetBits(g));
  const torch::Tensor loop = IndexMaxPoolBackward(grad, packed, x.sizes(), g, /*generic=*/false);
  const torch::Tensor ops = IndexMaxPoolBackward(grad, packed, x.sizes(), g, /*generic=*/true);
  EXPECT_TRUE(torch::allclose(loop, ops, 1e-12, 1e-12));
}

INSTANTIATE_TEST_SUITE_P(Shapes, IndexMaxPoolGeometry,
                         ::testing::Values(Case{2, 2, 2, 0, 1, false}, Case{2, 3, 2, 1, 1, true},
                                           Case{2, 3, 1, 1, 1, false}, Case{2, 2, 1, 0, 2, false},
                                           Case{2, 2, 3, 1, 1, true},  // ceil mode drops a window in padding
                                           Case{3, 2, 2, 0, 1, false}, Case{3, 3, 2, 1, 1, true}));

// What stays alive after the forward of relu -> pool: torch keeps the ReLU output and int64
// indices; the index pool keeps one byte per output (the ReLU's input is a leaf here, and the
// ReLU keeps its output only for torch's pool).
TEST(IndexMaxPool, KeepsOneBytePerOutput) {
  CpuMemoryMeter& meter = CpuMemoryMeter::Install();
  const PoolGeometry g = Geometry(2, 2, 2, 0, 1, false);
  const torch::Tensor x = torch::randn({4, 8, 32, 32}).requires_grad_(true);
  const int64_t outputs = 4 * 8 * 16 * 16;
  auto kept = [&](auto pool) {
    CpuMemoryMeter::Scope scope(meter);
    torch::Tensor y = pool(x * 2);  // the product is an intermediate the pool may keep
    const int64_t bytes = scope.current_delta() - y.numel() * 4;
    y.sum().backward();
    return bytes;
  };
  const int64_t lean = kept([&](const torch::Tensor& t) { return IndexMaxPooling(t, g); });
  const int64_t exact = kept([&](const torch::Tensor& t) { return TorchPool(t, g); });
  EXPECT_EQ(lean, outputs * 2 / 8);               // 2-bit window offsets (2 x 2 windows)
  EXPECT_EQ(exact, x.numel() * 4 + outputs * 8);  // the input and int64 indices
}

TEST(IndexMaxPool, OffsetsPackToTheirBits) {
  EXPECT_EQ(OffsetBits(2), 1);
  EXPECT_EQ(OffsetBits(4), 2);
  EXPECT_EQ(OffsetBits(9), 4);
  EXPECT_EQ(OffsetBits(27), 8);
  for (int bits : {1, 2, 4, 8}) {
    const torch::Tensor offsets = torch::randint(0, 1 << bits, {3, 37}).to(torch::kUInt8);
    const torch::Tensor packed = PackOffsets(offsets, bits);
    EXPECT_EQ(packed.numel(), (3 * 37 * bits + 7) / 8) << bits;
    const uint8_t* p = packed.data_ptr<uint8_t>();
    const torch::Tensor flat = offsets.reshape({-1});
    for (int64_t i = 0; i < flat.numel(); ++i) {
      const int per_byte = 8 / bits;
      ASSERT_EQ((p[i / per_byte] >> ((i % per_byte) * bits)) & ((1 << bits) - 1), flat[i].item<int>()) << bits << " " << i;
    }
  }
}

TEST(IndexMaxPool, NoGradKeepsNothingAndUnbatchedInputWorks) {
  IndexMaxPool pool(Geometry(2, 2, 2, 0, 1, false));
  const torch::Tensor x = torch::randn({3, 8, 8});
  EXPECT_TRUE(torch::equal(pool->forward(x), torch::max_pool2d(x, 2, 2)));
  torch::NoGradGuard no_grad;
  const torch::Tensor y = pool->forward(x.unsqueeze(0).requires_grad_(true));
  EXPECT_FALSE(y.requires_grad());
}

TEST(IndexMaxPool, RejectsWindowsOverOneByteAndWrongRanks) {
  const torch::Tensor x = torch::randn({1, 1, 40, 40}).requires_grad_(true);
  EXPECT_THROW(IndexMaxPooling(x, Geometry(2, 17, 17, 0, 1, false)), c10::Error);
  EXPECT_THROW(IndexMaxPooling(torch::randn({4, 4}), Geometry(2, 2, 2, 0, 1, false)), c10::Error);
}

// Convert swaps max pools with lean layers on, leaves them (and windows over 256) otherwise.
TEST(IndexMaxPool, ConvertSwapsMaxPools) {
  namespace nn = torch::nn;
  nn::Sequential net(nn::Conv2d(nn::Conv2dOptions(1, 4, 3).padding(1)), nn::ReLU(), nn::MaxPool2d(2),
                     nn::MaxPool2d(nn::MaxPool2dOptions(17)), nn::MaxPool3d(2));
  ConvertOptions options;
  options.settings.probes = 0;
  auto result = Convert(net.ptr(), options);
  ASSERT_TRUE(result.ok()) << result.status();
  auto seq = std::dynamic_pointer_cast<nn::SequentialImpl>(result->module);
  EXPECT_TRUE(std::dynamic_pointer_cast<IndexMaxPoolImpl>(seq->ptr(2)));
  EXPECT_TRUE(std::dynamic_pointer_cast<nn::MaxPool2dImpl>(seq->ptr(3)));  // 289-element window
  auto pool3 = std::dynamic_pointer_cast<IndexMaxPoolImpl>(seq->ptr(4));
  ASSERT_TRUE(pool3);
  EXPECT_EQ(pool3->geometry().kernel, std::vector<int64_t>({2, 2, 2}));

  options.lean_layers = false;
  auto kept = Convert(net.ptr(), options);
  ASSERT_TRUE(kept.ok()) << kept.status();
  auto kept_seq = std::dynamic_pointer_cast<nn::SequentialImpl>(kept->module);
  EXPECT_TRUE(std::dynamic_pointer_cast<nn::MaxPool2dImpl>(kept_seq->ptr(2)));
}

}  // namespace
}  // namespace xtrain::core
