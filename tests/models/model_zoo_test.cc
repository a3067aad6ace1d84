// BuildModel: names, validation, seeded initialisation and reference sizes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "core/models/dncnn.h"
#include "core/models/model_zoo.h"
#include "core/models/resnet.h"

namespace xtrain::core {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

ModelSpec Small(const std::string& name) {
  ModelSpec spec;
  spec.name = name;
  spec.width = 4;
  if (name == "ddpm_unet") spec.in_channels = 2;
  return spec;
}

int64_t ParameterCount(torch::nn::Module& module) {
  int64_t count = 0;
  for (const torch::Tensor& p : module.parameters()) count += p.numel();
  return count;
}

TEST(ModelNames, ListsTheZoo) {
  EXPECT_THAT(ModelNames(), ElementsAre("small_cnn", "resnet18", "squeezenet1_1", "unet", "srnet",
                                        "dncnn", "ddpm_unet", "strided_grouped"));
}

TEST(BuildModel, ResolvesDefaultsIntoTheSpec) {
  ModelSpec spec;
  spec.name = "unet";
  auto net = BuildModel(spec);
  ASSERT_TRUE(net.ok()) << net.status();
  EXPECT_EQ((*net)->spec().width, 16);
  EXPECT_EQ((*net)->spec().depth, 3);
  EXPECT_EQ((*net)->spec().name, "unet");
}

// Reference sizes: the CIFAR ResNet-18 and torchvision's squeezenet1_1 (ImageNet, 1000 classes).
TEST(BuildModel, DefaultsMatchReferenceParameterCounts) {
  ModelSpec resnet;
  resnet.name = "resnet18";
  resnet.in_channels = 3;
  auto net = BuildModel(resnet);
  ASSERT_TRUE(net.ok()) << net.status();
  EXPECT_EQ(ParameterCount(**net), 11173962);

  ModelSpec squeezenet;
  squeezenet.name = "squeezenet1_1";
  squeezenet.in_channels = 3;
  squeezenet.classes = 1000;
  net = BuildModel(squeezenet);
  ASSERT_TRUE(net.ok()) << net.status();
  EXPECT_EQ(ParameterCount(**net), 1235496);
}

TEST(BuildModel, SameSeedGivesBitIdenticalWeights) {
  for (const std::string& name : ModelNames()) {
    ModelSpec spec = Small(name);
    spec.seed = 42;
    auto first = BuildModel(spec);
    auto second = BuildModel(spec);
    spec.seed = 43;
    auto other = BuildModel(spec);
    ASSERT_TRUE(first.ok() && second.ok() && other.ok()) << name;
    const auto a = (*first)->named_parameters();
    const auto b = (*second)->named_parameters();
    const auto c = (*other)->named_parameters();
    ASSERT_EQ(a.size(), b.size()) << name;
    bool differs = false;
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].key(), b[i].key()) << name;
      EXPECT_TRUE(torch::equal(a[i].value(), b[i].value())) << name << " " << a[i].key();
      differs = differs || !torch::equal(a[i].value(), c[i].value());
    }
    EXPECT_TRUE(differs) << name << ": seeds 42 and 43 gave the same weights";
  }
}

TEST(BuildModel, RestoresTheGlobalGenerator) {
  torch::manual_seed(123);
  torch::randn({3});  // leaves a cached normal sample in the generator's state
  const torch::Tensor expected = torch::randn({16});

  torch::manual_seed(123);
  torch::randn({3});
  ModelSpec spec = Small("resnet18");
  spec.seed = 5;
  ASSERT_TRUE(BuildModel(spec).ok());
  EXPECT_TRUE(torch::equal(torch::randn({16}), expected));
}

TEST(BuildModel, UnknownNameListsTheModels) {
  ModelSpec spec;
  spec.name = "vgg16";
  auto net = BuildModel(spec);
  EXPECT_EQ(net.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(net.status().message()), HasSubstr("vgg16"));
  EXPECT_THAT(std::string(net.status().message()), HasSubstr("resnet18, squeezenet1_1"));
}

// A spec mistake and a phrase the message must contain.
struct BadSpec {
  ModelSpec spec;
  std::string phrase;
};

TEST(BuildModel, BadSpecsSayWhatToChange) {
  auto with = [](const std::string& name, auto change) {
    ModelSpec spec = Small(name);
    change(spec);
    return spec;
  };
  const std::vector<BadSpec> cases = {
      {with("unet", [](ModelSpec& s) { s.dims = 4; }), "set dims to 2 (images) or 3 (volumes)"},
      {with("small_cnn", [](ModelSpec& s) { s.in_channels = 0; }), "in_channels 0 must be at least 1"},
      {with("resnet18", [](ModelSpec& s) { s.classes = 0; }), "classes 0 must be at least 1"},
      {with("unet", [](ModelSpec& s) { s.out_channels = -1; }), "out_channels -1 must be at least 1"},
      {with("dncnn", [](ModelSpec& s) { s.width = -8; }), "set width between 1 and"},
      {with("resnet18", [](ModelSpec& s) { s.depth = -1; }), "depth -1 must be at least 1"},
      {with("small_cnn", [](ModelSpec& s) { s.depth = 3; }), "leave depth at 0"},
      {with("squeezenet1_1", [](ModelSpec& s) { s.width = 6; }), "must be a multiple of 4"},
      {with("strided_grouped", [](ModelSpec& s) { s.width = 5; }), "must be even"},
      {with("unet", [](ModelSpec& s) { s.depth = 11; }), "set depth between 1 and 10"},
      {with("dncnn", [](ModelSpec& s) { s.depth = 1; }), "set depth to 2 or more"},
      {with("srnet", [](ModelSpec& s) { s.scale = 0; }), "set scale between 1 and 16"},
      {with("ddpm_unet", [](ModelSpec& s) { s.in_channels = 1; }), "set in_channels to 2"},
  };
  for (const BadSpec& c : cases) {
    auto net = BuildModel(c.spec);
    EXPECT_EQ(net.status().code(), absl::StatusCode::kInvalidArgument) << c.phrase;
    EXPECT_THAT(std::string(net.status().message()), HasSubstr(c.phrase));
    EXPECT_THAT(std::string(net.status().message()), HasSubstr("model " + c.spec.name + ": "));
  }
}

TEST(BuildModel, ClassifiersIgnoreOutChannelsAndDenseModelsIgnoreClasses) {
  ModelSpec classifier = Small("small_cnn");
  classifier.out_channels = 0;
  EXPECT_TRUE(BuildModel(classifier).ok());
  ModelSpec dense = Small("dncnn");
  dense.classes = 0;
  EXPECT_TRUE(BuildModel(dense).ok());
}

TEST(DnCnn, SubtractsThePredictedNoiseWhenChannelsMatch) {
  ModelSpec spec = Small("dncnn");
  spec.depth = 3;
  auto net = BuildModel(spec);
  ASSERT_TRUE(net.ok()) << net.status();
  auto* dncnn = dynamic_cast<DnCnnImpl*>(net->get());
  ASSERT_NE(dncnn, nullptr);
  EXPECT_TRUE(dncnn->residual());
  // With the last conv zeroed the body predicts no noise, so the output is the input.
  {
    torch::NoGradGuard no_grad;
    std::shared_ptr<torch::nn::Module> last;
    for (const auto& module : dncnn->modules()) {
      if (module->as<torch::nn::Conv2dImpl>()) last = module;
    }
    for (auto& p : last->parameters()) p.zero_();
  }
  const torch::Tensor x = torch::randn({2, 1, 8, 8});
  EXPECT_TRUE(torch::equal(dncnn->forward(x), x));

  spec.out_channels = 2;
  net = BuildModel(spec);
  ASSERT_TRUE(net.ok()) << net.status();
  EXPECT_FALSE(dynamic_cast<DnCnnImpl*>(net->get())->residual());
}

TEST(UNet, RefusesSizesNotDivisibleByTwoToTheDepth) {
  ModelSpec spec = Small("unet");
  spec.depth = 2;
  auto net = BuildModel(spec);
  ASSERT_TRUE(net.ok()) << net.status();
  try {
    (*net)->forward(torch::randn({1, 1, 12, 10}));
    FAIL() << "expected c10::Error";
  } catch (const c10::Error& e) {
    EXPECT_THAT(e.what_without_backtrace(), HasSubstr("divisible by 2^depth = 4"));
  }
}

TEST(ResNet, BlocksLiveInsideStageSequentials) {
  ModelSpec spec = Small("resnet18");
  spec.depth = 2;
  auto net = BuildModel(spec);
  ASSERT_TRUE(net.ok()) << net.status();
  const auto children = (*net)->named_children();
  std::vector<std::string> names;
  for (const auto& item : children) names.push_back(item.key());
  EXPECT_THAT(names, ElementsAre("stem", "layer1", "layer2", "layer3", "layer4", "head"));
  auto* layer2 = children["layer2"]->as<torch::nn::SequentialImpl>();
  ASSERT_NE(layer2, nullptr);
  ASSERT_EQ(layer2->size(), 2u);
  EXPECT_NE(layer2->ptr(0)->as<BasicBlockImpl>(), nullptr);
  // The first block of a later stage halves the size, so it gets a projection shortcut.
  auto shortcut = layer2->ptr(0)->named_children()["shortcut"]->as<torch::nn::SequentialImpl>();
  ASSERT_NE(shortcut, nullptr);
  EXPECT_NE(shortcut->ptr(0)->as<torch::nn::Conv2dImpl>(), nullptr);
  auto identity = layer2->ptr(1)->named_children()["shortcut"]->as<torch::nn::SequentialImpl>();
  EXPECT_NE(identity->ptr(0)->as<torch::nn::IdentityImpl>(), nullptr);
}

}  // namespace
}  // namespace xtrain::core
