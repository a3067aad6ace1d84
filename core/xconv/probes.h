#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "core/xconv/xconv_options.h"

namespace xtrain::core {

// The probe vectors of one XConv layer for one step, regenerated bit-identically from a seed.
// Rows are probes; every probe z has E[z z^T] = I, so (1/r) sum_p z_p z_p^T is unbiased for I.
struct ProbeSet {
  // kIndependent: (r, S); kMultiChannel: (r, C_in * S);
  // kOrthogonal: (C_in, n, S), channel c's n probes, pre-scaled by sqrt(r / n).
  torch::Tensor matrix;
  // kOrthogonal only: (C_in * n) int64, the sketch column that channel c's j-th probe writes to.
  torch::Tensor columns;
  int64_t count = 0;  // r, the number of probes (sketch columns per channel or sample)
};

// Draws a (rows x dim) matrix whose rows z satisfy E[z z^T] = I, from a local generator seeded
// with `seed` (the global generator is never touched). kOrthogonal rows are sqrt(dim) times
// orthonormal vectors (blocks of dim rows when rows > dim), so rows = dim gives Z^T Z = dim * I.
torch::Tensor DrawProbeMatrix(int64_t rows, int64_t dim, ProbeDistribution distribution,
                              uint64_t seed, torch::ScalarType dtype, torch::Device device);

// The probes an XConv layer with `channels` input channels and spatial size `spatial` uses.
ProbeSet MakeProbes(const XConvSettings& settings, int64_t channels, int64_t spatial, uint64_t seed,
                    torch::ScalarType dtype, torch::Device device);

// Columns of the sketch one sample keeps: C_in * r (independent) or r (multichannel, orthogonal).
int64_t SketchValuesPerSample(ProbeMode mode, int64_t channels, int64_t probes);

}  // namespace xtrain::core
