#include "core/models/unet.h"

#include <string>
#include <vector>

#include "core/models/layers.h"

namespace xtrain::core {
namespace {

torch::nn::Sequential DoubleConv(int64_t dims, int64_t in, int64_t out, bool batch_norm) {
  torch::nn::Sequential block;
  AppendConvBnRelu(*block, dims, {.in = in, .out = out}, batch_norm);
  AppendConvBnRelu(*block, dims, {.in = out, .out = out}, batch_norm);
  return block;
}

std::string Level(const char* stem, int64_t level) { return stem + std::to_string(level); }

}  // namespace

UNetImpl::UNetImpl(const ModelSpec& spec) : NetworkImpl(spec) {
  const int64_t dims = spec.dims;
  int64_t channels = spec.in_channels;
  for (int64_t level = 0; level < spec.depth; ++level) {
    const int64_t out = spec.width << level;
    register_module(Level("enc", level), DoubleConv(dims, channels, out, spec.batch_norm));
    register_module(Level("pool", level), torch::nn::Sequential(MaxPool(dims, 2, 2)));
    channels = out;
  }
  register_module("bottleneck", DoubleConv(dims, channels, 2 * channels, spec.batch_norm));
  for (int64_t level = spec.depth - 1; level >= 0; --level) {
    const int64_t out = spec.width << level;
    register_module(Level("up", level), torch::nn::Sequential(ConvTranspose(dims, 2 * out, out, 2, 2)));
    register_module(Level("dec", level), DoubleConv(dims, 2 * out, out, spec.batch_norm));
  }
  register_module("head", torch::nn::Sequential(
                              Conv(dims, {.in = spec.width, .out = spec.out_channels, .kernel = 1})));
}

torch::Tensor UNetImpl::forward(const torch::Tensor& input) {
  const ModelSpec& s = spec();
  TORCH_CHECK(input.dim() == s.dims + 2, s.name, ": expected a ", s.dims + 2, "-D input (N, C, ",
              s.dims == 2 ? "H, W" : "D, H, W", "), got ", input.sizes());
  const int64_t multiple = int64_t{1} << s.depth;
  for (int64_t axis = 2; axis < input.dim(); ++axis) {
    TORCH_CHECK(input.size(axis) % multiple == 0, s.name, ": spatial sizes must be divisible by 2^depth = ",
                multiple, ", got ", input.sizes());
  }
  std::vector<torch::Tensor> skips;
  torch::Tensor x = input;
  for (int64_t level = 0; level < s.depth; ++level) {
    x = Seq(Level("enc", level)).forward(x);
    skips.push_back(x);
    x = Seq(Level("pool", level)).forward(x);
  }
  x = Seq("bottleneck").forward(x);
  for (int64_t level = s.depth - 1; level >= 0; --level) {
    x = Seq(Level("up", level)).forward(x);
    x = Seq(Level("dec", level)).forward(torch::cat({skips[level], x}, 1));
  }
  return Seq("head").forward(x);
}

}  // namespace xtrain::core
