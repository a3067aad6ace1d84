#include "core/xconv/probes.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>

#include "core/util/mix_seed.h"

namespace xtrain::core {
namespace {

// Orthogonal rows of length dim: QR of a Gaussian (dim x k) block, k <= dim, scaled by sqrt(dim).
torch::Tensor OrthogonalRows(int64_t rows, int64_t dim, at::Generator& gen,
                             const torch::TensorOptions& options) {
  std::vector<torch::Tensor> blocks;
  for (int64_t done = 0; done < rows; done += dim) {
    const int64_t k = std::min(dim, rows - done);
    torch::Tensor gaussian = at::randn({dim, k}, gen, options);
    torch::Tensor q = std::get<0>(at::linalg_qr(gaussian, "reduced"));
    blocks.push_back(q.t() * std::sqrt(static_cast<double>(dim)));
  }
  return blocks.size() == 1 ? blocks[0].contiguous() : torch::cat(blocks, 0);
}

}  // namespace

torch::Tensor DrawProbeMatrix(int64_t rows, int64_t dim, ProbeDistribution distribution,
                              uint64_t seed, torch::ScalarType dtype, torch::Device device) {
  // Generated on the CPU with a private generator so that the same seed gives the same probes
  // on every device and the global generator's state never changes.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto options = torch::TensorOptions().dtype(dtype).device(torch::kCPU);
  torch::Tensor probes;
  switch (distribution) {
    case ProbeDistribution::kGaussian:
      probes = at::randn({rows, dim}, gen, options);
      break;
    case ProbeDistribution::kRademacher:
      probes = at::randint(0, 2, {rows, dim}, gen, options).mul_(2).sub_(1);
      break;
    case ProbeDistribution::kOrthogonal:
      probes = OrthogonalRows(rows, dim, gen, options);
      break;
  }
  return probes.to(device);
}

ProbeSet MakeProbes(const XConvSettings& settings, int64_t channels, int64_t spatial, uint64_t seed,
                    torch::ScalarType dtype, torch::Device device) {
  const int64_t r = settings.probes;
  ProbeSet set;
  set.count = r;
  switch (settings.mode) {
    case ProbeMode::kIndependent:
      set.matrix = DrawProbeMatrix(r, spatial, settings.distribution, seed, dtype, device);
      break;
    case ProbeMode::kMultiChannel:
      set.matrix = DrawProbeMatrix(r, channels * spatial, settings.distribution, seed, dtype, device);
      break;
    case ProbeMode::kOrthogonal: {
      // Channel c owns columns (c + j*C_in) mod r, j < n: disjoint when C_in divides r, so no
      // cross-channel terms enter the estimate; scaled by sqrt(r/n) to stay unbiased.
      const int64_t n = (r + channels - 1) / channels;
      std::vector<torch::Tensor> per_channel;
      per_channel.reserve(channels);
      for (int64_t c = 0; c < channels; ++c) {
        per_channel.push_back(DrawProbeMatrix(n, spatial, settings.distribution,
                                              MixSeed(seed, static_cast<uint64_t>(c)), dtype, device));
      }
      set.matrix = torch::stack(per_channel, 0).mul_(std::sqrt(static_cast<double>(r) / n));
      set.columns = torch::arange(channels, torch::TensorOptions().dtype(torch::kLong).device(device))
                        .unsqueeze(1)
                        .add(torch::arange(n, torch::TensorOptions().dtype(torch::kLong).device(device))
                                 .mul(channels)
                                 .unsqueeze(0))
                        .remainder(r)
                        .reshape({-1});
      break;
    }
  }
  return set;
}

int64_t SketchValuesPerSample(ProbeMode mode, int64_t channels, int64_t probes) {
  return mode == ProbeMode::kIndependent ? channels * probes : probes;
}

}  // namespace xtrain::core
