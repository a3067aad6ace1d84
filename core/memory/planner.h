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
  std::string note;              // why it stays exact whatever the budget (empty: the planner's choice)
};

// A memory plan for one job: every convertible conv exact or XConv with r and mode, and whether
// the lean layers (mask ReLU, index max pool: exact gradients) replace ReLUs and max pools.
struct Plan {
  int64_t batch = 0;
  int64_t budget_bytes = 0;
  int64_t usable_bytes = 0;       // budget less the margin
  std::vector<LayerChoice> choices;  // indexed like MemoryModel::layers()
  // Lean layers on. Every plan with an XConv layer has them (the model is calibrated so); with
  // every conv exact they are the plan that frees memory without gradient noise.
  bool lean_layers = false;
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
  // A readable per-layer table (path, choice, kept bytes, of exact), the lean layers and the peak.
  std::string Table() const;
};

// One plan along the planner's chain: choices, lean layers, predicted step peak and fidelity.
struct ChainPoint {
  std::vector<LayerChoice> choices;
  bool lean_layers = false;
  int64_t peak_bytes = 0;
  double fidelity = 1;
};

// The chain MakePlan walks at `batch`, cheapest (lowest peak) first, exact last; peaks rise along
// it. MakePlan(budget) is the last point with peak <= budget * (1 - margin). It runs from every
// freeable layer at min_probes through plans that buy back the most variance per byte, then the
// lean layers with every conv exact, then the exact model; a point whose peak is not below every
// later point's is left out (a later one fits the same budget with more fidelity). The service's
// scheduler re-plans a job smaller along it without a model. InvalidArgument for a batch < 1 or
// options the model cannot honour.
absl::StatusOr<std::vector<ChainPoint>> PlanChain(const MemoryModel& model, int64_t batch,
                                                  const PlannerOptions& options = {});

// The plan that fits `budget_bytes` at `batch` with the least variance proxy. ResourceExhausted
// with the smallest budget that would fit and the largest batch that fits this one when none does.
// Monotone: a larger budget never gives a lower fidelity, a smaller one never a larger peak.
absl::StatusOr<Plan> MakePlan(const MemoryModel& model, int64_t budget_bytes, int64_t batch,
                              const PlannerOptions& options = {});

// The plan of given choices (a chain point, or one stored or sent earlier): per-layer rows, the
// prediction, fidelity. Lean layers are on if asked or if any layer is XConv. InvalidArgument if
// the choices do not fit the model (count, probes, an uncalibrated mode, a layer XConv cannot run)
// or the batch is < 1; `budget_bytes` 0 means none.
absl::StatusOr<Plan> PlanFromChoices(const MemoryModel& model, const std::vector<LayerChoice>& choices,
                                     bool lean_layers, int64_t batch, int64_t budget_bytes,
                                     const PlannerOptions& options = {});

// The part of `budget_bytes` a plan may fill: the budget less the margin (floor).
int64_t UsableBytes(int64_t budget_bytes, const PlannerOptions& options = {});
// The smallest budget whose usable part holds `peak_bytes`.
int64_t BudgetForPeak(int64_t peak_bytes, const PlannerOptions& options = {});

// The smallest budget any plan fits at `batch`: BudgetForPeak of the chain's first point. A batch
// < 1 or invalid options have no plan: INT64_MAX (no budget fits).
int64_t MinimumBudget(const MemoryModel& model, int64_t batch, const PlannerOptions& options = {});

// The largest batch with a plan under `budget_bytes` whose fidelity is at least `min_fidelity`
// (1: exact gradients, lean layers allowed); 0 if not even one sample fits or the options are
// invalid. With exact_only, the largest batch the unconverted model fits. The search has no cap
// but the batch whose input alone fills the budget.
int64_t LargestBatch(const MemoryModel& model, int64_t budget_bytes, const PlannerOptions& options = {},
                     double min_fidelity = 0, bool exact_only = false);

// Convert options that realise a plan as the model calibrated it: with lean layers, every
// convertible conv becomes XConv (exact ones with r = 0, whose backward may take the weight-only
// kernel) and ReLUs and max pools their lean forms; convs XConv cannot run are kept exact. The
// route is pinned to the one the model was calibrated with.
ConvertOptions PlanConvertOptions(const Plan& plan, const MemoryModel& model, uint64_t seed);

// Converts `root` as the plan says (nothing changes for the exact plan). InvalidArgument if the
// plan's choices do not match the model's layers.
absl::StatusOr<ConvertResult> ApplyPlan(std::shared_ptr<torch::nn::Module> root, const Plan& plan,
                                        const MemoryModel& model, uint64_t seed);

}  // namespace xtrain::core
