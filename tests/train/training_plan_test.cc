// The public planning step (ValidateTrainOptions, PlanTraining, PlanSpec) and the one-job-per-process
// contract of Trainer, PlanTraining and MemoryModel::Build.
#include "core/train/training_plan.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/models/model_zoo.h"
#include "core/train/trainer.h"
#include "core/util/generator_state.h"
#include "core/xconv/modules.h"
#include "tests/train/train_test_util.h"

namespace xtrain::core {
namespace {

using ::testing::HasSubstr;
using namespace ::xtrain::core::testing;

TrainOptions PlannedCnnOptions() { return ::xtrain::core::testing::PlannedCnnOptions(61, 61); }

TEST(ValidateTrainOptions, NamesTheFieldWithoutReadingTheData) {
  TrainOptions good = PlannedCnnOptions();
  EXPECT_TRUE(ValidateTrainOptions(good).ok());
  struct Bad {
    std::string field;
    std::function<void(TrainOptions&)> change;
  };
  const std::vector<Bad> cases = {
      {"batch_size", [](TrainOptions& o) { o.batch_size = 0; }},
      {"fewer than batch_size 1000", [](TrainOptions& o) { o.batch_size = 1000; }},
      {"optimizer.lr", [](TrainOptions& o) { o.optimizer.lr = 0; }},
      {"memory.planner.margin", [](TrainOptions& o) { o.memory.planner.margin = 1.5; }},
      {"memory.planner.min_probes", [](TrainOptions& o) { o.memory.planner.min_probes = 0; }},
      {"memory.planner.modes",
       [](TrainOptions& o) { o.memory.planner.modes = {ProbeMode::kMultiChannel}; }},
      {"memory.model.calibration_probes", [](TrainOptions& o) { o.memory.model.calibration_probes = {4}; }},
      {"model.name 'no_such_net'", [](TrainOptions& o) { o.model.name = "no_such_net"; }},
      {"set model.in_channels to 1", [](TrainOptions& o) { o.model.in_channels = 3; }},
      {"set model.dims to 2", [](TrainOptions& o) { o.model.dims = 3; }},
      {"hole_fraction",
       [](TrainOptions& o) {
         o.task.kind = TaskKind::kInpainting;
         o.task.options.hole_fraction = 0;
       }},
      {"data.train is not set", [](TrainOptions& o) { o.data.train = nullptr; }},
  };
  for (const Bad& bad : cases) {
    TrainOptions o = good;
    bad.change(o);
    const absl::Status status = ValidateTrainOptions(o);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad.field << ": " << status;
    EXPECT_THAT(status.message(), HasSubstr(bad.field));
  }
  // Values need a pass over the data: PlanTraining (and Create) check them, Validate does not.
  TensorDataset nan_inputs = *good.data.train;
  nan_inputs.inputs = nan_inputs.inputs.clone();
  nan_inputs.inputs[3][0][2][2] = std::nan("");
  good.data.train = std::make_shared<const TensorDataset>(nan_inputs);
  EXPECT_TRUE(ValidateTrainOptions(good).ok());
  const absl::StatusOr<TrainingPlan> plan = PlanTraining(good);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(), HasSubstr("data.train has NaN"));
}

TEST(PlanTraining, ReportsTheJobsPeaksAndTheLoaderApart) {
  TrainOptions options = PlannedCnnOptions();
  absl::StatusOr<TrainingPlan> exact = PlanTraining(options);
  ASSERT_TRUE(exact.ok()) << exact.status();
  // The loader: its epoch permutation (int64 per example) and two prefetched batches of images
  // (32x32 float) and labels (int64).
  EXPECT_EQ(exact->loader_bytes, 128 * 8 + 2 * 32 * (32 * 32 * 4 + 8));
  // The trainer holds two states of the default CPU generator (the job's and the process's).
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  EXPECT_EQ(exact->trainer_bytes, 2 * GeneratorState(generator).numel());
  EXPECT_EQ(exact->predicted_peak_bytes,
            exact->plan.predicted_peak_bytes() + exact->loader_bytes + exact->trainer_bytes);
  EXPECT_EQ(exact->predicted_peak_bytes, exact->exact_peak_bytes);  // no budget: the exact job
  EXPECT_EQ(exact->plan.converted_layers(), 0);
  EXPECT_FALSE(exact->spec.lean_layers);
  EXPECT_LT(exact->minimum_budget_bytes, exact->exact_peak_bytes);
  EXPECT_EQ(exact->largest_batch, 0);  // no budget
  EXPECT_GE(exact->calibration_error, 0);
  ASSERT_EQ(exact->spec.layers.size(), 2u);
  EXPECT_EQ(exact->spec.layers[0].path, "features.0");
  EXPECT_EQ(exact->spec.batch, 32);

  // Between the smallest plan and the lean-only one: a converted plan under the budget.
  options.memory.budget_bytes = ConvertingBudget(options, *exact);
  absl::StatusOr<TrainingPlan> planned = PlanTraining(options);
  ASSERT_TRUE(planned.ok()) << planned.status();
  EXPECT_GT(planned->plan.converted_layers(), 0) << planned->Table();
  EXPECT_TRUE(planned->spec.lean_layers);
  EXPECT_EQ(planned->spec.budget_bytes, options.memory.budget_bytes);
  EXPECT_LE(planned->predicted_peak_bytes, options.memory.budget_bytes);
  EXPECT_EQ(planned->plan.budget_bytes,
            options.memory.budget_bytes - planned->loader_bytes - planned->trainer_bytes);
  EXPECT_EQ(planned->exact_peak_bytes, exact->exact_peak_bytes);
  EXPECT_EQ(planned->minimum_budget_bytes, exact->minimum_budget_bytes);
  EXPECT_GE(planned->largest_batch, 32);
  EXPECT_LT(planned->largest_exact_batch, 32);  // the exact job does not fit this budget at 32
  EXPECT_THAT(planned->Table(), HasSubstr("largest batch at this budget"));
}

TEST(PlanTraining, RefusalNamesTheSmallestBudgetAndTheLargestBatch) {
  TrainOptions options = PlannedCnnOptions();
  absl::StatusOr<TrainingPlan> exact = PlanTraining(options);
  ASSERT_TRUE(exact.ok()) << exact.status();
  const int64_t minimum = exact->minimum_budget_bytes;

  options.memory.budget_bytes = minimum;
  absl::StatusOr<TrainingPlan> fits = PlanTraining(options);
  ASSERT_TRUE(fits.ok()) << "the smallest budget it names must fit: " << fits.status();
  const int64_t largest = fits->largest_batch;
  EXPECT_GE(largest, 32);

  options.memory.budget_bytes = minimum - 64;
  const absl::StatusOr<TrainingPlan> refused = PlanTraining(options);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr(absl::StrCat("at least ", minimum)));
  EXPECT_THAT(refused.status().message(), HasSubstr("lower batch_size to"));
  EXPECT_EQ(Trainer::Create(options).status().code(), absl::StatusCode::kResourceExhausted);

  // The largest batch at the smallest budget fits; one more does not.
  options.memory.budget_bytes = minimum;
  options.batch_size = largest;
  EXPECT_TRUE(PlanTraining(options).ok()) << "batch " << largest;
  options.batch_size = largest + 1;
  EXPECT_EQ(PlanTraining(options).status().code(), absl::StatusCode::kResourceExhausted) << "batch " << largest + 1;
}

TEST(PlanSpec, RebuildsInAnotherTrainerFromPlainValues) {
  TrainOptions options = PlannedCnnOptions();
  absl::StatusOr<TrainingPlan> exact = PlanTraining(options);
  ASSERT_TRUE(exact.ok()) << exact.status();
  options.memory.budget_bytes = ConvertingBudget(options, *exact);
  absl::StatusOr<TrainingPlan> planned = PlanTraining(options);
  ASSERT_TRUE(planned.ok()) << planned.status();

  // What a caller stores and sends: strings and integers, rebuilt field by field.
  PlanSpec sent;
  for (const PlanSpec::Layer& layer : planned->spec.layers) {
    sent.layers.push_back({std::string(layer.path.c_str()), layer.probes, layer.mode});
  }
  sent.lean_layers = planned->spec.lean_layers;
  sent.batch = planned->spec.batch;
  sent.budget_bytes = planned->spec.budget_bytes;
  ASSERT_EQ(sent, planned->spec);

  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(options, sent);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  ASSERT_NE((*trainer)->plan(), nullptr);
  EXPECT_EQ((*trainer)->training_plan()->spec, sent);
  EXPECT_EQ((*trainer)->predicted_peak_bytes(), planned->predicted_peak_bytes);
  for (size_t l = 0; l < sent.layers.size(); ++l) {
    EXPECT_EQ((*trainer)->layer_probes()[l], std::make_pair(sent.layers[l].path, sent.layers[l].probes));
  }
  EventLog log;
  ASSERT_TRUE((*trainer)->Run(log.Callback()).ok());
  for (const TrainEvent& step : log.Of(TrainEventKind::kStep)) {
    EXPECT_LE(step.measured_peak_bytes, options.memory.budget_bytes) << "step " << step.step;
  }

  // A hand-written spec: both convolutions at r = 3, under the exact job's budget (converting the
  // first layer frees nothing, so this plan needs more than the converting budget above).
  trainer->reset();
  options.memory.budget_bytes = exact->exact_peak_bytes;
  PlanSpec written{{{"features.0", 3, ProbeMode::kIndependent}, {"features.3", 3, ProbeMode::kIndependent}},
                   true, 32, options.memory.budget_bytes};
  trainer = Trainer::Create(options, written);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  EXPECT_EQ((*trainer)->layer_probes(),
            (std::vector<std::pair<std::string, int64_t>>{{"features.0", 3}, {"features.3", 3}}));
}

// "Lean layers, every convolution exact" is a plan of its own: the job's chain has it just below
// the exact job, PlanTraining picks it where it fits and exact does not, and a Trainer given its
// spec runs mask ReLUs and index max pools with every convolution exact, within the budget.
TEST(PlanSpec, LeanLayersWithEveryConvolutionExact) {
  TrainOptions options = PlannedCnnOptions();
  absl::StatusOr<TrainingPlan> exact = PlanTraining(options);
  ASSERT_TRUE(exact.ok()) << exact.status();
  options.memory.budget_bytes = exact->exact_peak_bytes;
  absl::StatusOr<TrainingPlan> roomy = PlanTraining(options);
  ASSERT_TRUE(roomy.ok()) << roomy.status();
  auto is_lean_only = [](const ChainPoint& p) {
    return p.lean_layers && std::none_of(p.choices.begin(), p.choices.end(), [](const LayerChoice& c) { return c.xconv; });
  };
  const auto lean = std::find_if(roomy->chain.begin(), roomy->chain.end(), is_lean_only);
  ASSERT_NE(lean, roomy->chain.end()) << roomy->Table();
  EXPECT_EQ(lean->fidelity, 1.0);
  EXPECT_LT(lean->peak_bytes, exact->exact_peak_bytes);
  for (size_t i = 1; i < roomy->chain.size(); ++i) {
    EXPECT_LT(roomy->chain[i].peak_bytes, roomy->chain[i - 1].peak_bytes) << i;  // the plan itself down
  }

  // A budget the lean job fits and the exact one does not.
  options.memory.budget_bytes =
      static_cast<int64_t>(std::ceil(static_cast<double>(lean->peak_bytes) / (1.0 - options.memory.planner.margin))) + 64;
  ASSERT_LT(options.memory.budget_bytes, exact->exact_peak_bytes);
  options.max_steps = 3;
  absl::StatusOr<TrainingPlan> planned = PlanTraining(options);
  ASSERT_TRUE(planned.ok()) << planned.status();
  EXPECT_TRUE(planned->spec.lean_layers) << planned->Table();
  EXPECT_EQ(planned->plan.converted_layers(), 0) << planned->Table();
  EXPECT_EQ(planned->plan.fidelity, 1.0);
  EXPECT_EQ(planned->predicted_peak_bytes, lean->peak_bytes);
  for (const PlanSpec::Layer& layer : planned->spec.layers) EXPECT_EQ(layer.probes, 0) << layer.path;

  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(options, planned->spec);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  EXPECT_EQ((*trainer)->training_plan()->spec, planned->spec);
  EXPECT_EQ((*trainer)->predicted_peak_bytes(), planned->predicted_peak_bytes);
  for (const auto& [path, probes] : (*trainer)->layer_probes()) EXPECT_EQ(probes, 0) << path;
  int lean_modules = 0, torch_relus = 0;
  for (const auto& item : (*trainer)->model()->named_modules("", false)) {
    if (dynamic_cast<MaskReLUImpl*>(item.value().get()) != nullptr ||
        dynamic_cast<IndexMaxPoolImpl*>(item.value().get()) != nullptr) {
      ++lean_modules;
    }
    if (dynamic_cast<torch::nn::ReLUImpl*>(item.value().get()) != nullptr) ++torch_relus;
  }
  EXPECT_GT(lean_modules, 0);
  EXPECT_EQ(torch_relus, 0);
  EventLog log;
  ASSERT_TRUE((*trainer)->Run(log.Callback()).ok());
  ASSERT_FALSE(log.Of(TrainEventKind::kStep).empty());
  for (const TrainEvent& step : log.Of(TrainEventKind::kStep)) {
    EXPECT_LE(step.measured_peak_bytes, options.memory.budget_bytes) << "step " << step.step;
  }
}

TEST(PlanSpec, MismatchesWithTheOptionsAreRefusedWithASentence) {
  TrainOptions options = PlannedCnnOptions();
  absl::StatusOr<TrainingPlan> exact = PlanTraining(options);
  ASSERT_TRUE(exact.ok()) << exact.status();
  options.memory.budget_bytes = ConvertingBudget(options, *exact);
  absl::StatusOr<TrainingPlan> planned = PlanTraining(options);
  ASSERT_TRUE(planned.ok()) << planned.status();
  const PlanSpec good = planned->spec;

  auto expect = [&](const TrainOptions& o, const PlanSpec& spec, absl::StatusCode code, const std::string& words) {
    const absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(o, spec);
    EXPECT_EQ(trainer.status().code(), code) << trainer.status();
    EXPECT_THAT(trainer.status().message(), HasSubstr(words));
  };
  PlanSpec spec = good;
  spec.batch = 16;
  expect(options, spec, absl::StatusCode::kInvalidArgument, "set batch_size to 16");

  spec = good;
  spec.layers[1].path = "features.4";
  expect(options, spec, absl::StatusCode::kFailedPrecondition, "plan again for this model");

  TrainOptions other = options;
  other.model.name = "strided_grouped";
  other.model.width = 4;
  expect(other, good, absl::StatusCode::kFailedPrecondition, "plan again for this model");

  // The exact job's spec does not fit this budget.
  expect(options, exact->spec, absl::StatusCode::kFailedPrecondition, "raise memory.budget_bytes to at least");

  spec = good;
  spec.layers[0].probes = -2;
  expect(options, spec, absl::StatusCode::kInvalidArgument, "features.0");

  spec = good;
  spec.lean_layers = false;
  expect(options, spec, absl::StatusCode::kInvalidArgument, "lean_layers");

  TrainOptions fixed = options;
  fixed.memory.budget_bytes = 0;
  fixed.memory.fixed_probes = 4;
  expect(fixed, good, absl::StatusCode::kInvalidArgument, "memory.fixed_probes");
}

TEST(OneJobPerProcess, ASecondJobBesideATrainerIsRefused) {
  const TrainOptions options = PlannedCnnOptions();
  absl::StatusOr<std::unique_ptr<Trainer>> first = Trainer::Create(options);
  ASSERT_TRUE(first.ok()) << first.status();

  const absl::StatusOr<std::unique_ptr<Trainer>> second = Trainer::Create(options);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
  EXPECT_THAT(second.status().message(), HasSubstr("one job per process"));
  EXPECT_THAT(second.status().message(), HasSubstr("a Trainer (model small_cnn) holds"));

  EXPECT_EQ(PlanTraining(options).status().code(), absl::StatusCode::kFailedPrecondition);

  ModelFactory factory = []() -> absl::StatusOr<std::shared_ptr<torch::nn::Module>> {
    absl::StatusOr<std::shared_ptr<NetworkImpl>> model = BuildModel({.name = "small_cnn", .width = 4});
    if (!model.ok()) return model.status();
    return std::shared_ptr<torch::nn::Module>(*std::move(model));
  };
  ForwardFn forward = [](torch::nn::Module& model, const torch::Tensor& input) {
    return dynamic_cast<NetworkImpl&>(model).forward(input);
  };
  TrainingStep step;
  step.sample_sizes = {1, 16, 16};
  const absl::StatusOr<MemoryModel> built = MemoryModel::Build(factory, forward, step);
  EXPECT_EQ(built.status().code(), absl::StatusCode::kFailedPrecondition) << built.status();
  EXPECT_THAT(built.status().message(), HasSubstr("a MemoryModel::Build cannot start"));

  // The first job is unaffected, and once it is gone the next one starts.
  EventLog log;
  EXPECT_TRUE((*first)->Run(log.Callback()).ok());
  first->reset();
  EXPECT_TRUE(MemoryModel::Build(factory, forward, step).ok());
  EXPECT_TRUE(Trainer::Create(options).ok());
}

}  // namespace
}  // namespace xtrain::core
