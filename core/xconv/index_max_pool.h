#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

namespace xtrain::core {

// Max pooling geometry for 2-D or 3-D (every list has `dims` entries).
struct PoolGeometry {
  std::vector<int64_t> kernel, stride, padding, dilation;
  bool ceil_mode = false;
};

// Max pooling whose backward keeps, per output element, only the offset of the maximum within its
// window (1 to 8 bits, see OffsetBits) instead of the input and the int64 indices that LibTorch's max pooling keeps.
// In a conv-ReLU-pool stack the ReLU's output then dies after the forward (DESIGN.md §1), as it
// does behind a mask ReLU. Output and gradients equal torch's max pooling (same indices).
// Input: (N, C, spatial...) with dims spatial sizes; windows of at most 256 elements.
torch::Tensor IndexMaxPooling(const torch::Tensor& input, const PoolGeometry& geometry);

// The window offset (kd * kh * kw + ih * kw + iw) of each maximum, from torch's flat indices
// into the input plane. uint8, shaped like `indices`.
torch::Tensor WindowOffsets(const torch::Tensor& indices, torch::IntArrayRef input_sizes,
                            const PoolGeometry& geometry);

// Bits one window offset takes: 1, 2, 4 or 8 for windows of up to 2, 4, 16 or 256 elements.
int OffsetBits(int64_t window);
int OffsetBits(const PoolGeometry& geometry);

// Offsets (uint8, any shape) packed `bits` to a byte, little-endian within a byte:
// ceil(numel * bits / 8) bytes. What the pool keeps for backward.
torch::Tensor PackOffsets(const torch::Tensor& offsets, int bits);

// The input gradient: each output gradient added at its maximum; `packed` from PackOffsets with
// OffsetBits(geometry), `output_sizes` the pooled shape. `generic` forces the tensor-op
// path that non-CPU devices take (tests compare it with the CPU loop).
torch::Tensor IndexMaxPoolBackward(const torch::Tensor& grad_output, const torch::Tensor& packed,
                                   torch::IntArrayRef input_sizes, const PoolGeometry& geometry,
                                   bool generic = false);

}  // namespace xtrain::core
