#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/memory/memory_model.h"
#include "core/xconv/convert.h"

namespace xtrain::core {

// What the planner may choose from.
struct PlannerOptions {
  double margin = 0.03;        // fraction of the budget held back (model error, allocator slack)
  int64_t min_probes = 2;      // the fewest probes a converted layer gets
  int64_t max_probes = 64;     // the most; beyond, a layer runs exact (the tap route's working
                               // set grows with r*K, so larger r rarely pays for its memory)
  std::vector<ProbeMode> modes = {ProbeMode::kIndependent};  // each must be in the model's modes
  std::set<std::string> keep_exact;                  // layer paths never converted
  std::map<std::string, double> layer_weight;        // measured variance weights, overriding sizes
};

// One conv layer's line in a plan.
struct LayerPlan {
  std::string path;
  LayerChoice choice;
  int64_t kept_bytes = 0;        // what it keeps for backward (input, or sketch and means)
  int64_t exact_kept_bytes = 0;  // its input
  double weight = 0;             // share in the variance proxy (parameter share unless measured)
  double fidelity = 1;           // r / (r + c): 1 for exact
};

// A memory plan for one job: every convertible conv exact or XConv with r and mode.
struct Plan {
  int64_t batch = 0;
  int64_t budget_bytes = 0;
  int64_t usable_bytes = 0;       // budget less the margin
  std::vector<LayerChoice> choices;  // indexed like MemoryModel::layers()
  std::vector<LayerPlan> layers;
  MemoryPrediction prediction;    // peak and where
  int64_t exact_peak_bytes = 0;   // the unconverted model's predicted peak at this batch
  // Parameter-weighted mean over layers of r / (r + c_l), c_l the layer's relative variance per
  // probe (C_in/groups for independent probes): 1 when exact, falls as probes are taken away.
  double fidelity = 1;
  double variance = 0;            // the objective: sum_l w_l c_l / r_l
  double plan_ms = 0;             // time MakePlan took

  int64_t predicted_peak_bytes() const { return prediction.peak_bytes; }
  int converted_layers() const;
  // A readable per-layer table (path, choice, kept bytes, of exact).
  std::string Table() const;
};

// The plan that fits `budget_bytes` at `batch` with the least variance proxy. ResourceExhausted
// with the smallest budget that would fit and the largest batch that fits this one when none does.
// Monotone: a larger budget never gives a lower fidelity, a smaller one never a larger peak.
absl::StatusOr<Plan> MakePlan(const MemoryModel& model, int64_t budget_bytes, int64_t batch,
                              const PlannerOptions& options = {});

// The smallest budget any plan fits at `batch` (the lowest peak along the chain, plus the margin).
int64_t MinimumBudget(const MemoryModel& model, int64_t batch, const PlannerOptions& options = {});

// The largest batch with a plan under `budget_bytes` whose fidelity is at least `min_fidelity`;
// 0 if not even one sample fits. With exact_only, the largest batch the unconverted model fits.
int64_t LargestBatch(const MemoryModel& model, int64_t budget_bytes, const PlannerOptions& options = {},
                     double min_fidelity = 0, bool exact_only = false);

// Convert options that realise a plan: per-layer settings, exact layers as XConv with r = 0 (what
// the model calibrated for a mixed plan), lean layers (mask ReLUs, index max pools) if any layer is
// converted. The route is pinned to the one the model was calibrated with.
ConvertOptions PlanConvertOptions(const Plan& plan, const MemoryModel& model, uint64_t seed);

// Converts `root` as the plan says (nothing changes for an all-exact plan).
absl::StatusOr<ConvertResult> ApplyPlan(std::shared_ptr<torch::nn::Module> root, const Plan& plan,
                                        const MemoryModel& model, uint64_t seed);

}  // namespace xtrain::core
