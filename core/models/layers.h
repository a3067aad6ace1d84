#pragma once

#include <cstdint>
#include <string>

#include <torch/torch.h>

namespace xtrain::core {

// One convolution of a zoo model; padding < 0 picks dilation * (kernel - 1) / 2, which keeps the
// spatial size at stride 1.
struct ConvLayer {
  int64_t in = 1;
  int64_t out = 1;
  int64_t kernel = 3;
  int64_t stride = 1;
  int64_t padding = -1;
  int64_t dilation = 1;
  int64_t groups = 1;
  bool bias = true;
};

// Layers for images (dims 2) or volumes (dims 3), ready to push into a Sequential. Convolutions are
// torch::nn::Conv2d/Conv3d with zero padding, which Convert can swap for XConv.
torch::nn::AnyModule Conv(int64_t dims, const ConvLayer& layer);
torch::nn::AnyModule ConvTranspose(int64_t dims, int64_t in, int64_t out, int64_t kernel, int64_t stride);
torch::nn::AnyModule BatchNorm(int64_t dims, int64_t channels);
torch::nn::AnyModule MaxPool(int64_t dims, int64_t kernel, int64_t stride, bool ceil_mode = false, int64_t padding = 0);
// Adaptive average pooling to one value per channel.
torch::nn::AnyModule GlobalAvgPool(int64_t dims);
// A ReLU module (not torch::relu), so Convert can swap it for MaskReLU.
torch::nn::AnyModule Relu();

// Appends conv, BatchNorm when `batch_norm` (the conv then has no bias) and ReLU to `sequential`.
// A non-empty `prefix` names them "<prefix>_conv", "<prefix>_bn", "<prefix>_relu".
void AppendConvBnRelu(torch::nn::SequentialImpl& sequential, int64_t dims, ConvLayer layer,
                      bool batch_norm, const std::string& prefix = "");

// True for torch::nn::Conv2d/Conv3d (not their transposes).
bool IsConv(const torch::nn::Module& module);

}  // namespace xtrain::core
