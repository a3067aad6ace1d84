#include "core/xconv/convert.h"

#include <utility>

#include <torch/version.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/util/mix_seed.h"
#include "core/util/status_macros.h"
#include "core/util/torch_guard.h"
#include "core/xconv/modules.h"

namespace xtrain::core {
namespace {

// LibTorch 1.x spells its variant c10::variant; 2.x uses std::variant.
#if TORCH_VERSION_MAJOR >= 2
using std::get_if;
using std::holds_alternative;
#else
using c10::get_if;
using c10::holds_alternative;
#endif

using ModulePtr = std::shared_ptr<torch::nn::Module>;

// Why XConv cannot run a torch conv with these options; empty if it can.
template <size_t D, typename ConvOptions>
std::string Unsupported(const ConvOptions& options) {
  if (!holds_alternative<torch::enumtype::kZeros>(options.padding_mode())) {
    return absl::StrCat("padding mode ", torch::enumtype::get_enum_name(options.padding_mode()),
                        ": XConv pads with zeros only");
  }
  if (holds_alternative<torch::enumtype::kSame>(options.padding())) {
    for (size_t i = 0; i < D; ++i) {
      if ((*options.dilation())[i] * ((*options.kernel_size())[i] - 1) % 2 != 0) {
        return "padding='same' with an even kernel pads unevenly: XConv needs symmetric padding";
      }
    }
  }
  return "";
}

// Explicit zero padding of a torch conv XConv can run (Unsupported is empty).
template <size_t D, typename ConvOptions>
torch::ExpandingArray<D> ZeroPadding(const ConvOptions& options) {
  torch::ExpandingArray<D> padding(0);
  if (const auto* explicit_padding = get_if<torch::ExpandingArray<D>>(&options.padding())) {
    return *explicit_padding;
  }
  if (holds_alternative<torch::enumtype::kSame>(options.padding())) {
    for (size_t i = 0; i < D; ++i) (*padding)[i] = (*options.dilation())[i] * ((*options.kernel_size())[i] - 1) / 2;
  }
  return padding;  // kValid
}

struct Walker {
  const ConvertOptions& options;
  std::vector<std::string> converted;
  uint64_t next_layer = 0;
  std::map<std::string, std::string> left_exact;

  XConvSettings SettingsFor(const std::string& path) const {
    auto it = options.per_layer.find(path);
    return it == options.per_layer.end() ? options.settings : it->second;
  }

  template <size_t D, typename TorchImpl, typename XImpl>
  absl::StatusOr<ModulePtr> SwapConv(TorchImpl& conv, const std::string& path) {
    const auto& o = conv.options;
    if (o.transposed()) return nullptr;
    if (const std::string why = Unsupported<D>(o); !why.empty()) {
      if (options.unsupported_stay_exact) {
        left_exact[path] = why;
        return nullptr;
      }
      return absl::InvalidArgumentError(
          absl::StrCat("convert: ", path, " cannot run as XConv (", why, "), so list this layer in keep_exact"));
    }
    XConvOptions<D> x(o.in_channels(), o.out_channels(), o.kernel_size());
    x.stride(o.stride()).padding(ZeroPadding<D>(o)).dilation(o.dilation()).groups(o.groups()).bias(o.bias());
    x.settings(SettingsFor(path)).seed(MixSeed(options.seed, next_layer++));
    return std::make_shared<XImpl>(x, conv.weight, o.bias() ? conv.bias : torch::Tensor());
  }

  // An IndexMaxPool for a torch max pool, or nullptr to keep it (windows over 256 elements).
  template <size_t D, typename PoolOptions>
  ModulePtr SwapPool(const PoolOptions& o) {
    PoolGeometry g;
    g.kernel = std::vector<int64_t>(o.kernel_size()->begin(), o.kernel_size()->end());
    g.stride = std::vector<int64_t>(o.stride()->begin(), o.stride()->end());
    g.padding = std::vector<int64_t>(o.padding()->begin(), o.padding()->end());
    g.dilation = std::vector<int64_t>(o.dilation()->begin(), o.dilation()->end());
    g.ceil_mode = o.ceil_mode();
    int64_t window = 1;
    for (int64_t k : g.kernel) window *= k;
    if (window > 256) return nullptr;
    return std::make_shared<IndexMaxPoolImpl>(std::move(g));
  }

  // The replacement for `module`, or nullptr to keep it (after converting its children).
  absl::StatusOr<ModulePtr> Visit(const ModulePtr& module, const std::string& path) {
    if (!options.keep_exact.count(path)) {
      if (auto* conv = dynamic_cast<torch::nn::Conv2dImpl*>(module.get())) {
        return Swapped(SwapConv<2, torch::nn::Conv2dImpl, XConv2dImpl>(*conv, path), path);
      }
      if (auto* conv = dynamic_cast<torch::nn::Conv3dImpl*>(module.get())) {
        return Swapped(SwapConv<3, torch::nn::Conv3dImpl, XConv3dImpl>(*conv, path), path);
      }
      if (options.lean_layers && dynamic_cast<torch::nn::ReLUImpl*>(module.get())) {
        return Swapped(ModulePtr(std::make_shared<MaskReLUImpl>()), path);
      }
      if (options.lean_layers) {
        if (auto* pool = dynamic_cast<torch::nn::MaxPool2dImpl*>(module.get())) {
          return Swapped(SwapPool<2>(pool->options), path);
        }
        if (auto* pool = dynamic_cast<torch::nn::MaxPool3dImpl*>(module.get())) {
          return Swapped(SwapPool<3>(pool->options), path);
        }
      }
    }
    return VisitChildren(module, path);
  }

  absl::StatusOr<ModulePtr> Swapped(absl::StatusOr<ModulePtr> swapped, const std::string& path) {
    if (swapped.ok() && *swapped) converted.push_back(path);
    return swapped;
  }

  absl::StatusOr<ModulePtr> VisitChildren(const ModulePtr& module, const std::string& path) {
    std::vector<std::pair<std::string, ModulePtr>> children;
    bool changed = false;
    for (const auto& item : module->named_children()) {
      const std::string child_path = path.empty() ? item.key() : absl::StrCat(path, ".", item.key());
      absl::StatusOr<ModulePtr> replacement = Visit(item.value(), child_path);
      if (!replacement.ok()) return replacement.status();
      changed = changed || *replacement != nullptr;
      children.emplace_back(item.key(), *replacement ? *replacement : item.value());
    }
    if (!changed) return nullptr;

    // Containers keep their own list besides the registry: rebuild them.
    if (dynamic_cast<torch::nn::SequentialImpl*>(module.get())) {
      auto rebuilt = std::make_shared<torch::nn::SequentialImpl>();
      auto* old = dynamic_cast<torch::nn::SequentialImpl*>(module.get());
      for (size_t i = 0; i < children.size(); ++i) {
        const ModulePtr& child = children[i].second;
        if (child == old->ptr(i)) {
          rebuilt->push_back(children[i].first, *(old->begin() + i));  // the original AnyModule
        } else if (auto x2 = std::dynamic_pointer_cast<XConv2dImpl>(child)) {
          rebuilt->push_back(children[i].first, torch::nn::AnyModule(x2));
        } else if (auto x3 = std::dynamic_pointer_cast<XConv3dImpl>(child)) {
          rebuilt->push_back(children[i].first, torch::nn::AnyModule(x3));
        } else if (auto relu = std::dynamic_pointer_cast<MaskReLUImpl>(child)) {
          rebuilt->push_back(children[i].first, torch::nn::AnyModule(relu));
        } else if (auto pool = std::dynamic_pointer_cast<IndexMaxPoolImpl>(child)) {
          rebuilt->push_back(children[i].first, torch::nn::AnyModule(pool));
        } else {
          return absl::InvalidArgumentError(absl::StrCat(
              "convert: cannot place the converted ", path, ".", children[i].first,
              " back into its Sequential"));
        }
      }
      return ModulePtr(rebuilt);
    }
    if (dynamic_cast<torch::nn::ModuleListImpl*>(module.get())) {
      auto rebuilt = std::make_shared<torch::nn::ModuleListImpl>();
      for (auto& child : children) rebuilt->push_back(child.second);
      return ModulePtr(rebuilt);
    }
    if (dynamic_cast<torch::nn::ModuleDictImpl*>(module.get())) {
      return ModulePtr(std::make_shared<torch::nn::ModuleDictImpl>(children));
    }
    // A custom module: swap its registered children in place and keep the module itself.
    for (const auto& [name, child] : children) {
      if (module->named_children()[name] != child) module->replace_module(name, child);
    }
    return nullptr;
  }
};

}  // namespace

absl::StatusOr<ConvertResult> Convert(std::shared_ptr<torch::nn::Module> root,
                                      const ConvertOptions& options) {
  if (!root) return absl::InvalidArgumentError("convert: the module is null");
  for (const auto& [path, settings] : options.per_layer) {
    if (settings.probes < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("convert: probes for ", path, " must be >= 0 (0 = exact)"));
    }
  }
  if (options.settings.probes < 0) {
    return absl::InvalidArgumentError("convert: probes must be >= 0 (0 = exact)");
  }
  Walker walker{options, {}, 0, {}};
  return GuardTorch("convert", [&]() -> absl::StatusOr<ConvertResult> {
    XTRAIN_ASSIGN_OR_RETURN(ModulePtr replacement, walker.Visit(root, ""));
    // A custom module whose children were swapped in place returns nullptr too.
    return ConvertResult{replacement ? replacement : root, std::move(walker.converted),
                         std::move(walker.left_exact)};
  });
}

}  // namespace xtrain::core
