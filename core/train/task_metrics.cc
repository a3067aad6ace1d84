#include "core/train/task_metrics.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace xtrain::core {
namespace {

// PSNR of values in [0, 1]: 10 log10(1 / mse), with mse floored so a perfect image stays finite.
double Psnr(double mse) { return 10.0 * std::log10(1.0 / std::max(mse, 1e-10)); }

}  // namespace

LossKind TaskLossKind(TaskKind kind) {
  const bool labels = kind == TaskKind::kClassification || kind == TaskKind::kSegmentation;
  return labels ? LossKind::kCrossEntropy : LossKind::kMse;
}

torch::Tensor TaskLoss(TaskKind kind, const torch::Tensor& output, const torch::Tensor& target) {
  if (TaskLossKind(kind) == LossKind::kCrossEntropy) {
    return torch::nn::functional::cross_entropy(output, target);
  }
  return torch::mse_loss(output, target);
}

TaskMetrics::TaskMetrics(TaskKind kind, bool psnr_on_hole) : kind_(kind), psnr_on_hole_(psnr_on_hole) {}

std::string TaskMetrics::primary() const {
  switch (kind_) {
    case TaskKind::kClassification: return "accuracy";
    case TaskKind::kSegmentation: return "dice";
    case TaskKind::kSuperResolution:
    case TaskKind::kInpainting: return "psnr";
    case TaskKind::kGenerative: return "val_loss";
  }
  return "val_loss";
}

void TaskMetrics::Add(const Batch& batch, const torch::Tensor& output) {
  torch::NoGradGuard no_grad;
  const int64_t n = output.size(0);
  const torch::Tensor out = output.to(torch::kFloat);
  const torch::Tensor target = batch.target.is_floating_point() ? batch.target.to(torch::kFloat) : batch.target;
  loss_sum_ += TaskLoss(kind_, out, target).item<double>() * static_cast<double>(n);
  samples_ += n;
  switch (kind_) {
    case TaskKind::kClassification:
      correct_ += out.argmax(1).eq(target).sum().item<int64_t>();
      break;
    case TaskKind::kSegmentation: {
      const int64_t classes = out.size(1);
      const torch::Tensor predicted = out.argmax(1).reshape({-1});
      const torch::Tensor actual = target.reshape({-1});
      const auto count = [classes](const torch::Tensor& labels) {
        return torch::bincount(labels, {}, classes).to(torch::kDouble);
      };
      const torch::Tensor hits = count(predicted.masked_select(predicted.eq(actual)));
      if (!intersection_.defined()) {
        intersection_ = torch::zeros({classes}, torch::kDouble);
        predicted_ = torch::zeros({classes}, torch::kDouble);
        actual_ = torch::zeros({classes}, torch::kDouble);
      }
      intersection_ += hits;
      predicted_ += count(predicted);
      actual_ += count(actual);
      break;
    }
    case TaskKind::kSuperResolution:
    case TaskKind::kInpainting: {
      const torch::Tensor error = (out.clamp(0, 1) - target).pow(2).reshape({n, -1});
      torch::Tensor mse;
      if (kind_ == TaskKind::kInpainting && psnr_on_hole_ && batch.mask.defined()) {
        // The mask has one channel; the image's channels share it.
        const torch::Tensor weight =
            batch.mask.to(torch::kFloat).expand_as(target).reshape({n, -1});
        mse = (error * weight).sum(1) / weight.sum(1).clamp_min(1);
      } else {
        mse = error.mean(1);
      }
      const torch::Tensor values = mse.to(torch::kDouble);
      const auto v = values.accessor<double, 1>();
      for (int64_t i = 0; i < n; ++i) psnr_sum_ += Psnr(v[i]);
      psnr_images_ += n;
      break;
    }
    case TaskKind::kGenerative:
      break;
  }
}

std::map<std::string, double> TaskMetrics::Result() const {
  std::map<std::string, double> result;
  if (samples_ == 0) return result;
  result["val_loss"] = loss_sum_ / static_cast<double>(samples_);
  switch (kind_) {
    case TaskKind::kClassification:
      result["accuracy"] = static_cast<double>(correct_) / static_cast<double>(samples_);
      break;
    case TaskKind::kSegmentation: {
      const torch::Tensor sum = predicted_ + actual_;
      const torch::Tensor present = sum.gt(0);
      const torch::Tensor dice = (2 * intersection_ / sum.clamp_min(1)).masked_select(present);
      const torch::Tensor iou = (intersection_ / (sum - intersection_).clamp_min(1)).masked_select(present);
      result["dice"] = dice.numel() > 0 ? dice.mean().item<double>() : 0.0;
      result["iou"] = iou.numel() > 0 ? iou.mean().item<double>() : 0.0;
      break;
    }
    case TaskKind::kSuperResolution:
    case TaskKind::kInpainting:
      result["psnr"] = psnr_sum_ / static_cast<double>(std::max<int64_t>(1, psnr_images_));
      break;
    case TaskKind::kGenerative:
      break;
  }
  return result;
}

}  // namespace xtrain::core
