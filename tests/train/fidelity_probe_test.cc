// Gradient-fidelity telemetry: finite positive ratios per XConv layer, fewer probes mean more
// variance, and measuring changes nothing about training.
#include "core/train/fidelity_probe.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/models/model_zoo.h"
#include "core/train/task_metrics.h"
#include "core/train/trainer.h"
#include "core/xconv/convert.h"
#include "core/xconv/modules.h"
#include "tests/train/train_test_util.h"

namespace xtrain::core {
namespace {

using namespace ::xtrain::core::testing;

TEST(FidelityProbe, ReportsFinitePositiveRatiosPerXConvLayer) {
  TrainOptions options = SmallCnnOptions(51);
  options.memory.fixed_probes = 4;
  options.fidelity_interval = 3;
  options.epochs = 1;
  EventLog log;
  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(options);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  ASSERT_TRUE((*trainer)->Run(log.Callback()).ok());
  int reports = 0;
  for (const TrainEvent& step : log.Of(TrainEventKind::kStep)) {
    EXPECT_EQ(step.fidelity.has_value(), step.step % 3 == 0) << step.step;
    if (!step.fidelity) continue;
    ++reports;
    ASSERT_EQ(step.fidelity->layers.size(), 2u);  // both convs of small_cnn
    EXPECT_EQ(step.fidelity->micro_batch, 8);     // half the batch without a budget
    for (const LayerFidelity& layer : step.fidelity->layers) {
      EXPECT_EQ(layer.probes, 4);
      EXPECT_TRUE(std::isfinite(layer.ratio)) << layer.path;
      EXPECT_GT(layer.ratio, 0) << layer.path;
      EXPECT_GT(layer.xconv_variance, 0) << layer.path;
      EXPECT_GT(layer.sgd_variance, 0) << layer.path;
    }
    EXPECT_TRUE(std::isfinite(step.fidelity->ratio));
    EXPECT_GT(step.fidelity->ratio, 0);
  }
  EXPECT_EQ(reports, 2);  // steps 3 and 6 of 8
}

TEST(FidelityProbe, TelemetryLeavesTrainingBitIdentical) {
  // BatchNorm statistics, XConv seed streams and the gradients must all come back.
  TrainOptions options;
  options.model = {.name = "unet", .in_channels = 1, .out_channels = 3, .width = 4, .depth = 2, .seed = 53};
  options.task.kind = TaskKind::kSegmentation;
  options.data.train = Segmentation(48, 0, {16, 16}, 3, 53).train;
  options.batch_size = 8;
  options.epochs = 1;
  options.seed = 53;
  options.memory.fixed_probes = 4;
  options.threads = kTestThreads;
  std::vector<std::vector<std::pair<std::string, torch::Tensor>>> finals;
  for (int64_t interval : {0, 1}) {
    options.fidelity_interval = interval;
    absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(options);
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    EventLog log;
    ASSERT_TRUE((*trainer)->Run(log.Callback()).ok());
    EXPECT_EQ(log.Of(TrainEventKind::kStep).back().fidelity.has_value(), interval == 1);
    finals.push_back(Snapshot(*(*trainer)->model()));
  }
  ASSERT_EQ(finals[0].size(), finals[1].size());
  for (size_t i = 0; i < finals[0].size(); ++i) {
    EXPECT_TRUE(torch::equal(finals[0][i].second, finals[1][i].second)) << finals[0][i].first;
  }
}

TEST(FidelityProbe, FewerProbesGiveMoreVariance) {
  absl::StatusOr<std::shared_ptr<NetworkImpl>> built = BuildModel({.name = "small_cnn", .width = 8, .seed = 55});
  ASSERT_TRUE(built.ok());
  ConvertOptions convert;
  convert.settings.probes = 2;
  convert.seed = 55;
  absl::StatusOr<ConvertResult> converted = Convert(*built, convert);
  ASSERT_TRUE(converted.ok());
  auto model = std::dynamic_pointer_cast<NetworkImpl>(converted->module);
  std::shared_ptr<const TensorDataset> data = Classification(32, 0, {16, 16}, 10, 55).train;
  const Batch batch{data->inputs, data->targets, {}};
  auto loss = [&](const Batch& b) {
    return TaskLoss(TaskKind::kClassification, model->forward(b.input), b.target);
  };
  FidelityProbe probe(model, loss);
  ASSERT_EQ(probe.paths().size(), 2u);
  std::vector<double> variance;
  for (int64_t r : {2, 64}) {
    for (const auto& m : model->modules()) {
      if (auto* x = dynamic_cast<XConv2dImpl*>(m.get())) {
        XConvSettings s = x->settings();
        s.probes = r;
        x->set_settings(s);
      }
    }
    double total = 0;
    for (uint64_t salt = 0; salt < 4; ++salt) {  // a few draws: the estimate itself is noisy
      model->zero_grad();
      loss(batch).backward();
      absl::StatusOr<FidelityReport> report = probe.Measure(batch, 16, salt);
      ASSERT_TRUE(report.ok()) << report.status();
      total += report->xconv_variance;
    }
    variance.push_back(total);
  }
  EXPECT_GT(variance[0], 4 * variance[1]);  // about 32x in expectation
}

TEST(FidelityProbe, RejectsAMicroBatchThatDoesNotFitTwice) {
  absl::StatusOr<std::shared_ptr<NetworkImpl>> built = BuildModel({.name = "small_cnn", .width = 4});
  ASSERT_TRUE(built.ok());
  absl::StatusOr<ConvertResult> converted = Convert(*built, ConvertOptions{});
  ASSERT_TRUE(converted.ok());
  auto model = std::dynamic_pointer_cast<NetworkImpl>(converted->module);
  FidelityProbe probe(model, [&](const Batch& b) { return model->forward(b.input).sum(); });
  const Batch batch{torch::rand({4, 1, 8, 8}), torch::zeros({4}, torch::kLong), {}};
  EXPECT_EQ(probe.Measure(batch, 3, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xtrain::core
