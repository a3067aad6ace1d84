#include "core/models/torchvision_names.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace xtrain::core {

bool HasTorchvisionLayout(const ModelSpec& spec, std::string* why) {
  auto no = [why](std::string text) {
    if (why != nullptr) *why = std::move(text);
    return false;
  };
  if (spec.dims != 2) return no("torchvision's nets are 2-D; set model.dims to 2");
  if (spec.name == "resnet18") {
    if (!spec.imagenet_stem) return no("torchvision's resnet18 has the ImageNet stem; set model.imagenet_stem");
    if (!spec.batch_norm) return no("torchvision's resnet18 has BatchNorm; unset model.no_batch_norm");
    if (spec.width != 0 && spec.width != 64) return no("torchvision's resnet18 has width 64; set model.width to 64");
    if (spec.depth != 0 && spec.depth != 2) return no("torchvision's resnet18 has 2 blocks per stage; set model.depth to 2");
    return true;
  }
  if (spec.name == "squeezenet1_1") {
    if (spec.width != 0 && spec.width != 64) return no("torchvision's squeezenet1_1 has width 64; set model.width to 64");
    return true;
  }
  return no(absl::StrCat("model ", spec.name, " has no torchvision counterpart (resnet18 and squeezenet1_1 do)"));
}

std::optional<std::string> ZooNameOfTorchvision(const ModelSpec& spec, const std::string& name) {
  if (!HasTorchvisionLayout(spec)) return std::nullopt;
  std::vector<std::string> parts = absl::StrSplit(name, '.');
  if (parts.size() < 2) return std::nullopt;
  const std::string leaf = parts.back();
  if (spec.name == "resnet18") {
    if (parts.size() == 2) {
      if (parts[0] == "conv1") return absl::StrCat("stem.0.", leaf);
      if (parts[0] == "bn1") return absl::StrCat("stem.1.", leaf);
      if (parts[0] == "fc") return absl::StrCat("head.2.", leaf);
      return std::nullopt;
    }
    // layerS.B.<part>.leaf or layerS.B.downsample.I.leaf
    if (parts.size() < 4 || parts[0].rfind("layer", 0) != 0) return std::nullopt;
    const std::string block = absl::StrCat(parts[0], ".", parts[1]);
    if (parts.size() == 4) {
      const std::string& part = parts[2];
      const char* index = part == "conv1" ? "0" : part == "bn1" ? "1" : part == "conv2" ? "3" : part == "bn2" ? "4" : nullptr;
      if (index == nullptr) return std::nullopt;
      return absl::StrCat(block, ".body.", index, ".", leaf);
    }
    if (parts.size() == 5 && parts[2] == "downsample" && (parts[3] == "0" || parts[3] == "1")) {
      return absl::StrCat(block, ".shortcut.", parts[3], ".", leaf);
    }
    return std::nullopt;
  }
  // squeezenet1_1: the Fire modules' convolutions sit in one-conv Sequentials in the zoo.
  if (parts.size() == 4 && parts[0] == "features" &&
      (parts[2] == "squeeze" || parts[2] == "expand1x1" || parts[2] == "expand3x3")) {
    return absl::StrCat("features.", parts[1], ".", parts[2], ".0.", leaf);
  }
  if (parts.size() == 3 && ((parts[0] == "features" && parts[1] == "0") || (parts[0] == "classifier" && parts[1] == "1"))) {
    return name;
  }
  return std::nullopt;
}

bool IsTorchvisionHead(const ModelSpec& spec, const std::string& zoo_name) {
  const std::string head = spec.name == "resnet18" ? "head.2." : spec.name == "squeezenet1_1" ? "classifier.1." : "";
  return !head.empty() && zoo_name.rfind(head, 0) == 0;
}

}  // namespace xtrain::core
