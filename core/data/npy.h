#pragma once

#include <torch/torch.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/data/tensor_dataset.h"

namespace xtrain::core {

// Reads a NumPy .npy file (format v1, v2 or v3) in C order with dtype '<f4', '<f8', '|u1', '<i8'
// or '<i4'. Errors name the file: InvalidArgument for a bad magic, a header that does not parse,
// an unsupported dtype, fortran_order True or bytes after the data; DataLoss when truncated.
absl::StatusOr<torch::Tensor> ReadNpy(const std::string& path);

// Writes `tensor` (float32, float64, uint8, int64 or int32; any device, any strides) as .npy v1
// (v2 when the header needs it). InvalidArgument for another dtype.
absl::Status WriteNpy(const std::string& path, const torch::Tensor& tensor);

// A dataset from .npy arrays: inputs (N, C, H, W) or (N, C, D, H, W), float (already in [0, 1])
// or uint8 (divided by 255); targets integer labels (N) or masks (N, spatial...), or no targets
// when `targets_path` is empty.
absl::StatusOr<TensorDataset> LoadNpyDataset(const std::string& inputs_path,
                                             const std::string& targets_path);

}  // namespace xtrain::core
