#include "core/models/layers.h"

namespace xtrain::core {
namespace {

namespace nn = torch::nn;

void Push(nn::SequentialImpl& sequential, const std::string& prefix, const std::string& suffix,
          nn::AnyModule module) {
  if (prefix.empty()) {
    sequential.push_back(std::move(module));
  } else {
    sequential.push_back(prefix + "_" + suffix, std::move(module));
  }
}

}  // namespace

nn::AnyModule Conv(int64_t dims, const ConvLayer& layer) {
  TORCH_CHECK(dims == 2 || dims == 3, "zoo layers take dims 2 or 3, got ", dims);
  const int64_t padding = layer.padding >= 0 ? layer.padding : layer.dilation * (layer.kernel - 1) / 2;
  if (dims == 2) {
    return nn::AnyModule(nn::Conv2d(nn::Conv2dOptions(layer.in, layer.out, layer.kernel)
                                        .stride(layer.stride)
                                        .padding(padding)
                                        .dilation(layer.dilation)
                                        .groups(layer.groups)
                                        .bias(layer.bias)));
  }
  return nn::AnyModule(nn::Conv3d(nn::Conv3dOptions(layer.in, layer.out, layer.kernel)
                                      .stride(layer.stride)
                                      .padding(padding)
                                      .dilation(layer.dilation)
                                      .groups(layer.groups)
                                      .bias(layer.bias)));
}

nn::AnyModule ConvTranspose(int64_t dims, int64_t in, int64_t out, int64_t kernel, int64_t stride) {
  TORCH_CHECK(dims == 2 || dims == 3, "zoo layers take dims 2 or 3, got ", dims);
  if (dims == 2) {
    return nn::AnyModule(nn::ConvTranspose2d(nn::ConvTranspose2dOptions(in, out, kernel).stride(stride)));
  }
  return nn::AnyModule(nn::ConvTranspose3d(nn::ConvTranspose3dOptions(in, out, kernel).stride(stride)));
}

nn::AnyModule BatchNorm(int64_t dims, int64_t channels) {
  TORCH_CHECK(dims == 2 || dims == 3, "zoo layers take dims 2 or 3, got ", dims);
  if (dims == 2) return nn::AnyModule(nn::BatchNorm2d(channels));
  return nn::AnyModule(nn::BatchNorm3d(channels));
}

nn::AnyModule MaxPool(int64_t dims, int64_t kernel, int64_t stride, bool ceil_mode, int64_t padding) {
  TORCH_CHECK(dims == 2 || dims == 3, "zoo layers take dims 2 or 3, got ", dims);
  if (dims == 2) {
    return nn::AnyModule(
        nn::MaxPool2d(nn::MaxPool2dOptions(kernel).stride(stride).padding(padding).ceil_mode(ceil_mode)));
  }
  return nn::AnyModule(
      nn::MaxPool3d(nn::MaxPool3dOptions(kernel).stride(stride).padding(padding).ceil_mode(ceil_mode)));
}

nn::AnyModule GlobalAvgPool(int64_t dims) {
  TORCH_CHECK(dims == 2 || dims == 3, "zoo layers take dims 2 or 3, got ", dims);
  if (dims == 2) return nn::AnyModule(nn::AdaptiveAvgPool2d(1));
  return nn::AnyModule(nn::AdaptiveAvgPool3d(1));
}

nn::AnyModule Relu() { return nn::AnyModule(nn::ReLU()); }

void AppendConvBnRelu(nn::SequentialImpl& sequential, int64_t dims, ConvLayer layer, bool batch_norm,
                      const std::string& prefix) {
  layer.bias = layer.bias && !batch_norm;  // BatchNorm's shift makes a conv bias redundant
  Push(sequential, prefix, "conv", Conv(dims, layer));
  if (batch_norm) Push(sequential, prefix, "bn", BatchNorm(dims, layer.out));
  Push(sequential, prefix, "relu", Relu());
}

bool IsConv(const nn::Module& module) {
  return dynamic_cast<const nn::Conv2dImpl*>(&module) != nullptr ||
         dynamic_cast<const nn::Conv3dImpl*>(&module) != nullptr;
}

}  // namespace xtrain::core
