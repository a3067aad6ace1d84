#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace xtrain::core {

// ReLU whose backward keeps a bit-packed mask (1 bit per element) instead of its output, so a
// conv-ReLU-conv stack keeps only the sketches and the masks (DESIGN.md §1). Gradients are exact.
torch::Tensor MaskRelu(const torch::Tensor& input);

// (input > 0) packed 8 elements per byte, little-endian within a byte: ceil(numel / 8) bytes.
torch::Tensor PackPositiveMask(const torch::Tensor& input);

// grad * unpacked mask, with `grad` shaped like the tensor the mask came from.
torch::Tensor ApplyPackedMask(const torch::Tensor& grad, const torch::Tensor& packed);

}  // namespace xtrain::core
