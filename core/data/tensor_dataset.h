#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace xtrain::core {

// A data set held in memory. inputs: float32 (N, C, H, W) or (N, C, D, H, W) scaled to [0, 1].
// targets: int64 labels (N) for classification, int64 masks (N, spatial...) for segmentation,
// or undefined when the task makes its own targets (super-resolution, inpainting, generative).
struct TensorDataset {
  torch::Tensor inputs;
  torch::Tensor targets;

  int64_t size() const { return inputs.defined() ? inputs.size(0) : 0; }
};

// OK when the dataset has the shapes and dtypes above; InvalidArgument says what differs.
absl::Status ValidateDataset(const TensorDataset& dataset);

// Examples `indices` (int64, any order) of `dataset`, as new tensors.
TensorDataset GatherExamples(const TensorDataset& dataset, const torch::Tensor& indices);

// Splits into (train, validation): a permutation from a local generator seeded with `seed` puts
// round(N * validation_fraction) examples in validation; both keep the original order.
absl::StatusOr<std::pair<TensorDataset, TensorDataset>> SplitTrainValidation(
    const TensorDataset& dataset, double validation_fraction, uint64_t seed);

// The first `n` examples (a view, no copy); InvalidArgument when n is negative or above N.
absl::StatusOr<TensorDataset> Subset(const TensorDataset& dataset, int64_t n);

}  // namespace xtrain::core
