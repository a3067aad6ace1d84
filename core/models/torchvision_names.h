#pragma once

#include <optional>
#include <string>

#include "core/models/model_spec.h"

namespace xtrain::core {

// torchvision's parameter and buffer names for the zoo's nets of the same layout: resnet18 with
// imagenet_stem (and BatchNorm), squeezenet1_1 at width 64. "layer1.0.bn2.running_mean" is
// "layer1.0.body.4.running_mean" in the zoo's ResNet; "features.3.squeeze.weight" is
// "features.3.squeeze.0.weight" in its SqueezeNet. nullopt: a name the zoo net has no place for, or a
// spec whose layout is not torchvision's.
std::optional<std::string> ZooNameOfTorchvision(const ModelSpec& spec, const std::string& torchvision_name);

// Whether `zoo_name` belongs to the classifier head (resnet18's head.2, squeezenet1_1's
// classifier.1), which finetuning replaces when the class count differs.
bool IsTorchvisionHead(const ModelSpec& spec, const std::string& zoo_name);

// Whether a spec has torchvision's layout (the names above apply); `why` says what to change if not.
bool HasTorchvisionLayout(const ModelSpec& spec, std::string* why = nullptr);

}  // namespace xtrain::core
