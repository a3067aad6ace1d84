#include "core/xconv/xconv_options.h"

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace xtrain::core {

absl::StatusOr<ProbeMode> ParseProbeMode(absl::string_view name) {
  const std::string key = absl::AsciiStrToLower(name);
  if (key == "independent") return ProbeMode::kIndependent;
  if (key == "multichannel" || key == "multi-channel" || key == "multi") return ProbeMode::kMultiChannel;
  if (key == "orthogonal") return ProbeMode::kOrthogonal;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown probe mode '", name, "': use 'independent', 'multichannel' or 'orthogonal'"));
}

absl::StatusOr<ProbeDistribution> ParseProbeDistribution(absl::string_view name) {
  const std::string key = absl::AsciiStrToLower(name);
  if (key == "gaussian") return ProbeDistribution::kGaussian;
  if (key == "rademacher") return ProbeDistribution::kRademacher;
  if (key == "orthogonal") return ProbeDistribution::kOrthogonal;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown probe distribution '", name, "': use 'gaussian', 'rademacher' or 'orthogonal'"));
}

absl::StatusOr<GradientRoute> ParseGradientRoute(absl::string_view name) {
  const std::string key = absl::AsciiStrToLower(name);
  if (key == "auto") return GradientRoute::kAuto;
  if (key == "tap") return GradientRoute::kTap;
  if (key == "reconstruct" || key == "reconstruction") return GradientRoute::kReconstruct;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown gradient route '", name, "': use 'auto', 'tap' or 'reconstruct'"));
}

absl::string_view ProbeModeName(ProbeMode mode) {
  switch (mode) {
    case ProbeMode::kIndependent: return "independent";
    case ProbeMode::kMultiChannel: return "multichannel";
    case ProbeMode::kOrthogonal: return "orthogonal";
  }
  return "?";
}

absl::string_view ProbeDistributionName(ProbeDistribution distribution) {
  switch (distribution) {
    case ProbeDistribution::kGaussian: return "gaussian";
    case ProbeDistribution::kRademacher: return "rademacher";
    case ProbeDistribution::kOrthogonal: return "orthogonal";
  }
  return "?";
}

absl::string_view GradientRouteName(GradientRoute route) {
  switch (route) {
    case GradientRoute::kAuto: return "auto";
    case GradientRoute::kTap: return "tap";
    case GradientRoute::kReconstruct: return "reconstruct";
  }
  return "?";
}

}  // namespace xtrain::core
