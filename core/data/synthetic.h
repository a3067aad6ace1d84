#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/data/tensor_dataset.h"

namespace xtrain::core {

// n images (n, channels, spatial...) in [0, 1], spatial (H, W) or (D, H, W), balanced labels: each
// class is its own smooth mean pattern plus noise (std 0.1), so a small net can learn it. Drawn
// from a local generator seeded with `seed` (same arguments, same tensors; global RNG untouched).
absl::StatusOr<TensorDataset> MakeSyntheticClassification(int64_t n, int64_t channels,
                                                          const std::vector<int64_t>& spatial,
                                                          int64_t classes, uint64_t seed);

// n images with masks (n, spatial...): background class 0 plus three axis-aligned boxes per image
// of random classes 1..classes-1 (later boxes cover earlier ones). Each class has its own colour
// (channel 0 alone separates the classes) plus noise (std 0.05). classes >= 2.
absl::StatusOr<TensorDataset> MakeSyntheticSegmentation(int64_t n, int64_t channels,
                                                        const std::vector<int64_t>& spatial,
                                                        int64_t classes, uint64_t seed);

}  // namespace xtrain::core
