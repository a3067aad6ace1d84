// The zoo's resnet18 (ImageNet stem) and squeezenet1_1 take torchvision's weights by torchvision's names:
// scripts/export_torchvision.py (Debian's python3-torchvision, random weights) writes the modules at test
// time, and the zoo net loaded from one gives the torchvision module's outputs.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "core/models/model_zoo.h"
#include "core/train/checkpoint.h"

namespace xtrain::core {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class TorchvisionWeights : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string((fs::temp_directory_path() / ("xtrain-tv-" + std::to_string(::getpid()))).string());
    fs::create_directories(*dir_);
    const char* source = std::getenv("XTRAIN_SOURCE_DIR");
    ASSERT_NE(source, nullptr) << "ctest sets XTRAIN_SOURCE_DIR";
    for (const std::string net : {"resnet18", "squeezenet1_1"}) {
      const std::string command = "/usr/bin/python3 " + std::string(source) + "/scripts/export_torchvision.py " + net +
                                  " " + *dir_ + "/" + net + ".pt --in-channels 1 --seed 4 > /dev/null";
      ASSERT_EQ(std::system(command.c_str()), 0) << command;
    }
  }
  static void TearDownTestSuite() {
    std::error_code ignored;
    fs::remove_all(*dir_, ignored);
    delete dir_;
  }
  static std::string File(const std::string& net) { return *dir_ + "/" + net + ".pt"; }
  static ModelSpec Spec(const std::string& net, int64_t classes) {
    ModelSpec spec;
    spec.name = net;
    spec.in_channels = 1;
    spec.classes = classes;
    spec.imagenet_stem = net == "resnet18";
    spec.seed = 1;
    return spec;
  }
  static std::string* dir_;
};
std::string* TorchvisionWeights::dir_ = nullptr;

TEST_F(TorchvisionWeights, ZooNetLoadedFromTorchvisionGivesItsOutputs) {
  for (const std::string net : {"resnet18", "squeezenet1_1"}) {
    SCOPED_TRACE(net);
    absl::StatusOr<std::shared_ptr<NetworkImpl>> model = BuildModel(Spec(net, 1000));
    ASSERT_TRUE(model.ok()) << model.status();
    absl::StatusOr<WeightsLoadReport> report = LoadWeights(File(net), **model, /*strict=*/true);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_TRUE(report->skipped.empty()) << ::testing::PrintToString(report->skipped);
    // Every parameter and buffer of the zoo net came from the file.
    EXPECT_EQ(report->loaded.size(), (*model)->named_parameters().size() + (*model)->named_buffers().size());
    torch::jit::Module reference = torch::jit::load(File(net));
    reference.eval();
    (*model)->eval();
    torch::manual_seed(3);
    const torch::Tensor x = torch::rand({2, 1, 64, 64});
    torch::NoGradGuard no_grad;
    const torch::Tensor ours = (*model)->forward(x);
    const torch::Tensor theirs = reference.forward({x}).toTensor();
    ASSERT_EQ(ours.sizes(), theirs.sizes());
    EXPECT_LT(((ours - theirs).norm() / theirs.norm()).item<double>(), 1e-5);
  }
}

TEST_F(TorchvisionWeights, AnotherClassCountStartsTheHeadAfreshAndKeepsTheRest) {
  for (const std::string net : {"resnet18", "squeezenet1_1"}) {
    SCOPED_TRACE(net);
    absl::StatusOr<std::shared_ptr<NetworkImpl>> model = BuildModel(Spec(net, 10));
    ASSERT_TRUE(model.ok()) << model.status();
    absl::StatusOr<WeightsLoadReport> report = LoadWeights(File(net), **model, /*strict=*/true);
    ASSERT_TRUE(report.ok()) << report.status();
    const std::string head = net == "resnet18" ? "head.2." : "classifier.1.";
    EXPECT_THAT(report->skipped, ::testing::ElementsAre(head + "bias", head + "weight"));
    EXPECT_EQ(report->loaded.size() + 2, (*model)->named_parameters().size() + (*model)->named_buffers().size());
    torch::jit::Module reference = torch::jit::load(File(net));
    const std::string first = net == "resnet18" ? "conv1.weight" : "features.0.weight";
    const std::string zoo_first = net == "resnet18" ? "stem.0.weight" : "features.0.weight";
    torch::Tensor theirs;
    for (const auto& p : reference.named_parameters()) {
      if (p.name == first) theirs = p.value;
    }
    EXPECT_TRUE(torch::equal((*model)->named_parameters()[zoo_first], theirs));
  }
}

TEST_F(TorchvisionWeights, ALayoutThatDiffersIsRefusedWithWhatToChange) {
  ModelSpec cifar_stem = Spec("resnet18", 10);
  cifar_stem.imagenet_stem = false;
  absl::StatusOr<std::shared_ptr<NetworkImpl>> model = BuildModel(cifar_stem);
  ASSERT_TRUE(model.ok());
  absl::StatusOr<WeightsLoadReport> report = LoadWeights(File("resnet18"), **model, true);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), HasSubstr("imagenet_stem"));
  ModelSpec three_channels = Spec("squeezenet1_1", 10);
  three_channels.in_channels = 3;
  model = BuildModel(three_channels);
  ASSERT_TRUE(model.ok());
  report = LoadWeights(File("squeezenet1_1"), **model, true);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(report.status().message(), HasSubstr("--in-channels"));
  ModelSpec wrong = Spec("squeezenet1_1", 10);
  wrong.imagenet_stem = true;
  EXPECT_THAT(BuildModel(wrong).status().message(), HasSubstr("imagenet_stem applies to resnet18 only"));
}

}  // namespace
}  // namespace xtrain::core
