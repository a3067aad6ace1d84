#pragma once
// The small model and optimizer that fuzz_checkpoint loads into and fuzz_checkpoint_seeds writes.
#include <memory>

#include <torch/torch.h>

namespace xtrain::fuzz {

struct FuzzModel {
  torch::nn::Sequential net;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
};

inline FuzzModel MakeFuzzModel() {
  torch::manual_seed(0);
  FuzzModel m;
  m.net = torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 2, 3)),
                                torch::nn::BatchNorm2d(2), torch::nn::Flatten(),
                                torch::nn::Linear(2 * 2 * 2, 3));
  m.optimizer = std::make_unique<torch::optim::SGD>(m.net->parameters(),
                                                   torch::optim::SGDOptions(0.1).momentum(0.9));
  return m;
}

}  // namespace xtrain::fuzz
