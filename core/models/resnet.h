#pragma once

#include <cstdint>

#include <torch/torch.h>

#include "core/models/model_spec.h"
#include "core/models/network.h"

namespace xtrain::core {

// ResNet's basic block: conv3x3(stride)-BN-ReLU-conv3x3-BN plus a shortcut (1x1 strided conv + BN
// when the shape changes, identity otherwise), added, then ReLU. Without batch_norm the convs keep
// their biases and the BNs are left out. Children: "body", "shortcut", "out".
class BasicBlockImpl : public ZooModule {
 public:
  BasicBlockImpl(int64_t dims, int64_t in, int64_t out, int64_t stride, bool batch_norm);
  torch::Tensor forward(const torch::Tensor& input);
};
TORCH_MODULE(BasicBlock);

// "resnet18": a 3x3 stride-1 stem (conv-BN-ReLU to width, no max-pool: the zoo's inputs are small
// images and volumes, so we never downsample in the stem), four stages of `depth` basic blocks at
// width, 2, 4 and 8 x width (stride 2 from the second stage on), global average pool, linear ->
// classes. depth 2 and width 64 is the CIFAR ResNet-18 (11.2 M parameters for 3 -> 10).
// Children: "stem", "layer1".."layer4" (Sequentials of BasicBlocks), "head".
class ResNetImpl : public NetworkImpl {
 public:
  // `spec` has width and depth resolved (> 0); BuildModel validates it.
  explicit ResNetImpl(const ModelSpec& spec);
  torch::Tensor forward(const torch::Tensor& input) override;
};

}  // namespace xtrain::core
