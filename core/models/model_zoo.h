#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/models/model_spec.h"
#include "core/models/network.h"

namespace xtrain::core {

// The model name of a user's TorchScript module (ModelSpec::script_path), besides the zoo's.
inline constexpr char kTorchScriptModel[] = "torchscript";

// The zoo's names BuildModel accepts, in a fixed order (kTorchScriptModel besides them).
std::vector<std::string> ModelNames();

// Builds the model `spec` names, in training mode on the CPU. The weights depend only on the spec
// and spec.seed: the global CPU generator is seeded for the build and restored afterwards, so the
// caller's random stream is not disturbed (builds are serialised; other threads drawing from the
// global generator meanwhile would interleave). InvalidArgument names the field to change.
absl::StatusOr<std::shared_ptr<NetworkImpl>> BuildModel(const ModelSpec& spec);

}  // namespace xtrain::core
