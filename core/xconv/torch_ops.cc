// Registers the XConv operators with the dispatcher, so PyTorch loads them with
// torch.ops.load_library(path) and calls torch.ops.xtrain.xconv2d / xconv3d / mask_relu.
#include <torch/library.h>
#include <torch/torch.h>

#include <random>

#include "core/xconv/mask_relu.h"
#include "core/xconv/xconv_op.h"
#include "core/xconv/xconv_options.h"

namespace xtrain::core {
namespace {

template <typename T>
T OrThrow(absl::StatusOr<T> value) {
  TORCH_CHECK(value.ok(), std::string(value.status().message()));
  return *std::move(value);
}

uint64_t ResolveSeed(int64_t seed) {
  if (seed >= 0) return static_cast<uint64_t>(seed);
  // seed < 0: one draw from the global generator, as torch's own random ops would.
  return static_cast<uint64_t>(torch::randint(std::numeric_limits<int64_t>::max(), {1}, torch::kLong)
                                   .item<int64_t>());
}

template <int64_t D>
torch::Tensor XConvOp(const torch::Tensor& input, const torch::Tensor& weight,
                      const c10::optional<torch::Tensor>& bias, std::vector<int64_t> stride,
                      std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups,
                      int64_t probes, c10::string_view mode, c10::string_view distribution,
                      int64_t seed) {
  XConvSettings settings;
  settings.probes = probes;
  settings.mode = OrThrow(ParseProbeMode(absl::string_view(mode.data(), mode.size())));
  settings.distribution =
      OrThrow(ParseProbeDistribution(absl::string_view(distribution.data(), distribution.size())));
  const ConvGeometry geometry{std::move(stride), std::move(padding), std::move(dilation), groups};
  return XConvNd(D, input, weight, bias.value_or(torch::Tensor()), geometry, settings,
                 ResolveSeed(seed));
}

}  // namespace
}  // namespace xtrain::core

TORCH_LIBRARY(xtrain, m) {
  m.def(
      "xconv2d(Tensor input, Tensor weight, Tensor? bias, int[] stride, int[] padding, "
      "int[] dilation, int groups, int probes, str mode, str distribution, int seed) -> Tensor",
      &xtrain::core::XConvOp<2>);
  m.def(
      "xconv3d(Tensor input, Tensor weight, Tensor? bias, int[] stride, int[] padding, "
      "int[] dilation, int groups, int probes, str mode, str distribution, int seed) -> Tensor",
      &xtrain::core::XConvOp<3>);
  m.def("mask_relu(Tensor input) -> Tensor", &xtrain::core::MaskRelu);
}
