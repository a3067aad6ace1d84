// Every model of the zoo, in every dims it supports: shapes, gradients, and conversion to XConv.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/models/model_zoo.h"
#include "core/xconv/convert.h"
#include "core/xconv/modules.h"

namespace xtrain::core {
namespace {

namespace nn = torch::nn;

// A small instance of one model and the input it takes.
struct ModelCase {
  ModelSpec spec;
  std::vector<int64_t> input_shape;
  std::vector<int64_t> output_shape;
};

void PrintTo(const ModelCase& c, std::ostream* os) { *os << c.spec.name << "_" << c.spec.dims << "d"; }

ModelSpec Spec(const std::string& name, int64_t dims, int64_t width, int64_t depth = 0) {
  ModelSpec spec;
  spec.name = name;
  spec.dims = dims;
  spec.width = width;
  spec.depth = depth;
  spec.seed = 7;
  return spec;
}

ModelSpec WithChannels(ModelSpec spec, int64_t in, int64_t out) {
  spec.in_channels = in;
  spec.out_channels = out;
  return spec;
}

ModelSpec WithClasses(ModelSpec spec, int64_t in, int64_t classes) {
  spec.in_channels = in;
  spec.classes = classes;
  return spec;
}

std::vector<ModelCase> Cases() {
  return {
      {WithClasses(Spec("small_cnn", 2, 4), 1, 10), {2, 1, 16, 16}, {2, 10}},
      {WithClasses(Spec("small_cnn", 3, 4), 2, 3), {2, 2, 8, 8, 8}, {2, 3}},
      {WithClasses(Spec("resnet18", 2, 4, 1), 3, 10), {2, 3, 16, 16}, {2, 10}},
      {WithClasses(Spec("resnet18", 3, 4, 2), 1, 4), {2, 1, 8, 8, 8}, {2, 4}},
      {WithClasses(Spec("squeezenet1_1", 2, 8), 3, 5), {2, 3, 32, 32}, {2, 5}},
      {WithClasses(Spec("squeezenet1_1", 3, 4), 1, 5), {2, 1, 24, 24, 24}, {2, 5}},
      {WithChannels(Spec("unet", 2, 4, 2), 1, 2), {2, 1, 16, 16}, {2, 2, 16, 16}},
      {WithChannels(Spec("unet", 3, 4, 3), 2, 1), {2, 2, 8, 8, 8}, {2, 1, 8, 8, 8}},
      {WithChannels(Spec("srnet", 2, 8, 2), 1, 1), {2, 1, 8, 8}, {2, 1, 16, 16}},
      {WithChannels(Spec("srnet", 3, 8, 2), 1, 2), {2, 1, 4, 4, 4}, {2, 2, 8, 8, 8}},
      {WithChannels(Spec("dncnn", 2, 8, 4), 1, 1), {2, 1, 16, 16}, {2, 1, 16, 16}},
      {WithChannels(Spec("dncnn", 3, 8, 3), 1, 1), {2, 1, 8, 8, 8}, {2, 1, 8, 8, 8}},
      {WithChannels(Spec("ddpm_unet", 2, 4), 2, 1), {2, 2, 16, 16}, {2, 1, 16, 16}},
      {WithChannels(Spec("ddpm_unet", 3, 4), 4, 3), {2, 4, 8, 8, 8}, {2, 3, 8, 8, 8}},
      {WithClasses(Spec("strided_grouped", 2, 4), 3, 10), {2, 3, 16, 16}, {2, 10}},
      {WithClasses(Spec("strided_grouped", 3, 4), 1, 2), {2, 1, 8, 8, 8}, {2, 2}},
  };
}

// Convolutions and ReLUs a module tree holds, torch's and XConv's.
struct LayerCount {
  int torch_convs = 0;
  int xconvs = 0;
  int transposed_convs = 0;
  int relus = 0;
  int mask_relus = 0;
  int max_pools = 0;
  int index_max_pools = 0;
};

LayerCount CountLayers(nn::Module& root) {
  LayerCount count;
  for (const auto& module : root.modules()) {
    count.torch_convs += module->as<nn::Conv2dImpl>() != nullptr || module->as<nn::Conv3dImpl>() != nullptr;
    count.xconvs += module->as<XConv2dImpl>() != nullptr || module->as<XConv3dImpl>() != nullptr;
    count.transposed_convs +=
        module->as<nn::ConvTranspose2dImpl>() != nullptr || module->as<nn::ConvTranspose3dImpl>() != nullptr;
    count.relus += module->as<nn::ReLUImpl>() != nullptr;
    count.mask_relus += module->as<MaskReLUImpl>() != nullptr;
    count.max_pools += module->as<nn::MaxPool2dImpl>() != nullptr || module->as<nn::MaxPool3dImpl>() != nullptr;
    count.index_max_pools += module->as<IndexMaxPoolImpl>() != nullptr;
  }
  return count;
}

// Forward with the global generator at a fixed seed, so dropout draws the same mask every time.
torch::Tensor SeededForward(NetworkImpl& net, const torch::Tensor& input) {
  torch::manual_seed(11);
  return net.forward(input);
}

torch::Tensor InputFor(const ModelCase& c) {
  torch::manual_seed(3);
  return torch::randn(c.input_shape);
}

class ZooModel : public ::testing::TestWithParam<ModelCase> {
 protected:
  std::shared_ptr<NetworkImpl> Build() {
    absl::StatusOr<std::shared_ptr<NetworkImpl>> net = BuildModel(GetParam().spec);
    EXPECT_TRUE(net.ok()) << net.status();
    return net.ok() ? *net : nullptr;
  }
};

TEST_P(ZooModel, ForwardGivesTheDocumentedShape) {
  std::shared_ptr<NetworkImpl> net = Build();
  ASSERT_TRUE(net);
  EXPECT_TRUE(net->is_training());
  const torch::Tensor output = net->forward(InputFor(GetParam()));
  EXPECT_EQ(output.sizes(), torch::IntArrayRef(GetParam().output_shape));
  EXPECT_TRUE(torch::isfinite(output).all().item<bool>());
}

TEST_P(ZooModel, BackwardReachesEveryParameter) {
  std::shared_ptr<NetworkImpl> net = Build();
  ASSERT_TRUE(net);
  net->forward(InputFor(GetParam())).square().sum().backward();
  for (const auto& item : net->named_parameters()) {
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    EXPECT_TRUE(torch::isfinite(item.value().grad()).all().item<bool>()) << item.key();
  }
}

TEST_P(ZooModel, ConvertSwapsEveryConvAndKeepsTheOutput) {
  std::shared_ptr<NetworkImpl> net = Build();
  ASSERT_TRUE(net);
  const LayerCount before = CountLayers(*net);
  ASSERT_GT(before.torch_convs, 0);
  ASSERT_GT(before.relus, 0);
  EXPECT_EQ(before.xconvs, 0);
  const torch::Tensor input = InputFor(GetParam());
  // Training mode both times: BatchNorm normalises the same batch with the same statistics.
  const torch::Tensor expected = SeededForward(*net, input);
  const std::vector<torch::Tensor> parameters = net->parameters();

  absl::StatusOr<ConvertResult> result = Convert(net, ConvertOptions{});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->module, net);  // the root is a custom module: converted in place
  std::shared_ptr<NetworkImpl> converted = std::dynamic_pointer_cast<NetworkImpl>(result->module);
  ASSERT_TRUE(converted);
  EXPECT_EQ(static_cast<int>(result->converted.size()), before.torch_convs + before.relus + before.max_pools);

  const LayerCount after = CountLayers(*converted);
  EXPECT_EQ(after.torch_convs, 0);
  EXPECT_EQ(after.xconvs, before.torch_convs);
  EXPECT_EQ(after.relus, 0);
  EXPECT_EQ(after.mask_relus, before.relus);
  EXPECT_EQ(after.max_pools, 0);
  EXPECT_EQ(after.index_max_pools, before.max_pools);
  EXPECT_EQ(after.transposed_convs, before.transposed_convs);

  const std::vector<torch::Tensor> converted_parameters = converted->parameters();
  ASSERT_EQ(converted_parameters.size(), parameters.size());
  for (size_t i = 0; i < parameters.size(); ++i) {
    EXPECT_TRUE(converted_parameters[i].is_same(parameters[i])) << "parameter " << i;
  }

  const torch::Tensor output = SeededForward(*converted, input);
  EXPECT_TRUE(torch::equal(output, expected)) << (output - expected).abs().max().item<float>();
  output.square().sum().backward();
  for (const auto& item : converted->named_parameters()) {
    EXPECT_TRUE(item.value().grad().defined()) << item.key();
  }
}

INSTANTIATE_TEST_SUITE_P(Zoo, ZooModel, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<ModelCase>& info) {
                           return info.param.spec.name + "_" + std::to_string(info.param.spec.dims) + "d";
                         });

TEST(ZooModelCases, CoverEveryModelInTwoAndThreeDims) {
  std::set<std::pair<std::string, int64_t>> covered;
  for (const ModelCase& c : Cases()) covered.emplace(c.spec.name, c.spec.dims);
  for (const std::string& name : ModelNames()) {
    EXPECT_TRUE(covered.count({name, 2})) << name;
    EXPECT_TRUE(covered.count({name, 3})) << name;
  }
}

}  // namespace
}  // namespace xtrain::core
