// Convert swaps torch convolutions and ReLUs in a module tree and keeps the weights.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/xconv/convert.h"
#include "core/xconv/modules.h"

namespace xtrain::core {
namespace {

namespace nn = torch::nn;

nn::Sequential SmallNet() {
  return nn::Sequential(nn::Conv2d(nn::Conv2dOptions(3, 8, 3).padding(1)), nn::ReLU(),
                        nn::Conv2d(nn::Conv2dOptions(8, 8, 3).padding(1).bias(false)), nn::ReLU(),
                        nn::Conv2d(nn::Conv2dOptions(8, 4, 1)));
}

ConvertOptions Exactly(int64_t probes) {
  ConvertOptions options;
  options.settings.probes = probes;
  return options;
}

TEST(Convert, SwapsConvsAndRelusAndKeepsTheSameWeights) {
  torch::manual_seed(0);
  nn::Sequential net = SmallNet();
  const torch::Tensor x = torch::randn({2, 3, 10, 10});
  const torch::Tensor before = net->forward(x);
  const auto old_params = net->parameters();

  auto result = Convert(net.ptr(), Exactly(4));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(result->converted, ::testing::ElementsAre("0", "1", "2", "3", "4"));
  auto converted = std::dynamic_pointer_cast<nn::SequentialImpl>(result->module);
  ASSERT_TRUE(converted);
  EXPECT_TRUE(std::dynamic_pointer_cast<XConv2dImpl>(converted->ptr(0)));
  EXPECT_TRUE(std::dynamic_pointer_cast<MaskReLUImpl>(converted->ptr(1)));
  EXPECT_FALSE(std::dynamic_pointer_cast<XConv2dImpl>(converted->ptr(2))->bias.defined());

  // The very same parameter tensors, so an optimizer built before conversion still applies.
  const auto new_params = converted->parameters();
  ASSERT_EQ(new_params.size(), old_params.size());
  for (size_t i = 0; i < new_params.size(); ++i) {
    EXPECT_TRUE(new_params[i].is_same(old_params[i]));
  }
  EXPECT_TRUE(torch::allclose(converted->forward(x), before));
  converted->forward(x).sum().backward();
  for (const auto& p : new_params) EXPECT_TRUE(p.grad().defined());
}

TEST(Convert, PerLayerSettingsKeepExactAndRelus) {
  nn::Sequential net = SmallNet();
  ConvertOptions options = Exactly(4);
  options.per_layer["2"].probes = 16;
  options.keep_exact = {"4"};
  options.lean_layers = false;
  auto result = Convert(net.ptr(), options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_THAT(result->converted, ::testing::ElementsAre("0", "2"));
  auto seq = std::dynamic_pointer_cast<nn::SequentialImpl>(result->module);
  EXPECT_EQ(std::dynamic_pointer_cast<XConv2dImpl>(seq->ptr(0))->settings().probes, 4);
  EXPECT_EQ(std::dynamic_pointer_cast<XConv2dImpl>(seq->ptr(2))->settings().probes, 16);
  EXPECT_TRUE(std::dynamic_pointer_cast<nn::ReLUImpl>(seq->ptr(1)));
  EXPECT_TRUE(std::dynamic_pointer_cast<nn::Conv2dImpl>(seq->ptr(4)));
}

// A custom module that reaches its children through the registry.
struct Block : nn::Module {
  Block() {
    register_module("conv", nn::Conv3d(nn::Conv3dOptions(2, 4, 3).padding(nn::Conv3dOptions::padding_t(torch::kSame))));
    register_module("body", nn::Sequential(nn::Conv3d(nn::Conv3dOptions(4, 4, 1)), nn::ReLU()));
  }
};

TEST(Convert, CustomModuleChildrenAndSamePadding) {
  auto block = std::make_shared<Block>();
  auto result = Convert(block, Exactly(2));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->module, block);  // swapped in place
  EXPECT_THAT(result->converted, ::testing::ElementsAre("conv", "body.0", "body.1"));
  auto conv = std::dynamic_pointer_cast<XConv3dImpl>(block->named_children()["conv"]);
  ASSERT_TRUE(conv);
  EXPECT_EQ((*conv->options.padding())[0], 1);  // 'same' with K=3 is padding 1
  auto body = std::dynamic_pointer_cast<nn::SequentialImpl>(block->named_children()["body"]);
  ASSERT_TRUE(body);
  const torch::Tensor y = body->forward(conv->forward(torch::randn({1, 2, 5, 5, 5})));
  EXPECT_EQ(y.sizes(), torch::IntArrayRef({1, 4, 5, 5, 5}));
}

TEST(Convert, RefusesWhatXConvCannotRunUnlessKeptExact) {
  nn::Sequential net(nn::Conv2d(nn::Conv2dOptions(3, 4, 3).padding(1).padding_mode(torch::kReflect)));
  auto result = Convert(net.ptr(), Exactly(4));
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(result.status().message()), ::testing::HasSubstr("keep_exact"));
  ConvertOptions keep = Exactly(4);
  keep.keep_exact = {"0"};
  EXPECT_TRUE(Convert(net.ptr(), keep).ok());

  ConvertOptions negative = Exactly(-1);
  EXPECT_EQ(Convert(net.ptr(), negative).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(Convert(nullptr, Exactly(1)).ok());
}

}  // namespace
}  // namespace xtrain::core
