#include "core/data/synthetic.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/util/torch_guard.h"

namespace xtrain::core {
namespace {

namespace F = torch::nn::functional;

constexpr int64_t kBoxesPerImage = 3;

absl::Status CheckArguments(const char* what, int64_t n, int64_t channels,
                            const std::vector<int64_t>& spatial, int64_t classes,
                            int64_t min_classes) {
  const bool spatial_ok =
      (spatial.size() == 2 || spatial.size() == 3) &&
      std::all_of(spatial.begin(), spatial.end(), [](int64_t s) { return s > 0; });
  if (n < 1 || channels < 1 || classes < min_classes || !spatial_ok) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": need n >= 1, channels >= 1, classes >= ", min_classes,
                     " and 2 or 3 positive spatial sizes; got n=", n, " channels=", channels,
                     " classes=", classes, " spatial of ", spatial.size(), " entries"));
  }
  return absl::OkStatus();
}

// Balanced labels 0..classes-1 in a seeded random order.
torch::Tensor BalancedLabels(int64_t n, int64_t classes, at::Generator& gen) {
  return torch::arange(n, torch::kLong)
      .remainder(classes)
      .index_select(0, torch::randperm(n, gen, torch::kLong));
}

}  // namespace

absl::StatusOr<TensorDataset> MakeSyntheticClassification(int64_t n, int64_t channels,
                                                          const std::vector<int64_t>& spatial,
                                                          int64_t classes, uint64_t seed) {
  absl::Status valid = CheckArguments("synthetic classification", n, channels, spatial, classes, 1);
  if (!valid.ok()) return valid;
  return GuardTorch("synthetic classification", [&]() -> absl::StatusOr<TensorDataset> {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    // A coarse random grid per class, upsampled: smooth patterns that differ between classes.
    std::vector<int64_t> coarse = {classes, channels};
    for (int64_t s : spatial) coarse.push_back(std::min<int64_t>(s, 4));
    const torch::Tensor grid = torch::rand(coarse, gen);
    const auto mode = spatial.size() == 2 ? F::InterpolateFuncOptions::mode_t(torch::kBilinear)
                                          : F::InterpolateFuncOptions::mode_t(torch::kTrilinear);
    const torch::Tensor means =
        F::interpolate(grid,
                       F::InterpolateFuncOptions().size(spatial).mode(mode).align_corners(false))
            .mul(0.6)
            .add(0.2);
    TensorDataset dataset;
    dataset.targets = BalancedLabels(n, classes, gen);
    std::vector<int64_t> shape = {n, channels};
    shape.insert(shape.end(), spatial.begin(), spatial.end());
    dataset.inputs = means.index_select(0, dataset.targets)
                         .add(torch::randn(shape, gen).mul(0.1))
                         .clamp(0.0, 1.0);
    return dataset;
  });
}

absl::StatusOr<TensorDataset> MakeSyntheticSegmentation(int64_t n, int64_t channels,
                                                        const std::vector<int64_t>& spatial,
                                                        int64_t classes, uint64_t seed) {
  absl::Status valid = CheckArguments("synthetic segmentation", n, channels, spatial, classes, 2);
  if (!valid.ok()) return valid;
  return GuardTorch("synthetic segmentation", [&]() -> absl::StatusOr<TensorDataset> {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    const auto dims = static_cast<int64_t>(spatial.size());
    // Class colours; channel 0 spaces the classes evenly so that they stay separable.
    torch::Tensor colours = torch::rand({classes, channels}, gen).mul(0.7).add(0.15);
    colours.select(1, 0).copy_(torch::randperm(classes, gen, torch::kLong)
                                   .to(torch::kFloat)
                                   .add(0.5)
                                   .div(static_cast<double>(classes)));
    // Per box: class, then (size, start) uniforms per dim.
    const torch::Tensor draws = torch::rand({n, kBoxesPerImage, 1 + 2 * dims}, gen);
    const auto u = draws.accessor<float, 3>();
    std::vector<int64_t> mask_shape = {n};
    mask_shape.insert(mask_shape.end(), spatial.begin(), spatial.end());
    torch::Tensor masks = torch::zeros(mask_shape, torch::kLong);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t b = 0; b < kBoxesPerImage; ++b) {
        const auto label =
            1 + std::min<int64_t>(classes - 2, static_cast<int64_t>(u[i][b][0] * (classes - 1)));
        torch::Tensor region = masks[i];
        for (int64_t d = 0; d < dims; ++d) {
          const int64_t size_d = spatial[d];
          const int64_t extent =
              std::max<int64_t>(1, std::llround(size_d * (0.2 + 0.3 * u[i][b][1 + 2 * d])));
          const int64_t start = std::min<int64_t>(
              size_d - extent, static_cast<int64_t>(u[i][b][2 + 2 * d] * (size_d - extent + 1)));
          region = region.narrow(d, start, extent);
        }
        region.fill_(label);
      }
    }
    std::vector<int64_t> shape = {n, channels};
    shape.insert(shape.end(), spatial.begin(), spatial.end());
    TensorDataset dataset;
    dataset.inputs = colours.index({masks})
                         .movedim(-1, 1)
                         .add(torch::randn(shape, gen).mul(0.05))
                         .clamp(0.0, 1.0)
                         .contiguous();
    dataset.targets = masks;
    return dataset;
  });
}

}  // namespace xtrain::core
