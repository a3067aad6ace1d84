#include "core/models/squeezenet.h"

#include "core/models/layers.h"

namespace xtrain::core {

FireImpl::FireImpl(int64_t dims, int64_t in, int64_t squeeze, int64_t expand1x1, int64_t expand3x3) {
  register_module("squeeze",
                  torch::nn::Sequential(Conv(dims, {.in = in, .out = squeeze, .kernel = 1}), Relu()));
  register_module("expand1x1", torch::nn::Sequential(
                                   Conv(dims, {.in = squeeze, .out = expand1x1, .kernel = 1}), Relu()));
  register_module("expand3x3", torch::nn::Sequential(
                                   Conv(dims, {.in = squeeze, .out = expand3x3, .kernel = 3}), Relu()));
}

torch::Tensor FireImpl::forward(const torch::Tensor& input) {
  const torch::Tensor squeezed = Seq("squeeze").forward(input);
  return torch::cat({Seq("expand1x1").forward(squeezed), Seq("expand3x3").forward(squeezed)}, 1);
}

SqueezeNetImpl::SqueezeNetImpl(const ModelSpec& spec) : NetworkImpl(spec) {
  const int64_t dims = spec.dims;
  const int64_t w = spec.width;  // torchvision: 64; squeeze 16..64 = w/4..w, expand 64..256 = w..4w
  auto fire = [dims](int64_t in, int64_t squeeze, int64_t expand) {
    return Fire(dims, in, squeeze, expand, expand);
  };
  torch::nn::Sequential features;
  features->push_back(Conv(dims, {.in = spec.in_channels, .out = w, .kernel = 3, .stride = 2, .padding = 0}));
  features->push_back(Relu());
  features->push_back(MaxPool(dims, 3, 2, /*ceil_mode=*/true));
  features->push_back(fire(w, w / 4, w));
  features->push_back(fire(2 * w, w / 4, w));
  features->push_back(MaxPool(dims, 3, 2, /*ceil_mode=*/true));
  features->push_back(fire(2 * w, w / 2, 2 * w));
  features->push_back(fire(4 * w, w / 2, 2 * w));
  features->push_back(MaxPool(dims, 3, 2, /*ceil_mode=*/true));
  features->push_back(fire(4 * w, 3 * w / 4, 3 * w));
  features->push_back(fire(6 * w, 3 * w / 4, 3 * w));
  features->push_back(fire(6 * w, w, 4 * w));
  features->push_back(fire(8 * w, w, 4 * w));
  register_module("features", features);

  torch::nn::AnyModule final_conv = Conv(dims, {.in = 8 * w, .out = spec.classes, .kernel = 1});
  torch::nn::Sequential classifier;
  classifier->push_back(torch::nn::Dropout(0.5));
  classifier->push_back(final_conv);
  classifier->push_back(Relu());
  classifier->push_back(GlobalAvgPool(dims));
  classifier->push_back(torch::nn::Flatten());
  register_module("classifier", classifier);

  // torchvision: Kaiming-uniform convs, the final conv N(0, 0.01); zero biases. Children only:
  // this module is not yet owned by a shared_ptr.
  torch::NoGradGuard no_grad;
  for (const auto& module : modules(/*include_self=*/false)) {
    if (!IsConv(*module)) continue;
    const auto parameters = module->named_parameters(/*recurse=*/false);
    if (module == final_conv.ptr()) {
      torch::nn::init::normal_(parameters["weight"], 0.0, 0.01);
    } else {
      torch::nn::init::kaiming_uniform_(parameters["weight"]);
    }
    parameters["bias"].zero_();
  }
}

torch::Tensor SqueezeNetImpl::forward(const torch::Tensor& input) {
  return Seq("classifier").forward(Seq("features").forward(input));
}

}  // namespace xtrain::core
