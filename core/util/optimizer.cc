#include "core/util/optimizer.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace xtrain::core {

absl::StatusOr<OptimizerKind> ParseOptimizerKind(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "sgd") return OptimizerKind::kSgd;
  if (lower == "sgd_momentum" || lower == "momentum") return OptimizerKind::kSgdMomentum;
  if (lower == "adam") return OptimizerKind::kAdam;
  if (lower == "adamw") return OptimizerKind::kAdamW;
  return absl::InvalidArgumentError(absl::StrCat("unknown optimizer '", std::string(name),
                                                 "'; use sgd, sgd_momentum, adam or adamw"));
}

std::string OptimizerKindName(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kSgd: return "sgd";
    case OptimizerKind::kSgdMomentum: return "sgd_momentum";
    case OptimizerKind::kAdam: return "adam";
    case OptimizerKind::kAdamW: return "adamw";
  }
  return "?";
}

int64_t OptimizerStateMultiple(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kSgd: return 0;
    case OptimizerKind::kSgdMomentum: return 1;
    case OptimizerKind::kAdam:
    case OptimizerKind::kAdamW: return 2;
  }
  return 0;
}

std::unique_ptr<torch::optim::Optimizer> MakeOptimizer(OptimizerKind kind,
                                                       std::vector<torch::Tensor> parameters,
                                                       double lr, double weight_decay) {
  switch (kind) {
    case OptimizerKind::kSgd:
      return std::make_unique<torch::optim::SGD>(
          parameters, torch::optim::SGDOptions(lr).weight_decay(weight_decay));
    case OptimizerKind::kSgdMomentum:
      return std::make_unique<torch::optim::SGD>(
          parameters, torch::optim::SGDOptions(lr).momentum(0.9).weight_decay(weight_decay));
    case OptimizerKind::kAdam:
      return std::make_unique<torch::optim::Adam>(
          parameters, torch::optim::AdamOptions(lr).weight_decay(weight_decay));
    case OptimizerKind::kAdamW:
      return std::make_unique<torch::optim::AdamW>(
          parameters, torch::optim::AdamWOptions(lr).weight_decay(weight_decay));
  }
  return nullptr;
}

}  // namespace xtrain::core
