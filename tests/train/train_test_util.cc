#include "tests/train/train_test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "core/data/synthetic.h"

namespace xtrain::core::testing {

namespace {

Split Cut(absl::StatusOr<TensorDataset> data, int64_t train) {
  EXPECT_TRUE(data.ok()) << data.status();
  const int64_t n = data->size();
  Split split;
  split.train = std::make_shared<const TensorDataset>(GatherExamples(*data, torch::arange(0, train, torch::kLong)));
  split.validation = std::make_shared<const TensorDataset>(GatherExamples(*data, torch::arange(train, n, torch::kLong)));
  return split;
}

}  // namespace

Split Classification(int64_t train, int64_t validation, std::vector<int64_t> spatial, int64_t classes,
                     uint64_t seed) {
  return Cut(MakeSyntheticClassification(train + validation, 1, spatial, classes, seed), train);
}

Split Segmentation(int64_t train, int64_t validation, std::vector<int64_t> spatial, int64_t classes,
                   uint64_t seed) {
  return Cut(MakeSyntheticSegmentation(train + validation, 1, spatial, classes, seed), train);
}

Split Images(int64_t train, int64_t validation, std::vector<int64_t> spatial, uint64_t seed) {
  absl::StatusOr<TensorDataset> data = MakeSyntheticClassification(train + validation, 1, spatial, 4, seed);
  if (data.ok()) data->targets = torch::Tensor();
  return Cut(std::move(data), train);
}

TrainOptions SmallCnnOptions(uint64_t seed) {
  TrainOptions options;
  options.model.name = "small_cnn";
  options.model.width = 8;
  options.model.classes = 4;
  options.model.seed = seed;
  options.task.kind = TaskKind::kClassification;
  const Split data = Classification(128, 64, {16, 16}, 4, seed);
  options.data.train = data.train;
  options.data.validation = data.validation;
  options.batch_size = 16;
  options.epochs = 2;
  options.seed = seed;
  options.optimizer.kind = OptimizerKind::kAdam;
  options.optimizer.lr = 0.01;
  options.fidelity_interval = 0;
  options.threads = kTestThreads;
  return options;
}

TrainOptions PlannedCnnOptions(uint64_t model_seed, uint64_t data_seed) {
  TrainOptions options = SmallCnnOptions(model_seed);
  options.model.width = 16;
  options.data.train = Classification(128, 0, {32, 32}, 4, data_seed).train;
  options.data.validation = nullptr;
  options.batch_size = 32;
  options.epochs = 1;
  return options;
}

int64_t ConvertingBudget(const TrainOptions& options, const TrainingPlan& exact) {
  TrainOptions roomy = options;
  roomy.memory.budget_bytes = exact.exact_peak_bytes;
  absl::StatusOr<TrainingPlan> planned = PlanTraining(roomy);
  EXPECT_TRUE(planned.ok()) << planned.status();
  int64_t lean = exact.exact_peak_bytes;
  if (planned.ok()) {
    for (const ChainPoint& point : planned->chain) {
      const bool xconv =
          std::any_of(point.choices.begin(), point.choices.end(), [](const LayerChoice& c) { return c.xconv; });
      if (point.lean_layers && !xconv) lean = point.peak_bytes;
    }
  }
  const auto lean_budget =
      static_cast<int64_t>(std::ceil(static_cast<double>(lean) / (1.0 - options.memory.planner.margin)));
  return (exact.minimum_budget_bytes + lean_budget) / 2;
}

EventCallback EventLog::Callback() {
  return [this](const TrainEvent& event) { events_.push_back(event); };
}

std::vector<TrainEvent> EventLog::Of(TrainEventKind kind) const {
  std::vector<TrainEvent> out;
  for (const TrainEvent& e : events_) {
    if (e.kind == kind) out.push_back(e);
  }
  return out;
}

std::vector<double> EventLog::StepLosses() const {
  std::vector<double> losses;
  for (const TrainEvent& e : Of(TrainEventKind::kStep)) losses.push_back(e.loss);
  return losses;
}

double MeanOfFirst(const std::vector<double>& values, size_t k) {
  k = std::min(k, values.size());
  return std::accumulate(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(k), 0.0) /
         static_cast<double>(k);
}

double MeanOfLast(const std::vector<double>& values, size_t k) {
  k = std::min(k, values.size());
  return std::accumulate(values.end() - static_cast<std::ptrdiff_t>(k), values.end(), 0.0) /
         static_cast<double>(k);
}

std::string FreshDir(const std::string& name) {
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / ("xtrain_train_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

std::vector<std::pair<std::string, torch::Tensor>> Snapshot(torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : module.named_parameters()) out.emplace_back(p.key(), p.value().detach().clone());
  for (const auto& b : module.named_buffers()) out.emplace_back(b.key(), b.value().clone());
  return out;
}

}  // namespace xtrain::core::testing
