// The trainer end to end on small seeded data: every task learns, options and data are checked,
// cancellation, planned memory, finetuning.
#include "core/train/trainer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/memory/cpu_memory_meter.h"
#include "tests/train/train_test_util.h"

namespace xtrain::core {
namespace {

using ::testing::HasSubstr;
using namespace ::xtrain::core::testing;

// Trains `options` to the end and returns its events; fails the test on an error.
EventLog Train(const TrainOptions& options, std::unique_ptr<Trainer>* kept = nullptr) {
  EventLog log;
  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(options);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  if (!trainer.ok()) return log;
  const absl::Status status = (*trainer)->Run(log.Callback());
  EXPECT_TRUE(status.ok()) << status;
  if (kept != nullptr) *kept = *std::move(trainer);
  return log;
}

void ExpectLossFalls(const EventLog& log, size_t window, double factor) {
  const std::vector<double> losses = log.StepLosses();
  ASSERT_GE(losses.size(), 2 * window);
  for (double loss : losses) ASSERT_TRUE(std::isfinite(loss));
  EXPECT_LT(MeanOfLast(losses, window), factor * MeanOfFirst(losses, window))
      << "first " << MeanOfFirst(losses, window) << ", last " << MeanOfLast(losses, window) << ": "
      << ::testing::PrintToString(losses);
}

// A job of `kind` on `data` with Adam at `lr`, telemetry off, the tests' thread count.
TrainOptions TaskJob(const ModelSpec& model, TaskKind kind, const Split& data, int64_t batch, int64_t epochs,
                     double lr) {
  TrainOptions options;
  options.model = model;
  options.task.kind = kind;
  options.data.train = data.train;
  options.data.validation = data.validation;
  options.batch_size = batch;
  options.epochs = epochs;
  options.optimizer = {.kind = OptimizerKind::kAdam, .lr = lr};
  options.fidelity_interval = 0;
  options.threads = kTestThreads;
  return options;
}

TEST(Trainer, ClassificationLossFallsAndAccuracyRises) {
  TrainOptions options = SmallCnnOptions();
  options.epochs = 12;  // Adam leaves the initial plateau after ~60 steps on this data
  const EventLog log = Train(options);
  ExpectLossFalls(log, 8, 0.8);
  const std::vector<TrainEvent> epochs = log.Of(TrainEventKind::kEpoch);
  ASSERT_EQ(epochs.size(), 12u);
  EXPECT_EQ(epochs.back().metric_name, "accuracy");
  EXPECT_GT(epochs.back().metric_value, 0.5);  // 4 classes: chance is 0.25
  ASSERT_EQ(log.Of(TrainEventKind::kDone).size(), 1u);
  EXPECT_EQ(log.Of(TrainEventKind::kDone)[0].step, 96);
  EXPECT_EQ(log.Of(TrainEventKind::kDone)[0].metric_value, epochs.back().metric_value);
}

TEST(Trainer, SegmentationLossFallsWithDiceAndIou) {
  const TrainOptions options =
      TaskJob({.name = "unet", .in_channels = 1, .out_channels = 3, .width = 4, .depth = 2, .seed = 3},
              TaskKind::kSegmentation, Segmentation(96, 32, {16, 16}, 3, 3), 8, 2, 0.01);
  const EventLog log = Train(options);
  ExpectLossFalls(log, 4, 0.8);
  const TrainEvent last = log.Of(TrainEventKind::kEpoch).back();
  EXPECT_EQ(last.metric_name, "dice");
  ASSERT_TRUE(last.metrics.count("iou"));
  EXPECT_GT(last.metrics.at("dice"), 0.0);
  EXPECT_LE(last.metrics.at("iou"), last.metrics.at("dice"));
}

TEST(Trainer, SuperResolutionLossFallsWithPsnr) {
  TrainOptions options = TaskJob(
      {.name = "srnet", .in_channels = 1, .out_channels = 1, .width = 8, .depth = 2, .scale = 2, .seed = 5},
      TaskKind::kSuperResolution, Images(96, 32, {16, 16}, 5), 8, 2, 0.003);
  options.task.options.scale = 2;
  const EventLog log = Train(options);
  ExpectLossFalls(log, 4, 0.7);
  const TrainEvent last = log.Of(TrainEventKind::kEpoch).back();
  EXPECT_EQ(last.metric_name, "psnr");
  EXPECT_GT(last.metric_value, 10.0);
}

TEST(Trainer, InpaintingLossFallsWithHolePsnr) {
  const TrainOptions options =
      TaskJob({.name = "unet", .in_channels = 2, .out_channels = 1, .width = 4, .depth = 2, .seed = 7},
              TaskKind::kInpainting, Images(96, 32, {16, 16}, 7), 8, 2, 0.01);
  const EventLog log = Train(options);
  ExpectLossFalls(log, 4, 0.7);
  EXPECT_EQ(log.Of(TrainEventKind::kEpoch).back().metric_name, "psnr");
  EXPECT_TRUE(std::isfinite(log.Of(TrainEventKind::kEpoch).back().metric_value));
}

TEST(Trainer, GenerativeLossFalls) {
  TrainOptions options =
      TaskJob({.name = "ddpm_unet", .in_channels = 2, .out_channels = 1, .width = 4, .depth = 2, .seed = 9},
              TaskKind::kGenerative, Images(128, 32, {16, 16}, 9), 16, 3, 0.01);
  options.task.options.timesteps = 100;
  const EventLog log = Train(options);
  ExpectLossFalls(log, 12, 0.8);
  EXPECT_EQ(log.Of(TrainEventKind::kEpoch).back().metric_name, "val_loss");
}

TEST(Trainer, TrainsVolumesWithXConv) {
  TrainOptions options = SmallCnnOptions();
  options.model.dims = 3;
  {
    const Split data = Classification(192, 32, {8, 8, 8}, 4, 11);
    options.data.train = data.train;
    options.data.validation = data.validation;
  }
  options.memory.fixed_probes = 8;
  options.epochs = 10;
  std::unique_ptr<Trainer> trainer;
  const EventLog log = Train(options, &trainer);
  ExpectLossFalls(log, 12, 0.8);
  ASSERT_NE(trainer, nullptr);
  for (const auto& [path, probes] : trainer->layer_probes()) EXPECT_EQ(probes, 8) << path;
}

TEST(Trainer, BfloatTrainsAndFloat16IsRefused) {
  TrainOptions options = SmallCnnOptions();
  options.dtype = torch::kBFloat16;
  options.epochs = 12;
  std::unique_ptr<Trainer> trainer;
  const EventLog log = Train(options, &trainer);
  ExpectLossFalls(log, 8, 0.8);
  ASSERT_NE(trainer, nullptr);
  EXPECT_EQ(trainer->model()->parameters()[0].scalar_type(), torch::kBFloat16);

  options.dtype = torch::kHalf;
  const absl::StatusOr<std::unique_ptr<Trainer>> refused = Trainer::Create(options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("float16"));
  EXPECT_THAT(refused.status().message(), HasSubstr("bfloat16"));
}

TEST(Trainer, CancelStopsBeforeTheNextStep) {
  TrainOptions options = SmallCnnOptions();
  options.checkpoint.dir = FreshDir("cancel");
  std::atomic<bool> cancel{false};
  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(options);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  EventLog log;
  const EventCallback record = log.Callback();
  const absl::Status status = (*trainer)->Run(
      [&](const TrainEvent& event) {
        record(event);
        if (event.kind == TrainEventKind::kStep && event.step == 3) cancel = true;
      },
      &cancel);
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  EXPECT_EQ((*trainer)->step(), 3);
  EXPECT_EQ(log.Of(TrainEventKind::kStep).size(), 3u);
  ASSERT_EQ(log.Of(TrainEventKind::kCheckpoint).size(), 1u);  // written on cancel, to resume from
  EXPECT_TRUE(std::filesystem::exists(log.Of(TrainEventKind::kCheckpoint)[0].checkpoint_path));
  EXPECT_TRUE(log.Of(TrainEventKind::kDone).empty());
}

// Create's answer to `options`: InvalidArgument whose message names `field`.
void ExpectInvalid(const TrainOptions& options, const std::string& field) {
  const absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(options);
  ASSERT_FALSE(trainer.ok()) << "accepted; expected an error naming " << field;
  EXPECT_EQ(trainer.status().code(), absl::StatusCode::kInvalidArgument) << trainer.status();
  EXPECT_THAT(trainer.status().message(), HasSubstr(field));
}

TEST(Trainer, BadOptionsNameTheField) {
  // One change to a good job each, and what the error must name.
  struct BadOption {
    std::string field;
    std::function<void(TrainOptions&)> change;
  };
  const std::vector<BadOption> cases = {
      {"batch_size", [](TrainOptions& o) { o.batch_size = 0; }},
      {"epochs", [](TrainOptions& o) { o.epochs = 0; }},
      {"optimizer.lr", [](TrainOptions& o) { o.optimizer.lr = -0.1; }},
      {"optimizer.lr", [](TrainOptions& o) { o.optimizer.lr = std::nan(""); }},
      {"set model.in_channels to 1", [](TrainOptions& o) { o.model.in_channels = 3; }},
      {"set model.classes to at least 4", [](TrainOptions& o) { o.model.classes = 2; }},
      {"set model.dims to 2", [](TrainOptions& o) { o.model.dims = 3; }},
      {"classification task needs a model that outputs (N, classes)",
       [](TrainOptions& o) { o.model.name = "unet"; }},
      {"memory.fixed_probes",
       [](TrainOptions& o) {
         o.memory.budget_bytes = 1 << 20;
         o.memory.fixed_probes = 4;
       }},
      {"checkpoint.dir", [](TrainOptions& o) { o.checkpoint.every_steps = 5; }},
      {"freeze prefix 'no_such_layer'", [](TrainOptions& o) { o.freeze = {"no_such_layer"}; }},
      {"schedule.step_size",
       [](TrainOptions& o) {
         o.schedule.kind = ScheduleKind::kStep;
         o.schedule.step_size = 0;
       }},
      {"hole_fraction",
       [](TrainOptions& o) {
         o.task.kind = TaskKind::kInpainting;
         o.task.options.hole_fraction = 1.5;
         o.model = {.name = "unet", .in_channels = 2, .out_channels = 1, .width = 4, .depth = 2};
       }},
      {"set model.scale to task.options.scale (2)",
       [](TrainOptions& o) {
         o.task.kind = TaskKind::kSuperResolution;
         o.model = {.name = "srnet", .in_channels = 1, .out_channels = 1, .width = 4, .depth = 1, .scale = 4};
       }},
  };
  const TrainOptions good = SmallCnnOptions();
  for (const BadOption& bad : cases) {
    TrainOptions o = good;
    bad.change(o);
    ExpectInvalid(o, bad.field);
  }
}

TEST(Trainer, BadDataGetsAClearError) {
  const TrainOptions good = SmallCnnOptions();
  TrainOptions o = good;
  o.data.train = nullptr;
  ExpectInvalid(o, "data.train is not set");

  TensorDataset nan_inputs = *good.data.train;
  nan_inputs.inputs = nan_inputs.inputs.clone();
  nan_inputs.inputs[3][0][2][2] = std::nan("");
  o = good;
  o.data.train = std::make_shared<const TensorDataset>(nan_inputs);
  ExpectInvalid(o, "data.train has NaN or infinite inputs");

  TensorDataset negative = *good.data.train;
  negative.targets = negative.targets.clone();
  negative.targets[5] = -1;
  o = good;
  o.data.train = std::make_shared<const TensorDataset>(negative);
  ExpectInvalid(o, "data.train has label -1");

  TensorDataset unlabeled = *good.data.train;
  unlabeled.targets = torch::Tensor();
  o = good;
  o.data.train = std::make_shared<const TensorDataset>(unlabeled);
  ExpectInvalid(o, "needs targets");

  TensorDataset wrong_count = *good.data.validation;
  wrong_count.targets = wrong_count.targets.narrow(0, 0, 10);
  o = good;
  o.data.validation = std::make_shared<const TensorDataset>(wrong_count);
  ExpectInvalid(o, "data.validation");

  o = good;
  o.batch_size = 1000;
  ExpectInvalid(o, "fewer than batch_size 1000");

  o = good;
  o.init.path = "/nonexistent/weights.pt";
  const absl::StatusOr<std::unique_ptr<Trainer>> missing = Trainer::Create(o);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("init.path"));
}

TEST(Trainer, PlannedRunStaysWithinItsBudget) {
  TrainOptions options = SmallCnnOptions();
  options.model.width = 16;
  options.data.train = Classification(128, 0, {32, 32}, 4, 21).train;
  options.data.validation = nullptr;
  options.batch_size = 32;
  options.epochs = 1;
  options.memory.predict = true;
  absl::StatusOr<std::unique_ptr<Trainer>> exact = Trainer::Create(options);
  ASSERT_TRUE(exact.ok()) << exact.status();
  const int64_t exact_peak = (*exact)->predicted_peak_bytes();
  ASSERT_GT(exact_peak, 0);
  const MemoryModel& memory = *(*exact)->memory_model();
  const int64_t loader = exact_peak - memory.PredictPeak(memory.ExactChoices(), options.batch_size);
  EXPECT_EQ(loader, 2 * 32 * (32 * 32 * 4 + 8));  // two prefetched batches of images and labels
  const int64_t smallest = MinimumBudget(memory, options.batch_size) + loader;
  ASSERT_LT(smallest, exact_peak);
  exact->reset();

  options.memory.budget_bytes = (smallest + exact_peak) / 2;
  options.fidelity_interval = 2;
  std::unique_ptr<Trainer> trainer;
  const EventLog log = Train(options, &trainer);
  ASSERT_NE(trainer, nullptr);
  ASSERT_NE(trainer->plan(), nullptr);
  EXPECT_GT(trainer->plan()->converted_layers(), 0) << trainer->plan()->Table();
  EXPECT_LE(trainer->predicted_peak_bytes(), options.memory.budget_bytes);
  const std::vector<TrainEvent> steps = log.Of(TrainEventKind::kStep);
  ASSERT_EQ(steps.size(), 4u);
  for (const TrainEvent& step : steps) {
    EXPECT_GT(step.measured_peak_bytes, 0);
    EXPECT_LE(step.measured_peak_bytes, options.memory.budget_bytes)
        << "step " << step.step << " predicted " << step.predicted_peak_bytes << "\n"
        << trainer->plan()->Table();
    EXPECT_EQ(step.predicted_peak_bytes, trainer->predicted_peak_bytes());
  }
}

TEST(Trainer, BudgetBelowAnyPlanIsResourceExhausted) {
  TrainOptions options = SmallCnnOptions();
  options.memory.budget_bytes = 4096;
  const absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(options);
  EXPECT_EQ(trainer.status().code(), absl::StatusCode::kResourceExhausted) << trainer.status();
}

TEST(Trainer, FinetuneLeavesFrozenParametersUnchanged) {
  // An earlier job writes its final checkpoint.
  TrainOptions first = SmallCnnOptions(31);
  first.epochs = 1;
  first.checkpoint.dir = FreshDir("finetune_first");
  std::unique_ptr<Trainer> earlier;
  const EventLog first_log = Train(first, &earlier);
  ASSERT_FALSE(first_log.Of(TrainEventKind::kCheckpoint).empty());
  const std::string checkpoint = first_log.Of(TrainEventKind::kCheckpoint).back().checkpoint_path;
  const auto trained = earlier->model()->named_parameters();

  TrainOptions second = SmallCnnOptions(32);
  second.epochs = 1;
  second.init.path = checkpoint;
  second.freeze = {"features.0"};
  std::unique_ptr<Trainer> finetune;
  Train(second, &finetune);
  ASSERT_NE(finetune, nullptr);
  for (const auto& p : finetune->model()->named_parameters()) {
    const bool frozen = p.key().rfind("features.0.", 0) == 0;
    EXPECT_EQ(p.value().requires_grad(), !frozen) << p.key();
    EXPECT_EQ(torch::equal(p.value(), trained[p.key()]), frozen) << p.key();
  }

  // A torch::save(module) weights file initialises the same way.
  const std::string weights = FreshDir("finetune_weights") + "/weights.pt";
  torch::save(earlier->model(), weights);
  second.init.path = weights;
  std::unique_ptr<Trainer> from_weights;
  Train(second, &from_weights);
  ASSERT_NE(from_weights, nullptr);
  EXPECT_TRUE(torch::equal(from_weights->model()->named_parameters()["features.0.weight"],
                           trained["features.0.weight"]));
}

}  // namespace
}  // namespace xtrain::core
