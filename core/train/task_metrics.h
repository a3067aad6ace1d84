#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <torch/torch.h>

#include "core/data/task.h"
#include "core/memory/memory_model.h"

namespace xtrain::core {

// The training loss of a task: cross-entropy for classification and segmentation (integer
// targets), mean squared error for the image-to-image tasks.
torch::Tensor TaskLoss(TaskKind kind, const torch::Tensor& output, const torch::Tensor& target);
LossKind TaskLossKind(TaskKind kind);

// Accumulates a task's validation metrics over batches. Classification: "accuracy";
// segmentation: "dice" and "iou" (mean over classes present in prediction or target, counted over
// the whole set); super-resolution: "psnr"; inpainting: "psnr" over the hole or the whole image;
// generative: the validation loss. Every task also reports "val_loss" (per-sample mean).
class TaskMetrics {
 public:
  TaskMetrics(TaskKind kind, bool psnr_on_hole);

  // One evaluated batch: the task's batch (for the target and hole mask) and the model output.
  void Add(const Batch& batch, const torch::Tensor& output);

  // The name of the task's headline metric ("accuracy", "dice", "psnr", "val_loss").
  std::string primary() const;
  // All metrics so far; empty before the first Add.
  std::map<std::string, double> Result() const;

 private:
  TaskKind kind_;
  bool psnr_on_hole_;
  int64_t samples_ = 0;
  double loss_sum_ = 0;      // sum of per-batch mean losses times the batch size
  int64_t correct_ = 0;      // classification
  double psnr_sum_ = 0;      // super-resolution, inpainting: sum of per-image PSNR
  int64_t psnr_images_ = 0;
  torch::Tensor intersection_;  // segmentation, per class (float64)
  torch::Tensor predicted_;
  torch::Tensor actual_;
};

}  // namespace xtrain::core
