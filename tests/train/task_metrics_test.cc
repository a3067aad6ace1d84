#include "core/train/task_metrics.h"

#include <gtest/gtest.h>

#include <cmath>

namespace xtrain::core {
namespace {

TEST(TaskMetrics, ClassificationCountsCorrectArgmax) {
  TaskMetrics metrics(TaskKind::kClassification, true);
  const torch::Tensor logits = torch::tensor({{2.0, 0.0}, {0.0, 1.0}, {3.0, 1.0}, {0.0, 5.0}});
  metrics.Add({torch::zeros({4, 1, 2, 2}), torch::tensor({0, 1, 1, 1}, torch::kLong), {}}, logits);
  EXPECT_EQ(metrics.primary(), "accuracy");
  EXPECT_DOUBLE_EQ(metrics.Result().at("accuracy"), 0.75);
  EXPECT_GT(metrics.Result().at("val_loss"), 0);
}

TEST(TaskMetrics, SegmentationDiceAndIouOverClasses) {
  TaskMetrics metrics(TaskKind::kSegmentation, true);
  // 1x4 image, two classes. Target [0 0 1 1], prediction [0 1 1 1].
  const torch::Tensor target = torch::tensor({0, 0, 1, 1}, torch::kLong).view({1, 1, 4});
  torch::Tensor logits = torch::zeros({1, 2, 1, 4});
  logits[0][0][0][0] = 1;
  for (int x = 1; x < 4; ++x) logits[0][1][0][x] = 1;
  metrics.Add({torch::zeros({1, 1, 1, 4}), target, {}}, logits);
  const auto result = metrics.Result();
  // Class 0: intersection 1, |P| 1, |T| 2: dice 2/3, IoU 1/2. Class 1: 2, 3, 2: dice 4/5, IoU 2/3.
  EXPECT_NEAR(result.at("dice"), (2.0 / 3 + 4.0 / 5) / 2, 1e-12);
  EXPECT_NEAR(result.at("iou"), (1.0 / 2 + 2.0 / 3) / 2, 1e-12);
}

TEST(TaskMetrics, PsnrOfAKnownError) {
  TaskMetrics metrics(TaskKind::kSuperResolution, true);
  const torch::Tensor target = torch::full({2, 1, 4, 4}, 0.5);
  metrics.Add({torch::zeros({2, 1, 2, 2}), target, {}}, target + 0.1);  // mse 0.01: 20 dB
  EXPECT_NEAR(metrics.Result().at("psnr"), 20.0, 1e-4);
}

TEST(TaskMetrics, InpaintingPsnrCountsOnlyTheHole) {
  const torch::Tensor target = torch::full({1, 1, 2, 2}, 0.5);
  torch::Tensor output = target.clone();
  output[0][0][0][0] = 0.6;  // error inside the hole only
  torch::Tensor mask = torch::zeros({1, 1, 2, 2});
  mask[0][0][0][0] = 1;
  const Batch batch{torch::zeros({1, 2, 2, 2}), target, mask};
  TaskMetrics hole(TaskKind::kInpainting, true);
  hole.Add(batch, output);
  EXPECT_NEAR(hole.Result().at("psnr"), 20.0, 1e-4);  // mse 0.01 over one pixel
  TaskMetrics whole(TaskKind::kInpainting, false);
  whole.Add(batch, output);
  EXPECT_NEAR(whole.Result().at("psnr"), 10 * std::log10(1 / 0.0025), 1e-4);  // 0.01 / 4 pixels
}

TEST(TaskMetrics, GenerativeReportsValidationLoss) {
  TaskMetrics metrics(TaskKind::kGenerative, true);
  metrics.Add({torch::zeros({2, 2, 2, 2}), torch::ones({2, 1, 2, 2}), {}}, torch::zeros({2, 1, 2, 2}));
  EXPECT_EQ(metrics.primary(), "val_loss");
  EXPECT_DOUBLE_EQ(metrics.Result().at("val_loss"), 1.0);
  EXPECT_TRUE(TaskMetrics(TaskKind::kGenerative, true).Result().empty());
}

}  // namespace
}  // namespace xtrain::core
