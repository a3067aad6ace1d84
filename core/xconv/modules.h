#pragma once

#include <cstdint>
#include <optional>

#include <torch/torch.h>

#include "core/xconv/conv_geometry.h"
#include "core/xconv/index_max_pool.h"
#include "core/xconv/xconv_options.h"

namespace xtrain::core {

// Options of XConv2d / XConv3d: the convolution's geometry plus its XConv settings.
template <size_t D>
struct XConvOptions {
  XConvOptions(int64_t in_channels, int64_t out_channels, torch::ExpandingArray<D> kernel_size)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size) {}

  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, out_channels);
  TORCH_ARG(torch::ExpandingArray<D>, kernel_size);
  TORCH_ARG(torch::ExpandingArray<D>, stride) = 1;
  TORCH_ARG(torch::ExpandingArray<D>, padding) = 0;  // zeros on every side
  TORCH_ARG(torch::ExpandingArray<D>, dilation) = 1;
  TORCH_ARG(int64_t, groups) = 1;
  TORCH_ARG(bool, bias) = true;
  // Probes, mode, distribution and route; probes = 0 runs the exact convolution.
  TORCH_ARG(XConvSettings, settings) = {};
  // Base of the per-step seed stream; unset draws one from the global generator at construction.
  TORCH_ARG(std::optional<uint64_t>, seed) = std::nullopt;
};

// A Conv2d/Conv3d whose weight gradient XConv estimates. Parameters are named like torch's
// ("weight", "bias"), so state dicts move between the two. Each forward in grad mode draws a fresh
// probe seed from its own stream (buffers "xconv_seed", "xconv_step"), never from the global RNG.
template <size_t D, typename Derived>
class XConvNdImpl : public torch::nn::Cloneable<Derived> {
 public:
  explicit XConvNdImpl(XConvOptions<D> options);
  // Adopts existing parameters (the same tensor objects, so optimizers that hold them stay valid);
  // `bias` may be undefined. Used by Convert.
  XConvNdImpl(XConvOptions<D> options, torch::Tensor weight, torch::Tensor bias);

  void reset() override;
  // Kaiming-uniform weight and uniform bias, as torch::nn::ConvNd initialises them.
  void reset_parameters();
  torch::Tensor forward(const torch::Tensor& input);
  void pretty_print(std::ostream& stream) const override;

  // Changes probes/mode/distribution/route, e.g. when a planner re-plans the layer.
  void set_settings(const XConvSettings& settings) { options.settings(settings); }
  const XConvSettings& settings() const { return options.settings(); }
  ConvGeometry geometry() const;

  XConvOptions<D> options;
  torch::Tensor weight;
  torch::Tensor bias;

 private:
  torch::Tensor seed_;  // int64 scalar buffer: base of the seed stream
  torch::Tensor step_;  // int64 scalar buffer: forwards that kept a sketch so far
  // Parameters to adopt at the next reset() (constructor only; cleared once registered).
  torch::Tensor adopted_weight_;
  torch::Tensor adopted_bias_;
};

class XConv2dImpl : public XConvNdImpl<2, XConv2dImpl> {
 public:
  using XConvNdImpl<2, XConv2dImpl>::XConvNdImpl;
};
class XConv3dImpl : public XConvNdImpl<3, XConv3dImpl> {
 public:
  using XConvNdImpl<3, XConv3dImpl>::XConvNdImpl;
};
TORCH_MODULE(XConv2d);
TORCH_MODULE(XConv3d);

using XConv2dOptions = XConvOptions<2>;
using XConv3dOptions = XConvOptions<3>;

// ReLU that keeps a 1-bit mask for backward (see mask_relu.h).
class MaskReLUImpl : public torch::nn::Cloneable<MaskReLUImpl> {
 public:
  MaskReLUImpl() = default;
  void reset() override {}
  torch::Tensor forward(const torch::Tensor& input);
  void pretty_print(std::ostream& stream) const override { stream << "xtrain::MaskReLU()"; }
};
TORCH_MODULE(MaskReLU);

// Max pooling that keeps one byte per output for backward (see index_max_pool.h).
class IndexMaxPoolImpl : public torch::nn::Cloneable<IndexMaxPoolImpl> {
 public:
  explicit IndexMaxPoolImpl(PoolGeometry geometry) : geometry_(std::move(geometry)) {}
  void reset() override {}
  torch::Tensor forward(const torch::Tensor& input);
  const PoolGeometry& geometry() const { return geometry_; }
  void pretty_print(std::ostream& stream) const override;

 private:
  PoolGeometry geometry_;
};
TORCH_MODULE(IndexMaxPool);

extern template class XConvNdImpl<2, XConv2dImpl>;
extern template class XConvNdImpl<3, XConv3dImpl>;

}  // namespace xtrain::core
