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
  std::string note;          // why it is always exact
};

// The order of the chain, from the cheapest plan to exact: each step moves one layer one rung up,
// the layer whose step buys the most variance per byte (a priority queue). It does not depend on
// the budget or the batch, which makes the planner monotone.
struct Chain {
  std::vector<LayerState> layers;
  std::vector<std::pair<int, int>> steps;  // (layer, rung it moves to)
  double weight_total = 0;
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
    chain.weight_total += state.weight;
    if (!layers[l].convertible()) {
      state.note = layers[l].exact_reason;
    } else if (options.keep_exact.count(layers[l].path)) {
      state.note = "keep_exact";
    } else if (!model.InputFreeable(l)) {
      // Its input stays alive anyway: converting it would only add a sketch.
      state.note = "its input stays alive for another layer (converting frees nothing)";
    } else {
      state.ladder = Ladder(model, l, state.weight, options);
      if (state.ladder.empty()) state.note = "no probe count keeps less than its input";
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

// The chain at one batch. Candidates are numbered 0..steps: the start and each step's plan (lean
// layers on; the last one has every conv exact), then steps + 1: the exact model. `kept` lists the
// candidates whose peak is below every later candidate's, in order, with their peaks.
struct ChainAt {
  std::vector<int64_t> kept;
  std::vector<int64_t> peaks;
};

ChainAt WalkChain(const MemoryModel& model, const Chain& chain, int64_t batch) {
  const int64_t steps = static_cast<int64_t>(chain.steps.size());
  std::vector<int64_t> peaks;
  peaks.reserve(static_cast<size_t>(steps) + 2);
  std::vector<LayerChoice> choices = StartChoices(chain);
  peaks.push_back(model.PredictPeak(choices, batch, /*lean_layers=*/true));
  for (const auto& [l, rung] : chain.steps) {
    choices[l] = chain.layers[l].ladder[rung].choice;
    peaks.push_back(model.PredictPeak(choices, batch, /*lean_layers=*/true));
  }
  peaks.push_back(model.PredictPeak(model.ExactChoices(), batch, /*lean_layers=*/false));
  ChainAt at;
  int64_t floor = INT64_MAX;
  for (int64_t k = steps + 1; k >= 0; --k) {
    if (peaks[k] >= floor) continue;  // a later plan fits the same budget with more fidelity
    floor = peaks[k];
    at.kept.push_back(k);
    at.peaks.push_back(peaks[k]);
  }
  std::reverse(at.kept.begin(), at.kept.end());
  std::reverse(at.peaks.begin(), at.peaks.end());
  return at;
}

// The choices and lean layers of candidate `k` (see ChainAt).
std::pair<std::vector<LayerChoice>, bool> CandidateChoices(const MemoryModel& model, const Chain& chain,
                                                           int64_t k) {
  if (k > static_cast<int64_t>(chain.steps.size())) return {model.ExactChoices(), false};
  std::vector<LayerChoice> choices = StartChoices(chain);
  for (int64_t i = 0; i < k; ++i) {
    const auto& [l, rung] = chain.steps[i];
    choices[l] = chain.layers[l].ladder[rung].choice;
  }
  return {std::move(choices), true};
}

double LayerFidelity(const ConvLayer& layer, const LayerChoice& c) {
  if (!c.xconv) return 1.0;
  const double r = static_cast<double>(c.probes);
  return r / (r + VariancePerProbe(layer, c.mode));
}

double Fidelity(const MemoryModel& model, const Chain& chain, const std::vector<LayerChoice>& choices) {
  double sum = 0;
  for (size_t l = 0; l < choices.size(); ++l) sum += chain.layers[l].weight * LayerFidelity(model.layers()[l], choices[l]);
  return chain.weight_total > 0 ? sum / chain.weight_total : 1.0;
}

// Index into ChainAt::kept of the last point under `usable` bytes, or -1.
int64_t Select(const ChainAt& at, int64_t usable) {
  const auto it = std::upper_bound(at.peaks.begin(), at.peaks.end(), usable);
  return static_cast<int64_t>(it - at.peaks.begin()) - 1;
}

absl::Status ValidateOptions(const MemoryModel& model, int64_t batch, const PlannerOptions& options) {
  if (batch < 1) return absl::InvalidArgumentError(absl::StrCat("planner: the batch must be >= 1, not ", batch));
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

// What a chain point is, in words (for refusals).
std::string Describe(const MemoryModel& model, const std::vector<LayerChoice>& choices, bool lean) {
  if (!lean) return "the exact model";
  int converted = 0;
  int64_t low = INT64_MAX, high = 0;
  for (const LayerChoice& c : choices) {
    if (!c.xconv) continue;
    ++converted;
    low = std::min(low, c.probes);
    high = std::max(high, c.probes);
  }
  if (converted == 0) return "lean layers, every convolution exact";
  return absl::StrCat("lean layers and ", converted, " of ", model.layers().size(), " convolutions as XConv at ",
                      low == high ? absl::StrCat(low) : absl::StrCat(low, "-", high), " probes");
}

Plan BuildPlan(const MemoryModel& model, const Chain& chain, std::vector<LayerChoice> choices, bool lean,
               int64_t batch, int64_t budget_bytes, const PlannerOptions& options) {
  Plan plan;
  plan.batch = batch;
  plan.budget_bytes = budget_bytes;
  plan.usable_bytes = budget_bytes > 0 ? UsableBytes(budget_bytes, options) : 0;
  plan.choices = std::move(choices);
  plan.lean_layers = lean || plan.converted_layers() > 0;
  plan.prediction = model.Predict(plan.choices, batch, plan.lean_layers);
  plan.exact_peak_bytes = model.PredictPeak(model.ExactChoices(), batch);
  for (size_t l = 0; l < model.layers().size(); ++l) {
    const LayerState& state = chain.layers[l];
    const ConvLayer& layer = model.layers()[l];
    const LayerChoice& c = plan.choices[l];
    LayerPlan row;
    row.path = layer.path;
    row.choice = c;
    row.exact_kept_bytes = model.InputBytes(l, batch);
    row.kept_bytes = c.xconv ? model.SketchBytes(l, c, batch) : row.exact_kept_bytes;
    row.weight = state.weight;
    row.fidelity = LayerFidelity(layer, c);
    row.note = state.note;
    if (c.xconv) plan.variance += state.weight * VariancePerProbe(layer, c.mode) / static_cast<double>(c.probes);
    plan.layers.push_back(std::move(row));
  }
  plan.fidelity = Fidelity(model, chain, plan.choices);
  return plan;
}

}  // namespace

int Plan::converted_layers() const {
  return static_cast<int>(std::count_if(choices.begin(), choices.end(), [](const LayerChoice& c) { return c.xconv; }));
}

std::string Plan::Table() const {
  std::ostringstream out;
  out << absl::StrFormat("%-28s %-18s %14s %14s %7s %8s  %s\n", "layer", "choice", "kept bytes", "exact bytes",
                         "of exact", "fidelity", "note");
  for (const LayerPlan& l : layers) {
    const std::string choice = l.choice.xconv ? absl::StrCat("xconv r=", l.choice.probes, " ",
                                                             std::string(ProbeModeName(l.choice.mode)))
                                              : "exact";
    out << absl::StrFormat("%-28s %-18s %14d %14d %7.3f %8.3f  %s\n", l.path, choice, l.kept_bytes,
                           l.exact_kept_bytes,
                           static_cast<double>(l.kept_bytes) / std::max<int64_t>(l.exact_kept_bytes, 1),
                           l.fidelity, l.note);
  }
  out << (lean_layers ? "lean layers: on (mask ReLU, index max pool; exact gradients)\n"
                      : "lean layers: off (torch ReLU and max pool)\n");
  out << absl::StrFormat("parameters %d, gradients %d, optimizer state %d, kept for backward %d bytes\n",
                         prediction.parameter_bytes, prediction.gradient_bytes, prediction.optimizer_state_bytes,
                         prediction.kept_bytes);
  out << absl::StrFormat("peak %d bytes (%s%s%s), budget %d, exact %d, fidelity %.4f\n",
                         prediction.peak_bytes, prediction.phase, prediction.at.empty() ? "" : " at ",
                         prediction.at, budget_bytes, exact_peak_bytes, fidelity);
  return out.str();
}

int64_t UsableBytes(int64_t budget_bytes, const PlannerOptions& options) {
  return static_cast<int64_t>(std::floor(static_cast<double>(budget_bytes) * (1.0 - options.margin)));
}

int64_t BudgetForPeak(int64_t peak_bytes, const PlannerOptions& options) {
  int64_t budget = static_cast<int64_t>(std::ceil(static_cast<double>(peak_bytes) / (1.0 - options.margin)));
  // The division and the product round: settle on the exact smallest budget.
  while (UsableBytes(budget, options) < peak_bytes) ++budget;
  while (budget > 1 && UsableBytes(budget - 1, options) >= peak_bytes) --budget;
  return budget;
}

absl::StatusOr<std::vector<ChainPoint>> PlanChain(const MemoryModel& model, int64_t batch,
                                                  const PlannerOptions& options) {
  if (absl::Status status = ValidateOptions(model, batch, options); !status.ok()) return status;
  const Chain chain = BuildChain(model, options);
  const ChainAt at = WalkChain(model, chain, batch);
  std::vector<ChainPoint> points;
  points.reserve(at.kept.size());
  // One walk along the steps, taking a copy of the choices at each kept candidate.
  std::vector<LayerChoice> choices = StartChoices(chain);
  int64_t k = 0;
  for (size_t i = 0; i < at.kept.size(); ++i) {
    ChainPoint point;
    if (at.kept[i] > static_cast<int64_t>(chain.steps.size())) {
      point.choices = model.ExactChoices();
      point.lean_layers = false;
    } else {
      for (; k < at.kept[i]; ++k) {
        const auto& [l, rung] = chain.steps[k];
        choices[l] = chain.layers[l].ladder[rung].choice;
      }
      point.choices = choices;
      point.lean_layers = true;
    }
    point.peak_bytes = at.peaks[i];
    point.fidelity = Fidelity(model, chain, point.choices);
    points.push_back(std::move(point));
  }
  return points;
}

absl::StatusOr<Plan> MakePlan(const MemoryModel& model, int64_t budget_bytes, int64_t batch,
                              const PlannerOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (budget_bytes <= 0) return absl::InvalidArgumentError("planner: the budget must be a positive byte count");
  if (absl::Status status = ValidateOptions(model, batch, options); !status.ok()) return status;
  const Chain chain = BuildChain(model, options);
  const ChainAt at = WalkChain(model, chain, batch);
  const int64_t usable = UsableBytes(budget_bytes, options);
  const int64_t i = Select(at, usable);
  if (i < 0) {
    const auto [cheapest, lean] = CandidateChoices(model, chain, at.kept[0]);
    const int64_t minimum = BudgetForPeak(at.peaks[0], options);
    const int64_t largest = LargestBatch(model, budget_bytes, options);
    return absl::ResourceExhaustedError(absl::StrCat(
        "planner: no plan fits ", budget_bytes, " bytes at batch ", batch, ": the smallest plan (",
        Describe(model, cheapest, lean), ") needs ", at.peaks[0], " bytes plus the ", options.margin * 100,
        "% margin, so raise the budget to at least ", minimum, " bytes, or ",
        largest > 0 ? absl::StrCat("lower the batch to ", largest, " or less")
                    : std::string("no batch fits this budget (the model alone does not)")));
  }
  auto [choices, lean] = CandidateChoices(model, chain, at.kept[i]);
  Plan plan = BuildPlan(model, chain, std::move(choices), lean, batch, budget_bytes, options);
  plan.plan_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return plan;
}

absl::StatusOr<Plan> PlanFromChoices(const MemoryModel& model, const std::vector<LayerChoice>& choices,
                                     bool lean_layers, int64_t batch, int64_t budget_bytes,
                                     const PlannerOptions& options) {
  if (budget_bytes < 0) return absl::InvalidArgumentError("planner: the budget must be >= 0 (0: none)");
  if (absl::Status status = ValidateOptions(model, batch, options); !status.ok()) return status;
  if (absl::Status status = model.CheckChoices(choices, batch); !status.ok()) return status;
  return BuildPlan(model, BuildChain(model, options), choices, lean_layers, batch, budget_bytes, options);
}

int64_t MinimumBudget(const MemoryModel& model, int64_t batch, const PlannerOptions& options) {
  if (!ValidateOptions(model, batch, options).ok()) return INT64_MAX;
  return BudgetForPeak(WalkChain(model, BuildChain(model, options), batch).peaks[0], options);
}

int64_t LargestBatch(const MemoryModel& model, int64_t budget_bytes, const PlannerOptions& options,
                     double min_fidelity, bool exact_only) {
  if (budget_bytes <= 0 || !ValidateOptions(model, 1, options).ok()) return 0;
  const int64_t usable = UsableBytes(budget_bytes, options);
  const Chain chain = BuildChain(model, options);  // the same order at every batch
  auto fits = [&](int64_t batch) {
    if (exact_only) return model.PredictPeak(model.ExactChoices(), batch) <= usable;
    const ChainAt at = WalkChain(model, chain, batch);
    const int64_t i = Select(at, usable);
    if (i < 0) return false;
    if (min_fidelity <= 0) return true;
    // Fidelity rises along the chain: the selected point has the most that fits.
    return Fidelity(model, chain, CandidateChoices(model, chain, at.kept[i]).first) >= min_fidelity;
  };
  // A step holds its input batch, so no batch whose input alone fills the usable budget fits:
  // that bounds the search (no arbitrary cap).
  int64_t sample_bytes = model.element_bytes();
  for (int64_t s : model.step().sample_sizes) sample_bytes *= s;
  const int64_t bound = std::max<int64_t>(usable / std::max<int64_t>(sample_bytes, 1), 1);
  if (!fits(1)) return 0;
  int64_t low = 1, high = 2;
  while (high <= bound && fits(high)) {
    low = high;
    high = high > bound / 2 ? bound + 1 : high * 2;
  }
  high = std::min(high, bound + 1);
  while (high - low > 1) {
    const int64_t mid = low + (high - low) / 2;
    (fits(mid) ? low : high) = mid;
  }
  return low;
}

ConvertOptions PlanConvertOptions(const Plan& plan, const MemoryModel& model, uint64_t seed) {
  ConvertOptions convert;
  convert.seed = seed;
  convert.lean_layers = plan.lean_layers || plan.converted_layers() > 0;  // XConv runs behind them
  for (size_t l = 0; l < plan.choices.size() && l < model.layers().size(); ++l) {
    const LayerChoice& c = plan.choices[l];
    const ConvLayer& layer = model.layers()[l];
    if (!layer.convertible()) {
      convert.keep_exact.insert(layer.path);
      continue;
    }
    XConvSettings settings;
    if (!c.xconv) {
      // Exact as XConv with r = 0, as calibrated (its backward may take the lean weight-only kernel).
      settings.probes = 0;
      convert.per_layer[layer.path] = settings;
      continue;
    }
    settings.probes = c.probes;
    settings.mode = c.mode;
    settings.center = model.options().center;
    settings.route = c.mode == ProbeMode::kOrthogonal ? GradientRoute::kReconstruct : GradientRoute::kTap;
    convert.per_layer[layer.path] = settings;
  }
  return convert;
}

absl::StatusOr<ConvertResult> ApplyPlan(std::shared_ptr<torch::nn::Module> root, const Plan& plan,
                                        const MemoryModel& model, uint64_t seed) {
  if (plan.choices.size() != model.layers().size()) {
    return absl::InvalidArgumentError(absl::StrCat("apply plan: the plan has ", plan.choices.size(),
                                                   " layer choices but the model ", model.layers().size(),
                                                   " convolutions; plan with this model"));
  }
  if (!plan.lean_layers && plan.converted_layers() == 0) return ConvertResult{std::move(root), {}, {}};
  return Convert(std::move(root), PlanConvertOptions(plan, model, seed));
}

}  // namespace xtrain::core
