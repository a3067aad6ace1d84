#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/xconv/xconv_options.h"

namespace xtrain::core {

// What Convert swaps and with which settings.
struct ConvertOptions {
  XConvSettings settings;                            // for every converted conv without an override
  std::map<std::string, XConvSettings> per_layer;    // overrides by module path ("features.3")
  std::set<std::string> keep_exact;                  // paths left as torch convolutions
  // Swap the exact layers that keep more than they need for ones with the same output and
  // gradients: ReLU -> MaskReLU (1 bit per element), MaxPool -> IndexMaxPool (1 byte per output).
  bool lean_layers = true;
  uint64_t seed = 0;                                 // layer i's seed stream starts at MixSeed(seed, i)
  // Convolutions XConv cannot run (non-zero padding modes, asymmetric 'same' padding) stay torch
  // convolutions and are listed in ConvertResult::left_exact, instead of failing the conversion.
  bool unsupported_stay_exact = false;
};

// The converted tree and what changed.
struct ConvertResult {
  std::shared_ptr<torch::nn::Module> module;  // the root (a new object if the root itself was swapped)
  std::vector<std::string> converted;          // paths of swapped modules, in tree order
  std::map<std::string, std::string> left_exact;  // unsupported_stay_exact: path -> why it stays a torch conv
};

// Walks `root` and swaps Conv2d/Conv3d for XConv2d/XConv3d (keeping the same weight and bias
// tensors), and with lean_layers ReLU for MaskReLU and MaxPool2d/3d for IndexMaxPool. Sequential, ModuleList and ModuleDict are rebuilt in place of
// the old containers; other parents get Module::replace_module, so a custom module must reach
// its children through the registry (named_children / a container), not a member holder taken
// before the swap. InvalidArgument for convolutions XConv cannot run (non-zero padding modes,
// asymmetric 'same' padding) unless they are listed in keep_exact or unsupported_stay_exact is set.
absl::StatusOr<ConvertResult> Convert(std::shared_ptr<torch::nn::Module> root,
                                      const ConvertOptions& options);

}  // namespace xtrain::core
