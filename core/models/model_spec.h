#pragma once

#include <cstdint>
#include <string>

namespace xtrain::core {

// What BuildModel builds. Zero width/depth take the model's default; a field a model does not read
// (classes for dense models, out_channels for classifiers, scale outside srnet) is ignored.
struct ModelSpec {
  std::string name;          // one of ModelNames()
  int64_t dims = 2;          // 2: images (N, C, H, W); 3: volumes (N, C, D, H, W)
  int64_t in_channels = 1;   // input channels (ddpm_unet: data channels + 1 timestep channel)
  int64_t out_channels = 1;  // output channels of dense models: unet, srnet, dncnn, ddpm_unet
  int64_t classes = 10;      // logits of classifiers: small_cnn, resnet18, squeezenet1_1, strided_grouped
  int64_t width = 0;         // base channel count; 0 = the model's default
  int64_t depth = 0;         // blocks per stage / U-Net levels / conv layers; 0 = the model's default
  int64_t scale = 2;         // srnet: upscaling factor per spatial side
  bool batch_norm = true;    // BatchNorm after convs: resnet18, unet, ddpm_unet, dncnn, strided_grouped
  // resnet18: torchvision's ImageNet stem (7x7/2 conv, BatchNorm, ReLU, 3x3/2 max pool) instead of the
  // 3x3 stem for small images; with width 64 and depth 2 the net takes torchvision's weights.
  bool imagenet_stem = false;
  uint64_t seed = 0;         // the initial weights are a function of the spec and this seed
  // name "torchscript": the torch.jit.save'd module to train (its weights are the initial weights;
  // classes > 0 replaces a head with another output count). See script_network.h.
  std::string script_path = {};
  // What messages call the module (the uploaded artifact's id, the user's path); script_path if empty.
  std::string script_name = {};
};

}  // namespace xtrain::core
