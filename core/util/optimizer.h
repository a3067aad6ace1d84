#pragma once

// The optimizers a job can train with: parsed from a spec, built over parameters, and their
// persistent state per parameter (what the memory model counts). Used by the memory model's
// calibration steps and by the trainer, so it sits below both.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace xtrain::core {

// Optimizers whose state the model counts (momentum buffers, Adam moments).
enum class OptimizerKind { kSgd, kSgdMomentum, kAdam, kAdamW };
absl::StatusOr<OptimizerKind> ParseOptimizerKind(absl::string_view name);
std::string OptimizerKindName(OptimizerKind kind);
// Persistent state values per parameter value: 0 (SGD), 1 (momentum), 2 (Adam, AdamW).
int64_t OptimizerStateMultiple(OptimizerKind kind);
// An optimizer of `kind` over `parameters` (learning rate `lr`; momentum 0.9; weight decay as given).
std::unique_ptr<torch::optim::Optimizer> MakeOptimizer(OptimizerKind kind,
                                                       std::vector<torch::Tensor> parameters,
                                                       double lr, double weight_decay = 0.0);

}  // namespace xtrain::core
