#include "core/models/resnet.h"

#include <string>

#include "core/models/layers.h"

namespace xtrain::core {
namespace {

constexpr int kStages = 4;

// torchvision's ResNet initialisation: Kaiming-normal (fan out, ReLU) convs; BN at weight 1, bias 0.
// Walks the children only: a module under construction is not yet owned by a shared_ptr.
void InitLikeTorchvision(torch::nn::Module& root) {
  torch::NoGradGuard no_grad;
  for (const auto& module : root.modules(/*include_self=*/false)) {
    if (!IsConv(*module)) continue;
    const auto parameters = module->named_parameters(/*recurse=*/false);
    torch::nn::init::kaiming_normal_(parameters["weight"], 0.0, torch::kFanOut, torch::kReLU);
    if (const torch::Tensor* bias = parameters.find("bias"); bias != nullptr && bias->defined()) {
      bias->zero_();
    }
  }
}

}  // namespace

BasicBlockImpl::BasicBlockImpl(int64_t dims, int64_t in, int64_t out, int64_t stride, bool batch_norm) {
  torch::nn::Sequential body;
  AppendConvBnRelu(*body, dims, {.in = in, .out = out, .stride = stride}, batch_norm);
  body->push_back(Conv(dims, {.in = out, .out = out, .bias = !batch_norm}));
  if (batch_norm) body->push_back(BatchNorm(dims, out));
  register_module("body", body);

  torch::nn::Sequential shortcut;
  if (stride != 1 || in != out) {
    shortcut->push_back(
        Conv(dims, {.in = in, .out = out, .kernel = 1, .stride = stride, .bias = !batch_norm}));
    if (batch_norm) shortcut->push_back(BatchNorm(dims, out));
  } else {
    shortcut->push_back(torch::nn::Identity());
  }
  register_module("shortcut", shortcut);
  register_module("out", torch::nn::Sequential(Relu()));
}

torch::Tensor BasicBlockImpl::forward(const torch::Tensor& input) {
  return Seq("out").forward(Seq("body").forward(input) + Seq("shortcut").forward(input));
}

ResNetImpl::ResNetImpl(const ModelSpec& spec) : NetworkImpl(spec) {
  const int64_t dims = spec.dims;
  torch::nn::Sequential stem;
  if (spec.imagenet_stem) {
    AppendConvBnRelu(*stem, dims, {.in = spec.in_channels, .out = spec.width, .kernel = 7, .stride = 2, .padding = 3},
                     spec.batch_norm);
    stem->push_back(MaxPool(dims, 3, 2, /*ceil_mode=*/false, /*padding=*/1));
  } else {
    AppendConvBnRelu(*stem, dims, {.in = spec.in_channels, .out = spec.width}, spec.batch_norm);
  }
  register_module("stem", stem);

  int64_t channels = spec.width;
  for (int stage = 0; stage < kStages; ++stage) {
    const int64_t out = spec.width << stage;
    torch::nn::Sequential layer;
    for (int64_t block = 0; block < spec.depth; ++block) {
      const int64_t stride = (stage > 0 && block == 0) ? 2 : 1;
      layer->push_back(BasicBlock(dims, channels, out, stride, spec.batch_norm));
      channels = out;
    }
    register_module("layer" + std::to_string(stage + 1), layer);
  }

  torch::nn::Sequential head;
  head->push_back(GlobalAvgPool(dims));
  head->push_back(torch::nn::Flatten());
  head->push_back(torch::nn::Linear(channels, spec.classes));
  register_module("head", head);
  InitLikeTorchvision(*this);
}

torch::Tensor ResNetImpl::forward(const torch::Tensor& input) {
  torch::Tensor x = Seq("stem").forward(input);
  for (int stage = 1; stage <= kStages; ++stage) x = Seq("layer" + std::to_string(stage)).forward(x);
  return Seq("head").forward(x);
}

}  // namespace xtrain::core
