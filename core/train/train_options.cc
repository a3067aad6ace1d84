#include "core/train/train_options.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace xtrain::core {

absl::StatusOr<ScheduleKind> ParseScheduleKind(absl::string_view name) {
  const std::string key = absl::AsciiStrToLower(name);
  if (key == "none" || key == "constant") return ScheduleKind::kNone;
  if (key == "step") return ScheduleKind::kStep;
  if (key == "cosine") return ScheduleKind::kCosine;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown schedule '", name, "'; use 'none', 'step' or 'cosine'"));
}

absl::string_view ScheduleKindName(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::kNone: return "none";
    case ScheduleKind::kStep: return "step";
    case ScheduleKind::kCosine: return "cosine";
  }
  return "?";
}

}  // namespace xtrain::core
