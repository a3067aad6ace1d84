#include <gtest/gtest.h>

#include "core/xconv/mask_relu.h"

namespace xtrain::core {
namespace {

TEST(MaskRelu, OutputAndGradientEqualReluForAnySize) {
  torch::manual_seed(1);
  for (int64_t n : {1, 7, 8, 9, 63, 1000, 40001}) {
    for (torch::ScalarType dtype : {torch::kFloat, torch::kDouble, torch::kBFloat16}) {
      torch::Tensor base = torch::randn({n}).to(dtype);
      base.index_put_({0}, 0.0);  // relu'(0) is 0 in both
      torch::Tensor a = base.clone().requires_grad_(true);
      torch::Tensor b = base.clone().requires_grad_(true);
      torch::Tensor grad = torch::randn({n}).to(dtype);
      torch::Tensor ya = MaskRelu(a);
      torch::Tensor yb = torch::relu(b);
      ya.backward(grad);
      yb.backward(grad);
      EXPECT_TRUE(torch::equal(ya, yb)) << n;
      EXPECT_TRUE(torch::equal(a.grad(), b.grad())) << n << " " << c10::toString(dtype);
    }
  }
}

TEST(MaskRelu, KeepsOneBitPerElement) {
  const torch::Tensor x = torch::randn({3, 5, 7});
  const torch::Tensor packed = PackPositiveMask(x);
  EXPECT_EQ(packed.scalar_type(), torch::kUInt8);
  EXPECT_EQ(packed.numel(), (3 * 5 * 7 + 7) / 8);
  const torch::Tensor ones = torch::ones_like(x);
  EXPECT_TRUE(torch::equal(ApplyPackedMask(ones, packed), x.gt(0).to(torch::kFloat)));
}

TEST(MaskRelu, NonContiguousInputAndGradient) {
  torch::manual_seed(2);
  const torch::Tensor base = torch::randn({6, 10}).t();  // a transposed, non-contiguous view
  const torch::Tensor grad = torch::randn({6, 10}).t();
  torch::Tensor x = base.detach().requires_grad_(true);
  torch::Tensor y = base.detach().clone().requires_grad_(true);
  ASSERT_FALSE(x.is_contiguous());
  MaskRelu(x).backward(grad);
  torch::relu(y).backward(grad);
  EXPECT_TRUE(torch::equal(x.grad(), y.grad()));
}

}  // namespace
}  // namespace xtrain::core
