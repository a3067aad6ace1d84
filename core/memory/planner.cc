#include "core/memory/planner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <queue>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace xtrain::core {
namespace {

// One step on a layer's ladder: bytes kept per sample and the variance proxy there.
struct Rung {
  LayerChoice choice;
  double bytes = 0;
  double variance = 0;
};

// Probe counts a ladder visits: every r up to 16, then about 6% apart (integer repair needs
// small steps where they matter, and a short chain keeps planning in milliseconds).
std::vector<int64_t> ProbeValues(int64_t low, int64_t high) {
  std::vector<int64_t> values;
  for (int64_t r = low; r <= high;) {
    values.push_back(r);
    r = r < 16 ? r + 1 : std::max(r + 1, static_cast<int64_t>(std::llround(r * 1.0625)));
  }
  if (!values.empty() && values.back() != high) values.push_back(high);
  return values;
}

// Relative variance per probe of one layer in `mode` (the proxy DESIGN.md §2 suggests).
double VariancePerProbe(const ConvLayer& layer, ProbeMode mode) {
  const double per_group = static_cast<double>(layer.in_channels()) / static_cast<double>(layer.groups);
  return mode == ProbeMode::kIndependent ? per_group : per_group * static_cast<double>(layer.in_channels());
}

double SketchValuesPerSample(const ConvLayer& layer, const LayerChoice& c, bool center) {
  const double cin = static_cast<double>(layer.in_channels());
  const double r = static_cast<double>(c.probes);
  return (c.mode == ProbeMode::kIndependent ? cin * r : r) + (center ? cin : 0.0);
}

// The ladder of layer l: the lower convex hull of (bytes, variance) over allowed modes and probe
// counts, ending in exact (variance 0). Empty if converting the layer can never save memory.
std::vector<Rung> Ladder(const MemoryModel& model, size_t l, double weight, const PlannerOptions& options) {
  const ConvLayer& layer = model.layers()[l];
  const double exact_bytes = static_cast<double>(layer.in_channels() * layer.spatial());
  std::vector<Rung> points;
  for (ProbeMode mode : options.modes) {
    for (int64_t r : ProbeValues(options.min_probes, options.max_probes)) {
      Rung rung;
      rung.choice = {true, r, mode};
      rung.bytes = SketchValuesPerSample(layer, rung.choice, model.options().center);
      rung.variance = weight * VariancePerProbe(layer, mode) / static_cast<double>(r);
      if (rung.bytes < exact_bytes) points.push_back(rung);
    }
  }
  if (points.empty()) return {};
  points.push_back({LayerChoice{}, exact_bytes, 0.0});
  std::sort(points.begin(), points.end(), [](const Rung& a, const Rung& b) {
    return a.bytes != b.bytes ? a.bytes < b.bytes : a.variance < b.variance;
  });
  // Lower convex hull (variance falls as bytes grow; keep only points on the hull).
  std::vector<Rung> hull;
  for (const Rung& p : points) {
    if (!hull.empty() && p.variance >= hull.back().variance) continue;  // dominated
    while (hull.size() >= 2) {
      const Rung& a = hull[hull.size() - 2];
      const Rung& b = hull.back();
      const double cross = (b.bytes - a.bytes) * (p.variance - a.variance) -
                           (b.variance - a.variance) * (p.bytes - a.bytes);
      if (cross <= 0) hull.pop_back();  // b lies on or above the segment a-p
      else break;
    }
    hull.push_back(p);
  }
  return hull;
}

struct LayerState {
  std::vector<Rung> ladder;  // empty: always exact
  double weight = 0;
  double c_independent = 0;
};

// The chain of plans from the cheapest to exact: each step moves one layer one rung up, the
// layer whose step buys the most variance per byte (a priority queue). The chain does not depend
// on the budget, which makes the planner monotone.
struct Chain {
  std::vector<LayerState> layers;
  std::vector<std::pair<int, int>> steps;  // (layer, rung it moves to)
};

Chain BuildChain(const MemoryModel& model, const PlannerOptions& options) {
  Chain chain;
  const auto& layers = model.layers();
  double total = 0;
  for (const ConvLayer& layer : layers) total += static_cast<double>(layer.parameters());
  for (size_t l = 0; l < layers.size(); ++l) {
    LayerState state;
    auto measured = options.layer_weight.find(layers[l].path);
    state.weight = measured != options.layer_weight.end()
                       ? measured->second
                       : static_cast<double>(layers[l].parameters()) / std::max(total, 1.0);
    state.c_independent = VariancePerProbe(layers[l], ProbeMode::kIndependent);
    // A layer whose input stays alive anyway is left exact: converting it would only add a sketch.
    if (!options.keep_exact.count(layers[l].path) && model.InputFreeable(l)) {
      state.ladder = Ladder(model, l, state.weight, options);
    }
    chain.layers.push_back(std::move(state));
  }
  using Item = std::tuple<double, int, int>;  // (variance per byte, -layer, next rung)
  std::priority_queue<Item> queue;
  auto push = [&](int l, int next) {
    const auto& ladder = chain.layers[l].ladder;
    if (next >= static_cast<int>(ladder.size())) return;
    const double gain = ladder[next - 1].variance - ladder[next].variance;
    const double cost = std::max(ladder[next].bytes - ladder[next - 1].bytes, 1e-9);
    queue.emplace(gain / cost, -l, next);
  };
  for (int l = 0; l < static_cast<int>(layers.size()); ++l) push(l, 1);
  while (!queue.empty()) {
    auto [ratio, neg_layer, next] = queue.top();
    queue.pop();
    chain.steps.emplace_back(-neg_layer, next);
    push(-neg_layer, next + 1);
  }
  return chain;
}

std::vector<LayerChoice> StartChoices(const Chain& chain) {
  std::vector<LayerChoice> choices(chain.layers.size());
  for (size_t l = 0; l < chain.layers.size(); ++l) {
    if (!chain.layers[l].ladder.empty()) choices[l] = chain.layers[l].ladder[0].choice;
  }
  return choices;
}

// Predicted peaks along the chain (element 0 = start; element k = after k steps).
std::vector<int64_t> ChainPeaks(const MemoryModel& model, const Chain& chain, int64_t batch) {
  std::vector<LayerChoice> choices = StartChoices(chain);
  std::vector<int64_t> peaks = {model.PredictPeak(choices, batch)};
  for (const auto& [l, rung] : chain.steps) {
    choices[l] = chain.layers[l].ladder[rung].choice;
    peaks.push_back(model.PredictPeak(choices, batch));
  }
  return peaks;
}

// The last chain element that fits, among those no later element undercuts (so the chosen peak
// grows with the budget); -1 if none fits.
int64_t Select(const std::vector<int64_t>& peaks, int64_t usable) {
  int64_t floor = INT64_MAX;
  for (int64_t k = static_cast<int64_t>(peaks.size()) - 1; k >= 0; --k) {
    if (peaks[k] > floor) continue;
    floor = peaks[k];
    if (peaks[k] <= usable) return k;
  }
  return -1;
}

// The smallest budget whose usable part holds the lowest peak along the chain.
int64_t MinimumOf(const std::vector<int64_t>& peaks, const PlannerOptions& options) {
  const int64_t floor = *std::min_element(peaks.begin(), peaks.end());
  return static_cast<int64_t>(std::ceil(static_cast<double>(floor) / (1.0 - options.margin)));
}

int64_t Usable(int64_t budget, const PlannerOptions& options) {
  return static_cast<int64_t>(std::floor(static_cast<double>(budget) * (1.0 - options.margin)));
}

absl::Status Validate(const MemoryModel& model, int64_t budget, int64_t batch, const PlannerOptions& options) {
  if (budget <= 0) return absl::InvalidArgumentError("planner: the budget must be a positive byte count");
  if (batch < 1) return absl::InvalidArgumentError("planner: the batch must be >= 1");
  if (options.margin < 0 || options.margin >= 1) {
    return absl::InvalidArgumentError("planner: margin is a fraction of the budget in [0, 1)");
  }
  if (options.min_probes < 1 || options.max_probes < options.min_probes) {
    return absl::InvalidArgumentError("planner: need 1 <= min_probes <= max_probes");
  }
  if (options.modes.empty()) return absl::InvalidArgumentError("planner: allow at least one probe mode");
  for (ProbeMode mode : options.modes) {
    const auto& calibrated = model.options().modes;
    if (std::find(calibrated.begin(), calibrated.end(), mode) == calibrated.end()) {
      return absl::InvalidArgumentError(absl::StrCat("planner: mode ", std::string(ProbeModeName(mode)),
                                                     " was not calibrated; add it to the model's modes"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

int Plan::converted_layers() const {
  return static_cast<int>(std::count_if(choices.begin(), choices.end(), [](const LayerChoice& c) { return c.xconv; }));
}

std::string Plan::Table() const {
  std::ostringstream out;
  out << absl::StrFormat("%-28s %-18s %14s %14s %7s %8s\n", "layer", "choice", "kept bytes", "exact bytes",
                         "of exact", "fidelity");
  for (const LayerPlan& l : layers) {
    const std::string choice = l.choice.xconv ? absl::StrCat("xconv r=", l.choice.probes, " ",
                                                             std::string(ProbeModeName(l.choice.mode)))
                                              : "exact";
    out << absl::StrFormat("%-28s %-18s %14d %14d %7.3f %8.3f\n", l.path, choice, l.kept_bytes,
                           l.exact_kept_bytes,
                           static_cast<double>(l.kept_bytes) / std::max<int64_t>(l.exact_kept_bytes, 1),
                           l.fidelity);
  }
  out << absl::StrFormat("parameters %d, gradients %d, optimizer state %d, kept for backward %d bytes\n",
                         prediction.parameter_bytes, prediction.gradient_bytes, prediction.optimizer_state_bytes,
                         prediction.kept_bytes);
  out << absl::StrFormat("peak %d bytes (%s%s%s), budget %d, exact %d, fidelity %.4f\n",
                         prediction.peak_bytes, prediction.phase, prediction.at.empty() ? "" : " at ",
                         prediction.at, budget_bytes, exact_peak_bytes, fidelity);
  return out.str();
}

absl::StatusOr<Plan> MakePlan(const MemoryModel& model, int64_t budget_bytes, int64_t batch,
                              const PlannerOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (absl::Status status = Validate(model, budget_bytes, batch, options); !status.ok()) return status;
  const Chain chain = BuildChain(model, options);
  const std::vector<int64_t> peaks = ChainPeaks(model, chain, batch);
  const int64_t usable = Usable(budget_bytes, options);
  const int64_t k = Select(peaks, usable);
  if (k < 0) {
    const int64_t minimum = MinimumOf(peaks, options);
    const int64_t largest = LargestBatch(model, budget_bytes, options);
    return absl::ResourceExhaustedError(absl::StrCat(
        "planner: no plan fits ", budget_bytes, " bytes at batch ", batch, ": the smallest plan (every ",
        "layer whose input it frees at ", options.min_probes, " probes) needs ", peaks[0], " bytes plus the ",
        options.margin * 100, "% margin, so raise the budget to at least ", minimum, " bytes, or ",
        largest > 0 ? absl::StrCat("lower the batch to ", largest, " or less")
                    : std::string("no batch fits this budget (the model alone does not)")));
  }
  Plan plan;
  plan.batch = batch;
  plan.budget_bytes = budget_bytes;
  plan.usable_bytes = usable;
  plan.choices = StartChoices(chain);
  for (int64_t i = 0; i < k; ++i) {
    const auto& [l, rung] = chain.steps[i];
    plan.choices[l] = chain.layers[l].ladder[rung].choice;
  }
  plan.prediction = model.Predict(plan.choices, batch);
  plan.exact_peak_bytes = model.PredictPeak(model.ExactChoices(), batch);
  double weight_total = 0, fidelity = 0;
  for (size_t l = 0; l < model.layers().size(); ++l) {
    const LayerState& state = chain.layers[l];
    const LayerChoice& c = plan.choices[l];
    LayerPlan row;
    row.path = model.layers()[l].path;
    row.choice = c;
    row.exact_kept_bytes = model.InputBytes(l, batch);
    row.kept_bytes = c.xconv ? model.SketchBytes(l, c, batch) : row.exact_kept_bytes;
    row.weight = state.weight;
    if (c.xconv) {
      const double per_probe = VariancePerProbe(model.layers()[l], c.mode);
      row.fidelity = static_cast<double>(c.probes) / (static_cast<double>(c.probes) + per_probe);
      plan.variance += state.weight * per_probe / static_cast<double>(c.probes);
    }
    weight_total += state.weight;
    fidelity += state.weight * row.fidelity;
    plan.layers.push_back(row);
  }
  plan.fidelity = weight_total > 0 ? fidelity / weight_total : 1.0;
  plan.plan_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return plan;
}

int64_t MinimumBudget(const MemoryModel& model, int64_t batch, const PlannerOptions& options) {
  return MinimumOf(ChainPeaks(model, BuildChain(model, options), batch), options);
}

int64_t LargestBatch(const MemoryModel& model, int64_t budget_bytes, const PlannerOptions& options,
                     double min_fidelity, bool exact_only) {
  const int64_t usable = Usable(budget_bytes, options);
  const Chain chain = BuildChain(model, options);  // the same order at every batch
  auto fits = [&](int64_t batch) {
    if (exact_only) return model.PredictPeak(model.ExactChoices(), batch) <= usable;
    const std::vector<int64_t> peaks = ChainPeaks(model, chain, batch);
    const int64_t k = Select(peaks, usable);
    if (k < 0) return false;
    if (min_fidelity <= 0) return true;
    absl::StatusOr<Plan> plan = MakePlan(model, budget_bytes, batch, options);
    return plan.ok() && plan->fidelity >= min_fidelity;
  };
  if (!fits(1)) return 0;
  int64_t low = 1, high = 2;
  while (high < (int64_t{1} << 24) && fits(high)) {
    low = high;
    high *= 2;
  }
  while (high - low > 1) {
    const int64_t mid = low + (high - low) / 2;
    (fits(mid) ? low : high) = mid;
  }
  return low;
}

ConvertOptions PlanConvertOptions(const Plan& plan, const MemoryModel& model, uint64_t seed) {
  ConvertOptions convert;
  convert.seed = seed;
  convert.lean_layers = plan.converted_layers() > 0;
  for (size_t l = 0; l < plan.choices.size(); ++l) {
    const LayerChoice& c = plan.choices[l];
    const std::string& path = model.layers()[l].path;
    XConvSettings settings;
    if (!c.xconv) {
      // Exact as XConv with r = 0, as calibrated (its backward may take the lean weight-only kernel).
      settings.probes = 0;
      convert.per_layer[path] = settings;
      continue;
    }
    settings.probes = c.probes;
    settings.mode = c.mode;
    settings.center = model.options().center;
    settings.route = c.mode == ProbeMode::kOrthogonal ? GradientRoute::kReconstruct : GradientRoute::kTap;
    convert.per_layer[path] = settings;
  }
  return convert;
}

absl::StatusOr<ConvertResult> ApplyPlan(std::shared_ptr<torch::nn::Module> root, const Plan& plan,
                                        const MemoryModel& model, uint64_t seed) {
  if (plan.converted_layers() == 0) return ConvertResult{std::move(root), {}};
  return Convert(std::move(root), PlanConvertOptions(plan, model, seed));
}

}  // namespace xtrain::core
