// ScriptNetwork: a user's TorchScript module run by xtrain's interpreter, its convolutions, ReLUs and max
// pools bound to modules Convert swaps. The modules are written at test time by make_script_modules.py
// (/usr/bin/python3's torch) into a fresh folder.
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include "core/memory/memory_model.h"
#include "core/memory/planner.h"
#include "core/models/model_zoo.h"
#include "core/models/script_network.h"
#include "core/xconv/convert.h"

namespace xtrain::core {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class ScriptNetworkTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(
        (fs::temp_directory_path() / ("xtrain-script-" + std::to_string(::getpid()))).string());
    const std::string command = "/usr/bin/python3 " XTRAIN_SOURCE_DIR "/tests/models/make_script_modules.py " +
                                *dir_ + " > /dev/null";
    ASSERT_EQ(std::system(command.c_str()), 0) << command;
  }
  static void TearDownTestSuite() {
    std::error_code ignored;
    fs::remove_all(*dir_, ignored);
    delete dir_;
  }
  static std::string File(const std::string& name) { return *dir_ + "/" + name; }

  static std::shared_ptr<ScriptNetworkImpl> Load(const std::string& name, int64_t classes = 0) {
    ModelSpec spec;
    spec.name = kTorchScriptModel;
    spec.script_path = File(name);
    spec.classes = classes;
    spec.seed = 3;
    absl::StatusOr<std::shared_ptr<NetworkImpl>> net = BuildModel(spec);
    EXPECT_TRUE(net.ok()) << net.status();
    if (!net.ok()) return nullptr;
    return std::dynamic_pointer_cast<ScriptNetworkImpl>(*net);
  }

  static absl::Status LoadError(const std::string& name) {
    ModelSpec spec;
    spec.name = kTorchScriptModel;
    spec.script_path = File(name);
    return BuildModel(spec).status();
  }

  static std::string* dir_;
};
std::string* ScriptNetworkTest::dir_ = nullptr;

double Rel(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a - b).norm() / b.norm().clamp_min(1e-30)).item<double>();
}

// The parameters of a script module by name, float64 for comparisons.
std::map<std::string, torch::Tensor> ScriptGrads(const torch::jit::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : m.named_parameters()) out[p.name] = p.value.grad();
  return out;
}

TEST_F(ScriptNetworkTest, ExactBindingGivesTheOriginalOutputsAndGradients) {
  for (const std::string name : {"scripted.pt", "traced.pt"}) {
    SCOPED_TRACE(name);
    std::shared_ptr<ScriptNetworkImpl> net = Load(name);
    ASSERT_TRUE(net);
    torch::jit::Module reference = torch::jit::load(File(name));
    net->to(torch::kDouble);
    reference.to(torch::kDouble);
    net->train();
    reference.train();
    // The convolutions bound to modules, at the module's own paths; the computed-weight one stays exact.
    EXPECT_THAT(net->conv_paths(), ::testing::ElementsAre("stem", "block.conv", "down")) << ::testing::PrintToString(net->notes());
    EXPECT_THAT(::testing::PrintToString(net->notes()), HasSubstr("stays exact"));
    torch::manual_seed(1);
    const torch::Tensor x = torch::randn({3, 2, 9, 9}, torch::kDouble);
    const torch::Tensor y = net->forward(x);
    const torch::Tensor y_ref = reference.forward({x}).toTensor();
    ASSERT_EQ(y.sizes(), y_ref.sizes());
    EXPECT_LT(Rel(y, y_ref), 1e-12);
    const torch::Tensor g = torch::randn_like(y);
    y.backward(g);
    y_ref.backward(g);
    const auto ref_grads = ScriptGrads(reference);
    int compared = 0;
    for (const auto& p : net->named_parameters()) {
      auto it = ref_grads.find(p.key());
      ASSERT_NE(it, ref_grads.end()) << p.key();
      ASSERT_TRUE(p.value().grad().defined()) << p.key();
      EXPECT_LT(Rel(p.value().grad(), it->second), 1e-12) << p.key();
      ++compared;
    }
    EXPECT_EQ(compared, static_cast<int>(ref_grads.size()));
    // BatchNorm's running statistics moved the same way (the script's own ops ran).
    for (const auto& b : net->named_buffers()) {
      for (const auto& rb : reference.named_buffers()) {
        if (rb.name == b.key()) {
          EXPECT_TRUE(torch::allclose(b.value().to(torch::kDouble), rb.value.to(torch::kDouble))) << b.key();
        }
      }
    }
  }
}

TEST_F(ScriptNetworkTest, ConvertedLayersKeepOutputsAndGiveUnbiasedWeightGradients) {
  std::shared_ptr<ScriptNetworkImpl> net = Load("scripted.pt");
  ASSERT_TRUE(net);
  torch::jit::Module reference = torch::jit::load(File("scripted.pt"));
  net->to(torch::kDouble);
  reference.to(torch::kDouble);
  ConvertOptions options;
  options.settings.probes = 4;
  options.seed = 11;
  absl::StatusOr<ConvertResult> converted = Convert(net, options);
  ASSERT_TRUE(converted.ok()) << converted.status();
  EXPECT_THAT(converted->converted, ::testing::IsSupersetOf({"stem", "block.conv", "down"}));
  // The lean layers were swapped too (two ReLUs and the in-place one, the max pool).
  int lean = 0;
  for (const std::string& path : converted->converted) lean += path.rfind("xtrain_lean.", 0) == 0;
  EXPECT_EQ(lean, 4);
  torch::manual_seed(2);
  const torch::Tensor x = torch::randn({4, 2, 8, 8}, torch::kDouble);
  const torch::Tensor y_ref = reference.forward({x}).toTensor();
  const torch::Tensor g = torch::randn_like(y_ref);
  y_ref.backward(g);
  const torch::Tensor exact_fc = reference.attr("fc").toModule().attr("weight").toTensor().grad().clone();
  const std::vector<std::string> layers = {"stem", "block.conv", "down"};
  std::map<std::string, torch::Tensor> exact, weight, sum, sum_sq;
  for (const auto& [name, grad] : ScriptGrads(reference)) {
    for (const std::string& layer : layers) {
      if (name == layer + ".weight") exact[layer] = grad.clone();
    }
  }
  for (const auto& p : net->named_parameters()) {
    for (const std::string& layer : layers) {
      if (p.key() == layer + ".weight") weight[layer] = p.value();
    }
  }
  ASSERT_EQ(exact.size(), layers.size());
  ASSERT_EQ(weight.size(), layers.size());
  for (const std::string& layer : layers) {
    sum[layer] = torch::zeros_like(exact[layer]);
    sum_sq[layer] = torch::zeros_like(exact[layer]);
  }

  // Many draws: each forward draws fresh probes. Their mean is the exact gradient within the
  // sampling error: sum over elements of (mean - exact)^2 / (var / n) is about chi-square with one
  // degree of freedom per element, so it stays below k + 6 sqrt(2k) unless the estimate is biased.
  const int draws = 300;
  for (int d = 0; d < draws; ++d) {
    net->zero_grad();
    const torch::Tensor y = net->forward(x);
    if (d == 0) {
      EXPECT_LT(Rel(y, y_ref), 1e-12) << "XConv's forward is exact";
    }
    y.backward(g);
    if (d == 0) {
      // Layers after the last conv are exact: the linear head's gradient equals the original's.
      for (const auto& p : net->named_parameters()) {
        if (p.key() == "fc.weight") {
          EXPECT_LT(Rel(p.value().grad(), exact_fc), 1e-10);
        }
      }
    }
    for (const std::string& layer : layers) {
      const torch::Tensor grad = weight[layer].grad();
      sum[layer] += grad;
      sum_sq[layer] += grad * grad;
    }
  }
  for (const std::string& layer : layers) {
    SCOPED_TRACE(layer);
    const torch::Tensor mean = sum[layer] / draws;
    const torch::Tensor var = (sum_sq[layer] / draws - mean * mean) * draws / (draws - 1);
    const double k = static_cast<double>(mean.numel());
    const double bound = k + 6 * std::sqrt(2 * k);
    const double statistic = ((mean - exact[layer]).pow(2) / (var / draws).clamp_min(1e-30)).sum().item<double>();
    EXPECT_LT(statistic, bound) << "mean rel err " << Rel(mean, exact[layer]);
    // The estimate is noisy (not the exact gradient every draw), and a biased one (half the gradient)
    // fails the same test: the test can tell them apart.
    EXPECT_GT(var.sum().item<double>(), 0.0);
    const double biased =
        ((mean * 0.5 - exact[layer]).pow(2) / (var / draws).clamp_min(1e-30)).sum().item<double>();
    EXPECT_GT(biased, bound);
  }
}

TEST_F(ScriptNetworkTest, MemoryModelPlansTheModuleAndListsTheConvolutionLeftExact) {
  ModelSpec spec;
  spec.name = kTorchScriptModel;
  spec.script_path = File("scripted.pt");
  ModelFactory factory = [spec]() -> absl::StatusOr<std::shared_ptr<torch::nn::Module>> {
    absl::StatusOr<std::shared_ptr<NetworkImpl>> net = BuildModel(spec);
    if (!net.ok()) return net.status();
    return std::shared_ptr<torch::nn::Module>(*net);
  };
  ForwardFn forward = [](torch::nn::Module& m, const torch::Tensor& x) {
    return dynamic_cast<NetworkImpl&>(m).forward(x);
  };
  TrainingStep step;
  step.sample_sizes = {2, 16, 16};
  step.batch = 8;
  absl::StatusOr<MemoryModel> model = MemoryModel::Build(factory, forward, step);
  ASSERT_TRUE(model.ok()) << model.status();
  std::vector<std::string> paths;
  for (const ConvLayer& layer : model->layers()) paths.push_back(layer.path);
  EXPECT_THAT(paths, ::testing::ElementsAre("stem", "block.conv", "down"));
  const int64_t exact = model->PredictPeak(model->ExactChoices(), 8);
  std::vector<LayerChoice> all(3, LayerChoice{true, 2, ProbeMode::kIndependent});
  const int64_t converted = model->PredictPeak(all, 8);
  EXPECT_LT(converted, exact);
  // The prediction holds against a measured step of the converted module.
  absl::StatusOr<int64_t> measured = MeasureTrainingPeak(
      factory, forward, step, 8,
      [&](std::shared_ptr<torch::nn::Module> m) -> absl::StatusOr<std::shared_ptr<torch::nn::Module>> {
        absl::StatusOr<Plan> plan = PlanFromChoices(*model, all, true, 8, 0);
        if (!plan.ok()) return plan.status();
        absl::StatusOr<ConvertResult> r = ApplyPlan(m, *plan, *model, 1);
        if (!r.ok()) return r.status();
        return r->module;
      });
  ASSERT_TRUE(measured.ok()) << measured.status();
  EXPECT_NEAR(static_cast<double>(converted), static_cast<double>(*measured), 0.05 * static_cast<double>(*measured));
}

TEST_F(ScriptNetworkTest, ThreeDimensionalConvolutionsBind) {
  std::shared_ptr<ScriptNetworkImpl> net = Load("net3d.pt");
  ASSERT_TRUE(net);
  EXPECT_THAT(net->conv_paths(), ::testing::ElementsAre("conv", "head"));
  const torch::Tensor y = net->forward(torch::randn({2, 1, 4, 5, 6}));
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 2, 4, 5, 6}));
}

TEST_F(ScriptNetworkTest, HeadIsReplacedForAnotherClassCount) {
  std::shared_ptr<ScriptNetworkImpl> net = Load("scripted.pt", /*classes=*/3);
  ASSERT_TRUE(net);
  EXPECT_EQ(net->forward(torch::randn({2, 2, 8, 8})).size(1), 3);
  EXPECT_THAT(::testing::PrintToString(net->notes()), HasSubstr("head fc replaced: 10 outputs -> 3"));
  // The same seed gives the same head; the class count the module has leaves it alone.
  std::shared_ptr<ScriptNetworkImpl> again = Load("scripted.pt", 3);
  EXPECT_TRUE(torch::equal(net->named_parameters()["fc.weight"], again->named_parameters()["fc.weight"]));
  std::shared_ptr<ScriptNetworkImpl> same = Load("scripted.pt", 10);
  torch::jit::Module reference = torch::jit::load(File("scripted.pt"));
  EXPECT_TRUE(torch::equal(same->named_parameters()["fc.weight"],
                           reference.attr("fc").toModule().attr("weight").toTensor()));
}

TEST_F(ScriptNetworkTest, SavedModuleCarriesTheTrainedWeightsAndLoadsWithoutXtrain) {
  std::shared_ptr<ScriptNetworkImpl> net = Load("scripted.pt", 4);
  ASSERT_TRUE(net);
  ConvertOptions options;
  options.settings.probes = 2;
  ASSERT_TRUE(Convert(net, options).ok());
  torch::optim::SGD sgd(net->parameters(), torch::optim::SGDOptions(0.1));
  const torch::Tensor x = torch::randn({4, 2, 8, 8});
  for (int s = 0; s < 3; ++s) {
    sgd.zero_grad();
    torch::nn::functional::cross_entropy(net->forward(x), torch::tensor({0, 1, 2, 3})).backward();
    sgd.step();
  }
  const std::string out = File("trained.pt");
  ASSERT_TRUE(net->Save(out).ok());
  net->eval();
  const torch::Tensor ours = net->forward(x);
  torch::jit::Module loaded = torch::jit::load(out);
  EXPECT_FALSE(loaded.is_training());
  const torch::Tensor theirs = loaded.forward({x}).toTensor();
  EXPECT_LT(Rel(theirs, ours), 1e-6);
  // The weights really moved from the original's.
  torch::jit::Module original = torch::jit::load(File("scripted.pt"));
  EXPECT_FALSE(torch::equal(loaded.attr("stem").toModule().attr("weight").toTensor(),
                            original.attr("stem").toModule().attr("weight").toTensor()));
}

TEST_F(ScriptNetworkTest, BadModulesAreRefusedWithTheReason) {
  absl::Status garbage = LoadError("garbage.pt");
  EXPECT_EQ(garbage.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(garbage.message(), HasSubstr("is not a TorchScript module"));
  absl::Status state_dict = LoadError("state_dict.pt");
  EXPECT_EQ(state_dict.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(state_dict.message(), HasSubstr("is not a TorchScript module"));
  absl::Status noconv = LoadError("noconv.pt");
  EXPECT_EQ(noconv.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(noconv.message(), HasSubstr("has no convolution"));
  absl::Status two = LoadError("two_inputs.pt");
  EXPECT_EQ(two.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(two.message(), HasSubstr("forward takes 2 argument(s)"));
  absl::Status missing = LoadError("missing.pt");
  EXPECT_EQ(missing.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(missing.message(), HasSubstr("is not a readable file"));
  ModelSpec none;
  none.name = kTorchScriptModel;
  EXPECT_THAT(BuildModel(none).status().message(), HasSubstr("needs its module"));
}

}  // namespace
}  // namespace xtrain::core
