#include <cstdlib>
#include <map>

#include <gtest/gtest.h>

#include "core/memory/planner.h"
#include "tests/memory_test_nets.h"

namespace xtrain::core {
namespace {

using testing::MemoryTestNets;
using testing::TestNet;

constexpr int64_t kBatch = 16;

TrainingStep StepFor(const TestNet& net, OptimizerKind optimizer = OptimizerKind::kSgdMomentum,
                     torch::ScalarType dtype = torch::kFloat) {
  TrainingStep step;
  step.sample_sizes = net.sample_sizes;
  step.batch = kBatch;
  step.loss = net.loss;
  step.optimizer = optimizer;
  step.dtype = dtype;
  return step;
}

// The measured peak of a training step with `plan` applied.
absl::StatusOr<int64_t> MeasurePlan(const TestNet& net, const MemoryModel& model, const Plan& plan) {
  return MeasureTrainingPeak(net.factory, net.forward, model.step(), plan.batch,
                             [&](std::shared_ptr<torch::nn::Module> root)
                                 -> absl::StatusOr<std::shared_ptr<torch::nn::Module>> {
                               absl::StatusOr<ConvertResult> converted = ApplyPlan(root, plan, model, 99);
                               if (!converted.ok()) return converted.status();
                               return converted->module;
                             });
}

double RelativeError(int64_t predicted, int64_t measured) {
  return static_cast<double>(predicted - measured) / static_cast<double>(measured);
}

class PlannerNets : public ::testing::TestWithParam<TestNet> {
 protected:
  void SetUp() override { at::set_num_threads(2); }
};

// Budgets from 20% to 100% of the exact peak: each planned model trains (forward, backward,
// optimizer step) with its measured peak at or under the budget and within 3% of the prediction;
// a budget below the floor is refused with the smallest budget that fits, which then plans.
TEST_P(PlannerNets, PlannedStepFitsBudgetAndMatchesPrediction) {
  const TestNet& net = GetParam();
  absl::StatusOr<MemoryModel> model = MemoryModel::Build(net.factory, net.forward, StepFor(net));
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE(model->unknown_nodes().empty());
  const int64_t exact = model->PredictPeak(model->ExactChoices(), kBatch);
  absl::StatusOr<int64_t> measured_exact =
      MeasureTrainingPeak(net.factory, net.forward, model->step(), kBatch, nullptr);
  ASSERT_TRUE(measured_exact.ok()) << measured_exact.status();
  EXPECT_LE(std::abs(RelativeError(exact, *measured_exact)), 0.03);
  int planned = 0;
  for (int percent = 20; percent <= 100; percent += 10) {
    const int64_t budget = exact * percent / 100;
    absl::StatusOr<Plan> plan = MakePlan(*model, budget, kBatch);
    if (!plan.ok()) {
      EXPECT_EQ(plan.status().code(), absl::StatusCode::kResourceExhausted) << plan.status();
      EXPECT_GT(MinimumBudget(*model, kBatch), budget);
      EXPECT_NE(plan.status().message().find("raise the budget to at least"), absl::string_view::npos);
      continue;
    }
    ++planned;
    absl::StatusOr<int64_t> measured = MeasurePlan(net, *model, *plan);
    ASSERT_TRUE(measured.ok()) << measured.status();
    if (std::getenv("XTRAIN_MEMORY_DEBUG") && percent == std::atoi(std::getenv("XTRAIN_MEMORY_DEBUG"))) {
      for (const auto& u : model->unknown_nodes()) std::printf("unknown node %s\n", u.c_str());
      model->DebugCompare(net.factory, net.forward, plan->choices, PlanConvertOptions(*plan, *model, 99), kBatch);
    }
    const double error = RelativeError(plan->predicted_peak_bytes(), *measured);
    std::printf("%s %3d%%: predicted %ld measured %ld error %+.4f, %d of %zu layers XConv, fidelity %.3f\n",
                net.name.c_str(), percent, plan->predicted_peak_bytes(), *measured, error,
                plan->converted_layers(), plan->choices.size(), plan->fidelity);
    EXPECT_LE(*measured, budget) << plan->Table();
    EXPECT_LE(std::abs(error), 0.03) << plan->Table();
  }
  EXPECT_GT(planned, 0);
  // The floor itself plans, and the plan there fits when measured.
  const int64_t floor = MinimumBudget(*model, kBatch);
  absl::StatusOr<Plan> at_floor = MakePlan(*model, floor, kBatch);
  ASSERT_TRUE(at_floor.ok()) << at_floor.status();
  absl::StatusOr<int64_t> measured = MeasurePlan(net, *model, *at_floor);
  ASSERT_TRUE(measured.ok());
  EXPECT_LE(*measured, floor);
  EXPECT_EQ(MakePlan(*model, floor - floor / 50, kBatch).status().code(), absl::StatusCode::kResourceExhausted);
}

// A larger budget never lowers the fidelity; a smaller one never raises the predicted peak.
TEST_P(PlannerNets, PlansAreMonotoneInTheBudget) {
  const TestNet& net = GetParam();
  absl::StatusOr<MemoryModel> model = MemoryModel::Build(net.factory, net.forward, StepFor(net));
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t exact = model->PredictPeak(model->ExactChoices(), kBatch);
  const int64_t floor = MinimumBudget(*model, kBatch);
  double last_fidelity = 0;
  int64_t last_peak = 0;
  for (int i = 0; i <= 60; ++i) {
    const int64_t budget = floor + (exact * 12 / 10 - floor) * i / 60;
    absl::StatusOr<Plan> plan = MakePlan(*model, budget, kBatch);
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_LE(plan->predicted_peak_bytes(), plan->usable_bytes);
    EXPECT_GE(plan->fidelity, last_fidelity) << "budget " << budget;
    EXPECT_GE(plan->predicted_peak_bytes(), last_peak) << "budget " << budget;
    last_fidelity = plan->fidelity;
    last_peak = plan->predicted_peak_bytes();
  }
  EXPECT_EQ(last_fidelity, 1.0);  // 120% of the exact peak: nothing converted
}

INSTANTIATE_TEST_SUITE_P(Nets, PlannerNets, ::testing::ValuesIn(MemoryTestNets()),
                         [](const ::testing::TestParamInfo<TestNet>& info) { return info.param.name; });

// Parameters, gradients and optimizer state are counted per optimizer; Adam's two moments show
// in the measured peak as predicted.
TEST(MemoryModel, OptimizerStateIsCounted) {
  at::set_num_threads(2);
  const TestNet net = MemoryTestNets()[0];
  int64_t parameter_bytes = 0;
  for (const auto& p : (*net.factory())->parameters()) parameter_bytes += static_cast<int64_t>(p.nbytes());
  for (OptimizerKind kind : {OptimizerKind::kSgd, OptimizerKind::kAdam}) {
    absl::StatusOr<MemoryModel> model = MemoryModel::Build(net.factory, net.forward, StepFor(net, kind));
    ASSERT_TRUE(model.ok()) << model.status();
    const MemoryPrediction p = model->Predict(model->ExactChoices(), kBatch);
    EXPECT_EQ(p.parameter_bytes, parameter_bytes);
    EXPECT_EQ(p.gradient_bytes, parameter_bytes);
    EXPECT_EQ(p.optimizer_state_bytes, OptimizerStateMultiple(kind) * parameter_bytes);
    absl::StatusOr<int64_t> measured = MeasureTrainingPeak(net.factory, net.forward, model->step(), kBatch, nullptr);
    ASSERT_TRUE(measured.ok());
    EXPECT_LE(std::abs(RelativeError(p.peak_bytes, *measured)), 0.03) << OptimizerKindName(kind);
  }
}

// The model works in bfloat16 (half the activation bytes) and at other batch sizes.
TEST(MemoryModel, PredictsBfloat16AndOtherBatches) {
  at::set_num_threads(2);
  const TestNet net = MemoryTestNets()[0];
  absl::StatusOr<MemoryModel> model =
      MemoryModel::Build(net.factory, net.forward, StepFor(net, OptimizerKind::kSgdMomentum, torch::kBFloat16));
  ASSERT_TRUE(model.ok()) << model.status();
  for (int64_t batch : {8, 24}) {
    absl::StatusOr<Plan> plan = MakePlan(*model, MinimumBudget(*model, batch) * 5 / 4, batch);
    ASSERT_TRUE(plan.ok()) << plan.status();
    absl::StatusOr<int64_t> measured = MeasurePlan(net, *model, *plan);
    ASSERT_TRUE(measured.ok()) << measured.status();
    EXPECT_LE(*measured, plan->budget_bytes);
    EXPECT_LE(std::abs(RelativeError(plan->predicted_peak_bytes(), *measured)), 0.03) << plan->Table();
  }
}

// The largest batch for a budget fits it, exact and planned, and XConv fits more.
TEST(Planner, LargestBatchFitsAndXConvFitsMore) {
  at::set_num_threads(2);
  const TestNet net = MemoryTestNets()[0];
  absl::StatusOr<MemoryModel> model = MemoryModel::Build(net.factory, net.forward, StepFor(net));
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t budget = model->PredictPeak(model->ExactChoices(), kBatch);
  const int64_t exact_batch = LargestBatch(*model, budget, {}, 0, /*exact_only=*/true);
  const int64_t xconv_batch = LargestBatch(*model, budget);
  EXPECT_GE(exact_batch, kBatch * 9 / 10);
  EXPECT_GT(xconv_batch, exact_batch);
  absl::StatusOr<Plan> plan = MakePlan(*model, budget, xconv_batch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  absl::StatusOr<int64_t> measured = MeasurePlan(net, *model, *plan);
  ASSERT_TRUE(measured.ok());
  EXPECT_LE(*measured, budget);
  EXPECT_FALSE(MakePlan(*model, budget, xconv_batch + 1).ok());
}

// A minimum fidelity lowers the largest batch, and the plan there meets it.
TEST(Planner, LargestBatchHonoursMinimumFidelity) {
  at::set_num_threads(2);
  const TestNet net = MemoryTestNets()[0];
  absl::StatusOr<MemoryModel> model = MemoryModel::Build(net.factory, net.forward, StepFor(net));
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t budget = model->PredictPeak(model->ExactChoices(), kBatch);
  const int64_t any = LargestBatch(*model, budget);
  const int64_t faithful = LargestBatch(*model, budget, {}, 0.9);
  EXPECT_LT(faithful, any);
  ASSERT_GT(faithful, 0);
  absl::StatusOr<Plan> plan = MakePlan(*model, budget, faithful);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_GE(plan->fidelity, 0.9);
  absl::StatusOr<Plan> next = MakePlan(*model, budget, faithful + 1);
  EXPECT_TRUE(!next.ok() || next->fidelity < 0.9);
}

// The per-layer table: exact layers keep their input, XConv layers their sketch and means, mask
// ReLUs one bit per element; every conv has a working set.
TEST(MemoryModel, TableExplainsThePlan) {
  at::set_num_threads(2);
  const TestNet net = MemoryTestNets()[0];
  absl::StatusOr<MemoryModel> model = MemoryModel::Build(net.factory, net.forward, StepFor(net));
  ASSERT_TRUE(model.ok()) << model.status();
  std::vector<LayerChoice> choices = model->ExactChoices();
  choices[1] = {true, 8, ProbeMode::kIndependent};
  int convs = 0, relus = 0;
  for (const MemoryRow& row : model->Table(choices, kBatch)) {
    if (row.kind == "conv" || row.kind == "xconv") {
      ++convs;
      EXPECT_GT(row.transient_bytes, 0) << row.name;
      const int64_t in_channels = row.name == "0" ? 3 : 32;
      EXPECT_EQ(row.exact_kept_bytes, kBatch * in_channels * 32 * 32 * 4) << row.name;
      if (row.kind == "xconv") {
        EXPECT_EQ(row.kept_bytes, kBatch * in_channels * (8 + 1) * 4) << row.name;  // C_in (r + 1)
      } else {
        EXPECT_EQ(row.kept_bytes, row.exact_kept_bytes);
      }
    }
    if (row.kind == "mask-relu") {
      ++relus;
      EXPECT_EQ(row.kept_bytes, kBatch * 32 * 32 * 32 / 8);
    }
  }
  EXPECT_EQ(convs, 8);
  EXPECT_EQ(relus, 8);
  // The residual net's BatchNorms keep their inputs (conv outputs) whatever the plan.
  const TestNet residual = MemoryTestNets()[1];
  absl::StatusOr<MemoryModel> bn_model = MemoryModel::Build(residual.factory, residual.forward, StepFor(residual));
  ASSERT_TRUE(bn_model.ok()) << bn_model.status();
  int batchnorms = 0;
  for (const MemoryRow& row : bn_model->Table(bn_model->ExactChoices(), kBatch)) {
    if (row.kind != "batchnorm") continue;
    ++batchnorms;
    EXPECT_GE(row.kept_bytes, kBatch * 16 * 16 * 16 * 4) << row.name;  // at least C=16 at 16x16
  }
  EXPECT_EQ(batchnorms, 1 + 2 * 4 + 1);  // stem, two per block, one shortcut
  EXPECT_EQ(model->layers()[1].path, "2");
}

// Both probe modes allowed and a layer pinned exact: the plan honours both and still fits.
TEST(Planner, HonoursModesAndKeepExact) {
  at::set_num_threads(2);
  const TestNet net = MemoryTestNets()[0];
  MemoryModelOptions model_options;
  model_options.modes = {ProbeMode::kIndependent, ProbeMode::kMultiChannel};
  absl::StatusOr<MemoryModel> model = MemoryModel::Build(net.factory, net.forward, StepFor(net), model_options);
  ASSERT_TRUE(model.ok()) << model.status();
  PlannerOptions options;
  options.modes = model_options.modes;
  options.keep_exact = {"0"};
  const int64_t budget = MinimumBudget(*model, kBatch, options) * 11 / 10;
  absl::StatusOr<Plan> plan = MakePlan(*model, budget, kBatch, options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(plan->choices[0].xconv);
  EXPECT_GT(plan->converted_layers(), 0);
  absl::StatusOr<int64_t> measured = MeasurePlan(net, *model, *plan);
  ASSERT_TRUE(measured.ok()) << measured.status();
  EXPECT_LE(*measured, budget);
  EXPECT_LE(std::abs(RelativeError(plan->predicted_peak_bytes(), *measured)), 0.03) << plan->Table();
  // Multichannel keeps B*r per layer instead of B*C_in*r, so the floor with it is lower.
  PlannerOptions independent_only = options;
  independent_only.modes = {ProbeMode::kIndependent};
  EXPECT_LT(MinimumBudget(*model, kBatch, options), MinimumBudget(*model, kBatch, independent_only));
}

TEST(Planner, RejectsBadArguments) {
  at::set_num_threads(2);
  const TestNet net = MemoryTestNets()[0];
  absl::StatusOr<MemoryModel> model = MemoryModel::Build(net.factory, net.forward, StepFor(net));
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(MakePlan(*model, 0, kBatch).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakePlan(*model, 1 << 30, 0).status().code(), absl::StatusCode::kInvalidArgument);
  PlannerOptions options;
  options.modes = {ProbeMode::kMultiChannel};  // not calibrated
  EXPECT_EQ(MakePlan(*model, 1 << 30, kBatch, options).status().code(), absl::StatusCode::kInvalidArgument);
  TrainingStep bad = StepFor(net);
  bad.sample_sizes = {3};
  EXPECT_EQ(MemoryModel::Build(net.factory, net.forward, bad).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xtrain::core
