#include "core/data/tensor_dataset.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/util/torch_guard.h"

namespace xtrain::core {
namespace {

std::string ShapeString(const torch::Tensor& tensor) {
  std::ostringstream out;
  out << tensor.sizes();
  return out.str();
}

}  // namespace

absl::Status ValidateDataset(const TensorDataset& dataset) {
  const torch::Tensor& x = dataset.inputs;
  if (!x.defined()) return absl::InvalidArgumentError("dataset: inputs are undefined");
  if (x.dim() != 4 && x.dim() != 5) {
    return absl::InvalidArgumentError(absl::StrCat("dataset: inputs have shape ", ShapeString(x),
                                                   "; expected (N, C, H, W) or (N, C, D, H, W)"));
  }
  if (x.scalar_type() != torch::kFloat) {
    return absl::InvalidArgumentError(absl::StrCat("dataset: inputs are ",
                                                   c10::toString(x.scalar_type()),
                                                   "; expected float32 scaled to [0, 1]"));
  }
  const torch::Tensor& y = dataset.targets;
  if (!y.defined()) return absl::OkStatus();
  if (y.scalar_type() != torch::kLong) {
    return absl::InvalidArgumentError(absl::StrCat("dataset: targets are ",
                                                   c10::toString(y.scalar_type()),
                                                   "; expected int64 labels or masks"));
  }
  if (y.dim() == 0 || y.size(0) != x.size(0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset: ", x.size(0), " inputs but targets have shape ", ShapeString(y),
                     "; the first dimension (N) must agree"));
  }
  if (y.dim() == 1) return absl::OkStatus();
  const auto spatial = x.sizes().slice(2);
  if (y.sizes().slice(1) != spatial) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset: targets have shape ", ShapeString(y), " but inputs ", ShapeString(x),
                     "; masks must be (N, spatial...) matching the inputs, labels (N)"));
  }
  return absl::OkStatus();
}

TensorDataset GatherExamples(const TensorDataset& dataset, const torch::Tensor& indices) {
  TensorDataset out;
  out.inputs = dataset.inputs.index_select(0, indices);
  if (dataset.targets.defined()) out.targets = dataset.targets.index_select(0, indices);
  return out;
}

absl::StatusOr<std::pair<TensorDataset, TensorDataset>> SplitTrainValidation(
    const TensorDataset& dataset, double validation_fraction, uint64_t seed) {
  if (absl::Status status = ValidateDataset(dataset); !status.ok()) return status;
  if (!(validation_fraction >= 0.0 && validation_fraction < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("split: validation_fraction is ",
                                                   validation_fraction, "; use a value in [0, 1)"));
  }
  const int64_t n = dataset.size();
  const auto n_validation = static_cast<int64_t>(std::llround(n * validation_fraction));
  if (n_validation >= n) {
    return absl::InvalidArgumentError(
        absl::StrCat("split: validation_fraction ", validation_fraction, " of ", n,
                     " examples leaves no training examples; lower it"));
  }
  return GuardTorch("split", [&]() -> absl::StatusOr<std::pair<TensorDataset, TensorDataset>> {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    const torch::Tensor order = torch::randperm(n, gen, torch::kLong);
    const torch::Tensor validation = std::get<0>(order.slice(0, 0, n_validation).sort());
    const torch::Tensor train = std::get<0>(order.slice(0, n_validation).sort());
    const torch::Device device = dataset.inputs.device();
    return std::make_pair(GatherExamples(dataset, train.to(device)),
                          GatherExamples(dataset, validation.to(device)));
  });
}

absl::StatusOr<TensorDataset> Subset(const TensorDataset& dataset, int64_t n) {
  if (absl::Status status = ValidateDataset(dataset); !status.ok()) return status;
  if (n < 0 || n > dataset.size()) {
    return absl::InvalidArgumentError(absl::StrCat("subset: asked for ", n, " examples of ",
                                                   dataset.size(), "; use 0..", dataset.size()));
  }
  TensorDataset out;
  out.inputs = dataset.inputs.slice(0, 0, n);
  if (dataset.targets.defined()) out.targets = dataset.targets.slice(0, 0, n);
  return out;
}

}  // namespace xtrain::core
