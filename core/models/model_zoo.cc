#include "core/models/model_zoo.h"
#include "core/models/script_network.h"

#include <mutex>
#include <new>

#include <ATen/CPUGeneratorImpl.h>

#include "absl/base/const_init.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "core/models/dncnn.h"
#include "core/models/resnet.h"
#include "core/models/small_cnn.h"
#include "core/models/squeezenet.h"
#include "core/models/srnet.h"
#include "core/models/strided_grouped.h"
#include "core/models/unet.h"
#include "core/util/generator_state.h"
#include "core/util/torch_guard.h"

namespace xtrain::core {
namespace {

constexpr int64_t kMaxWidth = int64_t{1} << 16;
constexpr int64_t kMaxUNetDepth = 10;  // keeps width * 2^depth channels far from overflow

// Serialises builds: each one reseeds and restores the process-wide CPU generator.
ABSL_CONST_INIT absl::Mutex build_mutex(absl::kConstInit);

// Seeds the global CPU generator and restores its full state (seed, offset, normal cache) on exit.
class GlobalSeedGuard {
 public:
  explicit GlobalSeedGuard(uint64_t seed) {
    std::lock_guard<std::mutex> lock(scope_.generator().mutex());
    scope_.generator().set_current_seed(seed);
  }

 private:
  GlobalGeneratorScope scope_;
};

enum class Kind { kClassifier, kDense };

// One entry of the zoo: defaults, the rules a spec must follow beyond the common ones, a builder.
struct Family {
  const char* name;
  Kind kind;
  int64_t default_width;
  int64_t default_depth;  // 0: the model has no depth to choose
  absl::Status (*check)(const ModelSpec& resolved);
  std::shared_ptr<NetworkImpl> (*build)(const ModelSpec& resolved);
};

absl::Status Invalid(const ModelSpec& spec, const std::string& sentence) {
  return absl::InvalidArgumentError(absl::StrCat("model ", spec.name, ": ", sentence));
}

absl::Status NoRules(const ModelSpec&) { return absl::OkStatus(); }

template <typename Impl>
std::shared_ptr<NetworkImpl> Make(const ModelSpec& spec) {
  return std::make_shared<Impl>(spec);
}

absl::Status CheckSqueezeNet(const ModelSpec& spec) {
  if (spec.width % 4 != 0) {
    return Invalid(spec, absl::StrCat("width ", spec.width,
                                      " must be a multiple of 4 (squeeze layers use width / 4); "
                                      "use 0 for the standard 64"));
  }
  return absl::OkStatus();
}

absl::Status CheckUNet(const ModelSpec& spec) {
  if (spec.depth > kMaxUNetDepth) {
    return Invalid(spec, absl::StrCat("depth ", spec.depth, " is too deep; set depth between 1 and ",
                                      kMaxUNetDepth, " levels"));
  }
  return absl::OkStatus();
}

absl::Status CheckDdpmUNet(const ModelSpec& spec) {
  if (spec.in_channels != spec.out_channels + 1) {
    return Invalid(spec, absl::StrCat("in_channels (", spec.in_channels, ") must be out_channels (",
                                      spec.out_channels,
                                      ") + 1: the input carries the data channels plus one timestep "
                                      "channel, so set in_channels to ",
                                      spec.out_channels + 1));
  }
  return CheckUNet(spec);
}

absl::Status CheckDnCnn(const ModelSpec& spec) {
  if (spec.depth < 2) {
    return Invalid(spec, absl::StrCat("depth ", spec.depth,
                                      " is too shallow; set depth to 2 or more conv layers "
                                      "(first and last)"));
  }
  return absl::OkStatus();
}

absl::Status CheckSrNet(const ModelSpec& spec) {
  if (spec.scale < 1 || spec.scale > 16) {
    return Invalid(spec, absl::StrCat("scale ", spec.scale, " is out of range; set scale between 1 and 16"));
  }
  return absl::OkStatus();
}

absl::Status CheckStridedGrouped(const ModelSpec& spec) {
  if (spec.width % 2 != 0) {
    return Invalid(spec, absl::StrCat("width ", spec.width,
                                      " must be even (its convs use groups 2 and 4 on 2 * width channels)"));
  }
  return absl::OkStatus();
}

const std::vector<Family>& Families() {
  static const auto* families = new std::vector<Family>{
      {"small_cnn", Kind::kClassifier, 32, 0, &NoRules, &Make<SmallCnnImpl>},
      {"resnet18", Kind::kClassifier, 64, 2, &NoRules, &Make<ResNetImpl>},
      {"squeezenet1_1", Kind::kClassifier, 64, 0, &CheckSqueezeNet, &Make<SqueezeNetImpl>},
      {"unet", Kind::kDense, 16, 3, &CheckUNet, &Make<UNetImpl>},
      {"srnet", Kind::kDense, 64, 4, &CheckSrNet, &Make<SrNetImpl>},
      {"dncnn", Kind::kDense, 64, 17, &CheckDnCnn, &Make<DnCnnImpl>},
      {"ddpm_unet", Kind::kDense, 16, 2, &CheckDdpmUNet, &Make<UNetImpl>},
      {"strided_grouped", Kind::kClassifier, 16, 0, &CheckStridedGrouped, &Make<StridedGroupedImpl>},
  };
  return *families;
}

// `spec` with width and depth resolved, or InvalidArgument saying what to change.
absl::StatusOr<ModelSpec> Resolve(const ModelSpec& spec, const Family& family) {
  if (spec.dims != 2 && spec.dims != 3) {
    return Invalid(spec, absl::StrCat("dims ", spec.dims,
                                      " is not supported; set dims to 2 (images) or 3 (volumes)"));
  }
  if (spec.in_channels < 1) {
    return Invalid(spec, absl::StrCat("in_channels ", spec.in_channels, " must be at least 1"));
  }
  if (spec.imagenet_stem && spec.name != "resnet18") {
    return Invalid(spec, "imagenet_stem applies to resnet18 only; leave it off");
  }
  if (family.kind == Kind::kClassifier && spec.classes < 1) {
    return Invalid(spec, absl::StrCat("classes ", spec.classes, " must be at least 1"));
  }
  if (family.kind == Kind::kDense && spec.out_channels < 1) {
    return Invalid(spec, absl::StrCat("out_channels ", spec.out_channels, " must be at least 1"));
  }
  if (spec.width < 0 || spec.width > kMaxWidth) {
    return Invalid(spec, absl::StrCat("width ", spec.width, " is out of range; set width between 1 and ",
                                      kMaxWidth, ", or 0 for the default ", family.default_width));
  }
  if (family.default_depth == 0 && spec.depth != 0) {
    return Invalid(spec, absl::StrCat("depth ", spec.depth, " does not apply to ", spec.name,
                                      ", whose layout is fixed; leave depth at 0"));
  }
  if (spec.depth < 0) {
    return Invalid(spec, absl::StrCat("depth ", spec.depth, " must be at least 1, or 0 for the default ",
                                      family.default_depth));
  }
  ModelSpec resolved = spec;
  if (resolved.width == 0) resolved.width = family.default_width;
  if (resolved.depth == 0) resolved.depth = family.default_depth;
  if (absl::Status status = family.check(resolved); !status.ok()) return status;
  return resolved;
}

}  // namespace

std::vector<std::string> ModelNames() {
  std::vector<std::string> names;
  for (const Family& family : Families()) names.emplace_back(family.name);
  return names;
}

absl::StatusOr<std::shared_ptr<NetworkImpl>> BuildModel(const ModelSpec& spec) {
  if (spec.name == kTorchScriptModel) {
    absl::StatusOr<std::shared_ptr<ScriptNetworkImpl>> script = ScriptNetworkImpl::Load(spec);
    if (!script.ok()) return script.status();
    return std::shared_ptr<NetworkImpl>(*std::move(script));
  }
  const Family* family = nullptr;
  for (const Family& candidate : Families()) {
    if (spec.name == candidate.name) family = &candidate;
  }
  if (family == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown model '", spec.name,
                                                   "'; set name to one of: ",
                                                   absl::StrJoin(ModelNames(), ", "),
                                                   ", or torchscript for your own module"));
  }
  absl::StatusOr<ModelSpec> resolved = Resolve(spec, *family);
  if (!resolved.ok()) return resolved.status();
  // Running out of memory is ResourceExhausted with advice, not the guard's InternalError.
  try {
    return GuardTorch(absl::StrCat("model ", spec.name), [&]() -> absl::StatusOr<std::shared_ptr<NetworkImpl>> {
      absl::MutexLock lock(&build_mutex);
      GlobalSeedGuard seed_guard(resolved->seed);
      return family->build(*resolved);
    });
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("model ", spec.name, ": out of memory building the parameters; reduce width"));
  }
}

}  // namespace xtrain::core
