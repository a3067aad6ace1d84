#pragma once

#include <torch/torch.h>

#include <string>

#include "absl/status/statusor.h"
#include "core/data/tensor_dataset.h"

namespace xtrain::core {

// Reads an IDX file (MNIST's format; big-endian uint8, int8, int16, int32, float32 or float64), raw
// or gzipped. Errors name the file: NotFound when missing, DataLoss when truncated (expected X
// bytes, got Y), InvalidArgument for a wrong magic, an unknown type code or trailing bytes.
absl::StatusOr<torch::Tensor> ReadIdx(const std::string& path);

// Images (N, H, W) uint8 and labels (N) uint8 as a classification dataset: inputs (N, 1, H, W)
// float32 / 255, targets int64. InvalidArgument when the counts disagree or the types are wrong.
absl::StatusOr<TensorDataset> LoadIdxClassification(const std::string& images_path,
                                                    const std::string& labels_path);

// An MNIST-style folder (MNIST, Fashion-MNIST): {train,t10k}-{images-idx3,labels-idx1}-ubyte,
// each raw or with a .gz suffix. `train` picks the training split, else the test split.
absl::StatusOr<TensorDataset> LoadMnistFolder(const std::string& directory, bool train);

}  // namespace xtrain::core
