#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "core/memory/planner.h"
#include "core/xconv/modules.h"
#include "tests/memory_test_nets.h"

namespace xtrain::core {
namespace {

using testing::MemoryTestNets;
using testing::TestNet;

TestNet NetNamed(const std::string& name) {
  for (const TestNet& net : MemoryTestNets()) {
    if (net.name == name) return net;
  }
  ADD_FAILURE() << "no test net " << name;
  return {};
}

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
      model->DebugCompare(net.factory, net.forward, plan->choices, plan->lean_layers,
                          PlanConvertOptions(*plan, *model, 99), kBatch);
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

// The chain rises: peaks strictly up, fidelity never down, exact last; MakePlan at each point's
// smallest budget gives that point and one byte less the point before it; MinimumBudget is the
// first point's budget and no lower than any plan the model predicts along the way.
TEST_P(PlannerNets, ChainRisesAndMakePlanWalksIt) {
  const TestNet& net = GetParam();
  absl::StatusOr<MemoryModel> model = MemoryModel::Build(net.factory, net.forward, StepFor(net));
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<std::vector<ChainPoint>> chain = PlanChain(*model, kBatch);
  ASSERT_TRUE(chain.ok()) << chain.status();
  ASSERT_FALSE(chain->empty());
  const ChainPoint& exact = chain->back();
  EXPECT_FALSE(exact.lean_layers);
  EXPECT_EQ(exact.fidelity, 1.0);
  EXPECT_EQ(exact.peak_bytes, model->PredictPeak(model->ExactChoices(), kBatch));
  for (const LayerChoice& c : exact.choices) EXPECT_FALSE(c.xconv);
  const PlannerOptions options;
  for (size_t i = 0; i < chain->size(); ++i) {
    const ChainPoint& point = (*chain)[i];
    EXPECT_EQ(point.peak_bytes, model->PredictPeak(point.choices, kBatch, point.lean_layers)) << i;
    if (i > 0) {
      EXPECT_GT(point.peak_bytes, (*chain)[i - 1].peak_bytes) << i;
      EXPECT_GE(point.fidelity, (*chain)[i - 1].fidelity) << i;
    }
    const int64_t budget = BudgetForPeak(point.peak_bytes, options);
    // The budget the docs name, peak / (1 - margin), rounded up: the same up to rounding.
    EXPECT_NEAR(static_cast<double>(budget),
                std::ceil(static_cast<double>(point.peak_bytes) / (1.0 - options.margin)), 1.0);
    absl::StatusOr<Plan> plan = MakePlan(*model, budget, kBatch);
    ASSERT_TRUE(plan.ok()) << i << ": " << plan.status();
    EXPECT_EQ(plan->predicted_peak_bytes(), point.peak_bytes) << i;
    EXPECT_EQ(plan->lean_layers, point.lean_layers) << i;
    EXPECT_EQ(plan->fidelity, point.fidelity) << i;
    for (size_t l = 0; l < point.choices.size(); ++l) {
      EXPECT_EQ(plan->choices[l].xconv, point.choices[l].xconv) << i << " layer " << l;
      EXPECT_EQ(plan->choices[l].probes, point.choices[l].probes) << i << " layer " << l;
    }
    absl::StatusOr<Plan> below = MakePlan(*model, budget - 1, kBatch);
    if (i == 0) {
      EXPECT_EQ(below.status().code(), absl::StatusCode::kResourceExhausted);
    } else {
      ASSERT_TRUE(below.ok()) << below.status();
      EXPECT_EQ(below->predicted_peak_bytes(), (*chain)[i - 1].peak_bytes) << i;
    }
  }
  EXPECT_EQ(MinimumBudget(*model, kBatch), BudgetForPeak(chain->front().peak_bytes));
  // Predicted independently: exact, lean layers alone, every freeable layer at the fewest probes.
  std::vector<LayerChoice> fewest = model->ExactChoices();
  for (size_t l = 0; l < fewest.size(); ++l) {
    if (model->layers()[l].convertible() && model->InputFreeable(l)) fewest[l] = {true, options.min_probes};
  }
  for (const auto& [choices, lean] : {std::pair{model->ExactChoices(), false}, std::pair{model->ExactChoices(), true},
                                      std::pair{fewest, true}}) {
    EXPECT_LE(chain->front().peak_bytes, model->PredictPeak(choices, kBatch, lean));
  }
}

// Lean layers with every conv exact is a plan of its own: no gradient noise, chosen where it fits
// before any XConv, and its measured peak is what the model predicts for it.
TEST_P(PlannerNets, LeanLayersAlonePlanWithExactGradients) {
  const TestNet& net = GetParam();
  absl::StatusOr<MemoryModel> model = MemoryModel::Build(net.factory, net.forward, StepFor(net));
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<std::vector<ChainPoint>> chain = PlanChain(*model, kBatch);
  ASSERT_TRUE(chain.ok()) << chain.status();
  const auto lean = std::find_if(chain->begin(), chain->end(), [](const ChainPoint& p) {
    return p.lean_layers && std::none_of(p.choices.begin(), p.choices.end(), [](const LayerChoice& c) { return c.xconv; });
  });
  if (lean == chain->end()) {
    // Lean layers free nothing here (every ReLU's output is the next conv's input, kept anyway),
    // so the chain drops them: they do not undercut exact. The U-Net's max pool keeps int64
    // indices that its lean form does not: there they save.
    EXPECT_NE(net.name, "unet");
    EXPECT_GE(model->PredictPeak(model->ExactChoices(), kBatch, /*lean_layers=*/true), chain->back().peak_bytes);
    return;
  }
  ASSERT_EQ(lean + 2, chain->end());  // just before exact
  EXPECT_EQ(lean->fidelity, 1.0);
  const int64_t budget = BudgetForPeak(lean->peak_bytes);
  absl::StatusOr<Plan> plan = MakePlan(*model, budget, kBatch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->lean_layers);
  EXPECT_EQ(plan->converted_layers(), 0);
  EXPECT_EQ(plan->fidelity, 1.0);
  EXPECT_LT(plan->predicted_peak_bytes(), plan->exact_peak_bytes);
  EXPECT_NE(plan->Table().find("lean layers: on"), std::string::npos) << plan->Table();
  // Applying it swaps the ReLUs and max pools; the convs stay exact.
  absl::StatusOr<ConvertResult> applied = ApplyPlan(*net.factory(), *plan, *model, 5);
  ASSERT_TRUE(applied.ok()) << applied.status();
  int lean_modules = 0;
  for (const auto& item : applied->module->named_modules()) {
    if (dynamic_cast<MaskReLUImpl*>(item.value().get()) || dynamic_cast<IndexMaxPoolImpl*>(item.value().get())) {
      ++lean_modules;
    }
    if (auto* x = dynamic_cast<XConv2dImpl*>(item.value().get())) {
      EXPECT_EQ(x->settings().probes, 0) << item.key();
    }
    if (auto* x = dynamic_cast<XConv3dImpl*>(item.value().get())) {
      EXPECT_EQ(x->settings().probes, 0) << item.key();
    }
  }
  EXPECT_GT(lean_modules, 0);
  absl::StatusOr<int64_t> measured = MeasurePlan(net, *model, *plan);
  ASSERT_TRUE(measured.ok()) << measured.status();
  EXPECT_LE(*measured, budget) << plan->Table();
  EXPECT_LE(std::abs(RelativeError(plan->predicted_peak_bytes(), *measured)), 0.03) << plan->Table();
  // The largest batch with exact gradients: lean layers hold more than the exact model.
  const int64_t exact_peak = model->PredictPeak(model->ExactChoices(), kBatch);
  EXPECT_GT(LargestBatch(*model, exact_peak, {}, /*min_fidelity=*/1.0),
            LargestBatch(*model, exact_peak, {}, 0, /*exact_only=*/true));
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

// Convs XConv cannot run (reflect and replicate padding) stay torch convs in every plan, are
// listed with the reason, and the rest of the net still plans and fits.
TEST(Planner, ConvsXConvCannotRunStayExactWithTheReason) {
  at::set_num_threads(2);
  const TestNet net = NetNamed("padding_modes");
  absl::StatusOr<MemoryModel> model = MemoryModel::Build(net.factory, net.forward, StepFor(net));
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE(model->unknown_nodes().empty());
  ASSERT_EQ(model->layers().size(), 5u);
  for (size_t l : {1, 3}) {
    EXPECT_FALSE(model->layers()[l].convertible());
    EXPECT_NE(model->layers()[l].exact_reason.find("padding mode"), std::string::npos)
        << model->layers()[l].exact_reason;
  }
  std::vector<LayerChoice> choices = model->ExactChoices();
  choices[1] = {true, 4};
  EXPECT_EQ(model->CheckChoices(choices, kBatch).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanFromChoices(*model, choices, true, kBatch, 0).status().code(), absl::StatusCode::kInvalidArgument);
  // The smallest plan converts what it can and lists the others with their reason.
  const int64_t floor = MinimumBudget(*model, kBatch);
  absl::StatusOr<Plan> plan = MakePlan(*model, floor, kBatch);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_GT(plan->converted_layers(), 0);
  for (size_t l : {1, 3}) {
    EXPECT_FALSE(plan->choices[l].xconv);
    EXPECT_EQ(plan->layers[l].note, model->layers()[l].exact_reason);
    EXPECT_NE(plan->Table().find(model->layers()[l].exact_reason), std::string::npos) << plan->Table();
  }
  absl::StatusOr<int64_t> measured = MeasurePlan(net, *model, *plan);
  ASSERT_TRUE(measured.ok()) << measured.status();
  EXPECT_LE(*measured, floor) << plan->Table();
  EXPECT_LE(std::abs(RelativeError(plan->predicted_peak_bytes(), *measured)), 0.03) << plan->Table();
  // Convert on its own still refuses them unless told to leave them exact.
  EXPECT_EQ(Convert(*net.factory(), {}).status().code(), absl::StatusCode::kInvalidArgument);
  ConvertOptions leave;
  leave.unsupported_stay_exact = true;
  absl::StatusOr<ConvertResult> converted = Convert(*net.factory(), leave);
  ASSERT_TRUE(converted.ok()) << converted.status();
  EXPECT_EQ(converted->left_exact.size(), 2u);
  EXPECT_EQ(converted->left_exact.count("2"), 1u);
}

// The model counts every byte a converted plan adds, XConv's seed and step buffers included: on
// its own calibration runs it predicts the live bytes before every backward node exactly.
TEST(MemoryModel, CalibrationRunsArePredictedExactly) {
  at::set_num_threads(2);
  for (const TestNet& net : {NetNamed("plain"), NetNamed("unet")}) {
    absl::StatusOr<MemoryModel> model = MemoryModel::Build(net.factory, net.forward, StepFor(net));
    ASSERT_TRUE(model.ok()) << model.status();
    EXPECT_EQ(model->calibration_error(), 0.0) << net.name;
  }
}

// Small maps (8x8 boards, 64 channels): LibTorch runs other conv kernels at the job's batch than at
// the calibration batches, so their lines miss; the layers probed alone catch it. Exact, lean and
// XConv plans hold at the job's batch and at the largest batches the exact peak holds.
TEST(MemoryModel, SmallMapsHoldAtTheJobsBatchAndTheLargest) {
  at::set_num_threads(2);
  const TestNet net = testing::BoardNet(16, 64, 6);
  TrainingStep step = StepFor(net);
  step.batch = 32;
  absl::StatusOr<MemoryModel> model = MemoryModel::Build(net.factory, net.forward, step);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<std::vector<ChainPoint>> chain = PlanChain(*model, step.batch);
  ASSERT_TRUE(chain.ok()) << chain.status();
  const int64_t exact = chain->back().peak_bytes;
  // The cheapest plan, one halfway, lean layers alone if they save, and exact.
  std::vector<ChainPoint> points = {chain->front(), (*chain)[chain->size() / 2], chain->back()};
  if (chain->size() > 1 && (chain->end() - 2)->lean_layers) points.push_back(*(chain->end() - 2));
  std::vector<std::pair<int64_t, Plan>> plans;
  for (const ChainPoint& point : points) {
    absl::StatusOr<Plan> plan = PlanFromChoices(*model, point.choices, point.lean_layers, step.batch,
                                                BudgetForPeak(point.peak_bytes));
    ASSERT_TRUE(plan.ok()) << plan.status();
    plans.emplace_back(step.batch, *plan);
  }
  const int64_t budget = BudgetForPeak(exact);
  const int64_t exact_batch = LargestBatch(*model, budget, {}, 0, /*exact_only=*/true);
  const int64_t lean_batch = LargestBatch(*model, budget, {}, /*min_fidelity=*/1.0);
  const int64_t xconv_batch = LargestBatch(*model, budget);
  EXPECT_GE(exact_batch, step.batch);
  EXPECT_GT(xconv_batch, exact_batch);
  for (int64_t batch : {exact_batch, lean_batch, xconv_batch}) {
    absl::StatusOr<Plan> plan = MakePlan(*model, budget, batch);
    ASSERT_TRUE(plan.ok()) << plan.status();
    plans.emplace_back(batch, *plan);
  }
  for (const auto& [batch, plan] : plans) {
    absl::StatusOr<int64_t> measured = MeasurePlan(net, *model, plan);
    ASSERT_TRUE(measured.ok()) << measured.status();
    std::printf("batch %ld, %d XConv, lean %d: predicted %ld measured %ld error %+.4f\n", batch,
                plan.converted_layers(), plan.lean_layers, plan.predicted_peak_bytes(), *measured,
                RelativeError(plan.predicted_peak_bytes(), *measured));
    EXPECT_LE(*measured, plan.budget_bytes) << "batch " << batch << "\n" << plan.Table();
    EXPECT_LE(std::abs(RelativeError(plan.predicted_peak_bytes(), *measured)), 0.03) << plan.Table();
  }
}

// A 3-D net of stride-2 convs, where the first layer's output dominates: converting every layer
// at the fewest probes needs more than exact here. The refusal and MinimumBudget name the chain's
// first point, the true minimum, and that plan fits when measured.
TEST(Planner, RefusalNamesTheTrueMinimum) {
  at::set_num_threads(2);
  const TestNet net = testing::Strided3dNet();
  constexpr int64_t kBatch3d = 32;
  absl::StatusOr<MemoryModel> model = MemoryModel::Build(net.factory, net.forward, StepFor(net));
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<std::vector<ChainPoint>> chain = PlanChain(*model, kBatch3d);
  ASSERT_TRUE(chain.ok()) << chain.status();
  std::vector<LayerChoice> fewest = model->ExactChoices();
  for (size_t l = 1; l < fewest.size(); ++l) fewest[l] = {true, 2};  // layer 0 reads the batch
  const int64_t fewest_peak = model->PredictPeak(fewest, kBatch3d);
  const int64_t exact_peak = model->PredictPeak(model->ExactChoices(), kBatch3d);
  std::printf("every layer at 2 probes %ld, exact %ld, cheapest plan %ld\n", fewest_peak, exact_peak,
              chain->front().peak_bytes);
  EXPECT_LE(chain->front().peak_bytes, std::min(fewest_peak, exact_peak));
  const int64_t minimum = MinimumBudget(*model, kBatch3d);
  EXPECT_EQ(minimum, BudgetForPeak(chain->front().peak_bytes));
  absl::StatusOr<Plan> refused = MakePlan(*model, minimum - 1, kBatch3d);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string message(refused.status().message());
  EXPECT_NE(message.find(absl::StrCat("needs ", chain->front().peak_bytes, " bytes")), std::string::npos) << message;
  EXPECT_NE(message.find(absl::StrCat("at least ", minimum, " bytes")), std::string::npos) << message;
  absl::StatusOr<Plan> plan = MakePlan(*model, minimum, kBatch3d);
  ASSERT_TRUE(plan.ok()) << plan.status();
  absl::StatusOr<int64_t> measured = MeasurePlan(net, *model, *plan);
  ASSERT_TRUE(measured.ok()) << measured.status();
  EXPECT_LE(*measured, minimum) << plan->Table();
}

// A batch < 1 has no prediction and no plan; the largest batch is searched without a cap.
TEST(Planner, RefusesBatchesBelowOneAndSearchesBatchesWithoutCap) {
  at::set_num_threads(2);
  const TestNet net = NetNamed("plain");
  absl::StatusOr<MemoryModel> model = MemoryModel::Build(net.factory, net.forward, StepFor(net));
  ASSERT_TRUE(model.ok()) << model.status();
  for (int64_t batch : {0, -1, -64}) {
    EXPECT_EQ(model->CheckChoices(model->ExactChoices(), batch).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(model->Predict(model->ExactChoices(), batch).phase, "invalid");
    EXPECT_EQ(model->PredictPeak(model->ExactChoices(), batch), INT64_MAX);
    EXPECT_EQ(MinimumBudget(*model, batch), INT64_MAX);
    EXPECT_EQ(PlanChain(*model, batch).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(MakePlan(*model, 1 << 30, batch).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(model->PredictPeak(std::vector<LayerChoice>(3), kBatch), INT64_MAX);  // not one choice per layer
  EXPECT_EQ(LargestBatch(*model, -5), 0);
  EXPECT_EQ(LargestBatch(*model, 1000), 0);  // not even the parameters fit
  // A petabyte holds far more than 2^24 samples of this net; the answer is the last that fits.
  const int64_t petabyte = int64_t{1} << 50;
  const int64_t usable = UsableBytes(petabyte);
  const int64_t largest = LargestBatch(*model, petabyte, {}, 0, /*exact_only=*/true);
  EXPECT_GT(largest, int64_t{1} << 24);
  EXPECT_LE(model->PredictPeak(model->ExactChoices(), largest), usable);
  EXPECT_GT(model->PredictPeak(model->ExactChoices(), largest + 1), usable);
  const int64_t planned = LargestBatch(*model, petabyte);
  EXPECT_GT(planned, largest);
  absl::StatusOr<Plan> plan = MakePlan(*model, petabyte, planned);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(MakePlan(*model, petabyte, planned + 1).status().code(), absl::StatusCode::kResourceExhausted);
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
