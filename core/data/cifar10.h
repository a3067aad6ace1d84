#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/data/tensor_dataset.h"

namespace xtrain::core {

// CIFAR-10 binary batches: records of 1 label byte (0..9) and 3072 pixel bytes (R, G, B planes of
// 32x32), concatenated over `paths` in order → inputs (N, 3, 32, 32) float32 / 255, targets int64.
// InvalidArgument naming the file when its size is not a multiple of 3073 or a label exceeds 9.
absl::StatusOr<TensorDataset> LoadCifar10(const std::vector<std::string>& paths);

// A cifar-10-batches-bin folder: data_batch_1..5.bin when `train`, else test_batch.bin.
absl::StatusOr<TensorDataset> LoadCifar10Folder(const std::string& directory, bool train);

}  // namespace xtrain::core
