#pragma once

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace xtrain::core {

// How probe vectors are shared across input channels (DESIGN.md §1).
enum class ProbeMode {
  kIndependent,   // one Z (S x r) shared by all channels: keeps B*C_in*r values
  kMultiChannel,  // one Z over C_in*S jointly: keeps B*r values, more variance
  kOrthogonal,    // like multichannel, but each channel owns disjoint probe columns
};

// Distribution of probe entries; all have E[z z^T] = I.
enum class ProbeDistribution {
  kGaussian,    // N(0, 1)
  kRademacher,  // +-1, lower variance than Gaussian
  kOrthogonal,  // QR-orthogonalised Gaussian scaled by sqrt(dim): r = dim gives the exact gradient
};

// Which weight-gradient computation backward uses (DESIGN.md §1).
enum class GradientRoute {
  kAuto,         // pick the cheaper route per call by the cost rule in weight_gradient.h
  kTap,          // one conv weight-gradient call on the probes, then contract with the sketch
  kReconstruct,  // rebuild X_hat = Z Z^T X / r from the sketch, then the exact weight-gradient kernel
};

// Settings of one XConv layer apart from its convolution geometry.
struct XConvSettings {
  int64_t probes = 16;  // r; 0 means the exact path (input kept, exact weight gradient)
  ProbeMode mode = ProbeMode::kIndependent;
  ProbeDistribution distribution = ProbeDistribution::kRademacher;
  GradientRoute route = GradientRoute::kAuto;
  // Keep each channel's spatial mean exactly and sketch only the residual (a control variate):
  // B*C_in more values kept, unbiased still, and several times less error on ReLU activations,
  // whose large positive mean otherwise dominates the estimator's variance.
  bool center = true;
  // Reconstruction route only: rebuild X_hat this many samples at a time (0 = whole batch).
  int64_t reconstruct_batch_chunk = 0;
};

absl::StatusOr<ProbeMode> ParseProbeMode(absl::string_view name);
absl::StatusOr<ProbeDistribution> ParseProbeDistribution(absl::string_view name);
absl::StatusOr<GradientRoute> ParseGradientRoute(absl::string_view name);

absl::string_view ProbeModeName(ProbeMode mode);
absl::string_view ProbeDistributionName(ProbeDistribution distribution);
absl::string_view GradientRouteName(GradientRoute route);

}  // namespace xtrain::core
