#include "bench/accuracy_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "bench/bench_util.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "core/data/idx_reader.h"
#include "core/data/tensor_dataset.h"
#include "core/memory/planner.h"
#include "core/train/trainer.h"

namespace xtrain::bench {
namespace {

using core::TrainEvent;
using core::TrainEventKind;
using core::TrainOptions;
using core::Trainer;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int64_t kBudgetBatch = 128;  // batch of the exact-against-budget runs
constexpr double kBudgetFractions[] = {0.5, 0.3};  // of the exact activation memory

// What one training run is.
struct RunSpec {
  std::string group;            // "exact", "budget", "fixed"
  int64_t batch = 0;
  double budget_fraction = kNaN;  // of the exact activation memory (budget runs)
  int64_t budget_bytes = 0;
  int64_t probes = 0;           // fixed-probe runs
  uint64_t seed = 0;
  std::string note;             // shown in the markdown row

  std::string Name() const {
    if (group == "budget") {
      return absl::StrFormat("budget%02d-b%d-s%d", static_cast<int>(std::lround(budget_fraction * 100)), batch, seed);
    }
    if (group == "fixed") return absl::StrCat("r", probes, "-b", batch, "-s", seed);
    return absl::StrCat("exact-b", batch, "-s", seed);
  }
  // The markdown table groups seeds of one configuration.
  std::string ConfigKey() const {
    if (group == "budget") return absl::StrFormat("budget %d%%", static_cast<int>(std::lround(budget_fraction * 100)));
    if (group == "fixed") return absl::StrCat("XConv r=", probes);
    return "exact";
  }
};

// What one run gave.
struct RunResult {
  RunSpec spec;
  bool refused = false;
  std::string note;
  int64_t minimum_budget = 0;      // budget runs: the planner's smallest budget at this batch
  double minimum_fraction = kNaN;  // the same as a fraction of the exact activation memory
  double test_accuracy = kNaN;
  double final_loss = kNaN;        // mean training loss of the last epoch
  int64_t peak_measured = 0;       // largest step peak (CPU meter, job-relative)
  int64_t peak_predicted = 0;
  double fidelity_ratio = kNaN;    // mean over telemetry steps of sum V_x / sum V_sgd
  int fidelity_reports = 0;
  double train_seconds = 0;        // wall time of Run (evaluations included)
  double step_seconds = 0;         // sum of step times (telemetry excluded)
  double telemetry_seconds = 0;
  int64_t steps = 0;
  int64_t epochs = 0;
  std::string probes;              // per conv layer, "features.0:exact features.3:r8"
};


// The settings a run is made of, with presets resolved.
struct Setup {
  AccuracyBenchOptions flags;
  std::shared_ptr<const core::TensorDataset> train;
  std::shared_ptr<const core::TensorDataset> test;
  std::vector<int64_t> grid_probes;
  std::vector<int64_t> grid_batches;
};

TrainOptions JobOptions(const Setup& setup, const RunSpec& spec) {
  TrainOptions o;
  o.model.name = "small_cnn";
  o.model.in_channels = 1;
  o.model.classes = 10;
  o.model.seed = spec.seed;
  o.task.kind = core::TaskKind::kClassification;
  o.data.train = setup.train;
  o.data.validation = setup.test;
  o.batch_size = spec.batch;
  o.epochs = setup.flags.epochs;
  o.seed = spec.seed;
  o.optimizer.kind = core::OptimizerKind::kAdam;
  o.optimizer.lr = setup.flags.lr;
  o.schedule.kind = core::ScheduleKind::kCosine;
  o.memory.predict = true;
  o.memory.budget_bytes = spec.budget_bytes;
  o.memory.fixed_probes = spec.probes;
  o.fidelity_interval = spec.group == "exact" ? 0 : setup.flags.fidelity_interval;
  o.threads = setup.flags.threads;
  return o;
}

std::string ProbesText(const Trainer& trainer) {
  std::vector<std::string> parts;
  for (const auto& [path, r] : trainer.layer_probes()) {
    parts.push_back(absl::StrCat(path, ":", r == 0 ? std::string("exact") : absl::StrCat("r", r)));
  }
  return absl::StrJoin(parts, " ");
}

// Trains one configuration; curves go to `curves` (may be null) as JSON lines.
absl::StatusOr<RunResult> RunOne(const Setup& setup, const RunSpec& spec, std::ofstream* curves) {
  RunResult result;
  result.spec = spec;
  result.note = spec.note;
  result.epochs = setup.flags.epochs;
  std::fprintf(stderr, "[%s] %s: creating\n", Now("%H:%M:%S").c_str(), spec.Name().c_str());
  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(JobOptions(setup, spec));
  if (!trainer.ok()) {
    if (trainer.status().code() != absl::StatusCode::kResourceExhausted) return trainer.status();
    result.refused = true;
    result.note = std::string(trainer.status().message());  // the planner's sentence
    std::fprintf(stderr, "  refused: %s\n", result.note.c_str());
    return result;
  }
  result.peak_predicted = (*trainer)->predicted_peak_bytes();
  result.probes = ProbesText(**trainer);
  if ((*trainer)->plan() != nullptr) std::fprintf(stderr, "%s", (*trainer)->plan()->Table().c_str());
  double ratio_sum = 0;
  const auto start = std::chrono::steady_clock::now();
  const absl::Status status = (*trainer)->Run([&](const TrainEvent& e) {
    JsonObject line;
    line.String("run", spec.Name()).String("config", spec.ConfigKey()).Int("batch", spec.batch)
        .Int("seed", static_cast<int64_t>(spec.seed)).String("kind", core::TrainEventKindName(e.kind))
        .Int("step", e.step).Int("epoch", e.epoch).Number("loss", e.loss);
    if (e.kind == TrainEventKind::kStep) {
      result.peak_measured = std::max(result.peak_measured, e.measured_peak_bytes);
      result.step_seconds += e.step_seconds;
      result.steps = e.step;
      line.Number("lr", e.lr);
      if (e.fidelity) {
        ++result.fidelity_reports;
        ratio_sum += e.fidelity->ratio;
        result.telemetry_seconds += e.fidelity->seconds;
        JsonObject layers;
        for (const core::LayerFidelity& layer : e.fidelity->layers) layers.Number(layer.path, layer.ratio);
        line.Number("fidelity_ratio", e.fidelity->ratio).Object("fidelity_layers", layers);
      }
      if (e.step % 50 == 0) {
        std::fprintf(stderr, "  step %lld loss %.4f\n", static_cast<long long>(e.step), e.loss);
      }
    } else if (e.kind == TrainEventKind::kEpoch) {
      result.final_loss = e.loss;
      result.test_accuracy = e.metric_value;
      line.Number("test_accuracy", e.metric_value);
      std::fprintf(stderr, "  epoch %lld: train loss %.4f, test accuracy %.4f\n",
                   static_cast<long long>(e.epoch), e.loss, e.metric_value);
    } else {
      return;
    }
    if (curves != nullptr) *curves << line.Text() << "\n" << std::flush;
  });
  result.train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!status.ok()) return status;
  if (result.fidelity_reports > 0) result.fidelity_ratio = ratio_sum / result.fidelity_reports;
  std::fprintf(stderr, "  done in %.1f s: accuracy %.4f, peak %s measured / %s predicted\n", result.train_seconds,
               result.test_accuracy, FormatBytes(result.peak_measured).c_str(),
               FormatBytes(result.peak_predicted).c_str());
  return result;
}

std::string ResultJson(const RunResult& r, int threads) {
  JsonObject o;
  o.String("run", r.spec.Name()).String("model", "small_cnn").String("dataset", "fashion-mnist")
      .String("config", r.spec.ConfigKey()).String("group", r.spec.group).Int("batch", r.spec.batch);
  if (r.spec.group == "budget") {
    o.Number("budget_fraction", r.spec.budget_fraction).Int("budget_bytes", r.spec.budget_bytes)
        .Int("minimum_budget_bytes", r.minimum_budget).Number("minimum_budget_fraction", r.minimum_fraction);
  }
  if (r.spec.group == "fixed") o.Int("probes", r.spec.probes);
  return o.Int("seed", static_cast<int64_t>(r.spec.seed))
      .Int("epochs", r.epochs)
      .Int("threads", threads)
      .Bool("refused", r.refused)
      .Number("test_accuracy", r.test_accuracy)
      .Number("final_train_loss", r.final_loss)
      .Int("peak_bytes", r.peak_measured)
      .Int("predicted_peak_bytes", r.peak_predicted)
      .Number("fidelity_ratio", r.fidelity_ratio)
      .Int("steps", r.steps)
      .Number("train_seconds", r.train_seconds)
      .Number("telemetry_seconds", r.telemetry_seconds)
      .String("layer_probes", r.probes)
      .String("note", r.note)
      .Text();
}

struct MeanStd {
  double mean = kNaN;
  double std = kNaN;
  int count = 0;
};

MeanStd Summarise(const std::vector<double>& values) {
  MeanStd s;
  s.count = static_cast<int>(values.size());
  if (values.empty()) return s;
  double sum = 0;
  for (double v : values) sum += v;
  s.mean = sum / s.count;
  double squares = 0;
  for (double v : values) squares += (v - s.mean) * (v - s.mean);
  s.std = s.count > 1 ? std::sqrt(squares / (s.count - 1)) : 0.0;  // sample standard deviation
  return s;
}

std::string Markdown(const Setup& setup, const std::vector<RunResult>& results, int64_t fixed_bytes,
                     int64_t activation_bytes, double telemetry_share) {
  const AccuracyBenchOptions& f = setup.flags;
  std::string md = absl::StrCat(
      "# xtrain-bench accuracy\n\n", "date: ", Now("%Y-%m-%d %H:%M"), " · threads: ", f.threads,
      " · small_cnn (width 32) on Fashion-MNIST: first ", setup.train->size(), " training images, ", f.epochs,
      " epoch(s), test on ", setup.test->size(), " test images · Adam lr ", absl::StrFormat("%g", f.lr), ", cosine · float32\n\n",
      "Budgets at batch ", kBudgetBatch, ": the exact job's predicted peak is ",
      FormatBytes(fixed_bytes + activation_bytes), ", of which ", FormatBytes(fixed_bytes),
      " fixed (parameters, gradients, Adam state and the loader's 2 prefetched batches, which no plan "
      "changes) and ", FormatBytes(activation_bytes),
      " activations (kept for backward, gradients of activations, work space, the batch in use); budget = fixed "
      "+ fraction x activations. Exact and budget rows: ", f.seeds,
      " seed(s), mean ± sample std. The grid (fixed probes r on every conv) ran one seed. Fidelity: mean over "
      "telemetry steps (every ", f.fidelity_interval,
      ") of sum V_x / sum V_sgd (XConv gradient variance over the minibatch noise); below 1 means probe noise "
      "is smaller than SGD's own. Peaks: the job's bytes at its largest step (CPU meter) and the memory model's "
      "prediction, both with the prefetched batches.\n\n",
      "| config | batch | budget fraction / r | runs | test accuracy | peak measured | peak predicted | "
      "fidelity ratio | probes | note |\n|---|---:|---|---:|---|---:|---:|---:|---|---|\n");
  // Rows in first-seen order of (config, batch).
  std::vector<std::pair<std::string, int64_t>> keys;
  for (const RunResult& r : results) {
    const auto key = std::make_pair(r.spec.ConfigKey(), r.spec.batch);
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) keys.push_back(key);
  }
  std::map<std::pair<std::string, int64_t>, double> mean_accuracy;
  for (const auto& key : keys) {
    std::vector<const RunResult*> rows;
    for (const RunResult& r : results) {
      if (std::make_pair(r.spec.ConfigKey(), r.spec.batch) == key) rows.push_back(&r);
    }
    const RunResult& first = *rows.front();
    std::string setting = "-";
    if (first.spec.group == "budget") {
      setting = absl::StrFormat("%.0f%% (%s)", first.spec.budget_fraction * 100, FormatBytes(first.spec.budget_bytes));
    } else if (first.spec.group == "fixed") {
      setting = absl::StrCat("r=", first.spec.probes);
    }
    if (first.refused) {
      absl::StrAppend(&md, "| ", key.first, " | ", key.second, " | ", setting, " | 0 | refused | - | - | - | - | ",
                      absl::StrFormat("planner: smallest budget %s = %.0f%% of the activations",
                                      FormatBytes(first.minimum_budget), first.minimum_fraction * 100),
                      " |\n");
      continue;
    }
    std::vector<double> accuracy, fidelity;
    int64_t measured = 0, predicted = 0;
    for (const RunResult* r : rows) {
      accuracy.push_back(r->test_accuracy * 100);
      if (std::isfinite(r->fidelity_ratio)) fidelity.push_back(r->fidelity_ratio);
      measured = std::max(measured, r->peak_measured);
      predicted = std::max(predicted, r->peak_predicted);
    }
    const MeanStd acc = Summarise(accuracy);
    const MeanStd fid = Summarise(fidelity);
    mean_accuracy[key] = acc.mean;
    absl::StrAppend(&md, "| ", key.first, " | ", key.second, " | ", setting, " | ", acc.count, " | ",
                    absl::StrFormat("%.2f ± %.2f", acc.mean, acc.std), " | ", FormatBytes(measured), " | ",
                    FormatBytes(predicted), " | ",
                    fid.count > 0 ? absl::StrFormat("%.3g", fid.mean) : std::string("-"), " | ", first.probes,
                    " | ", first.note, " |\n");
  }
  const auto exact = mean_accuracy.find({"exact", kBudgetBatch});
  const auto half = mean_accuracy.find({"budget 50%", kBudgetBatch});
  std::string goal;
  if (exact == mean_accuracy.end() || half == mean_accuracy.end()) {
    goal = "not measured: the planner refused the 50% budget (see its row)";
  } else {
    const double gap = exact->second - half->second;
    goal = absl::StrFormat("%s: exact %.2f%%, budget 50%% %.2f%% (gap %.2f points)", gap <= 0.5 ? "met" : "missed",
                           exact->second, half->second, gap);
  }
  absl::StrAppend(&md, "\nGoal (XConv at the 50% budget within 0.5 points of exact): ", goal, "\n\n",
                  absl::StrFormat("Telemetry overhead (XConv runs): %.1f%% of the step time (every %d steps).\n",
                                  telemetry_share * 100, f.fidelity_interval));
  return md;
}



}  // namespace

std::string AccuracyBenchUsage() {
  return "usage: xtrain-bench accuracy [flags]\n"
         "  --quick               1 seed, 8192 training images, 1 epoch, 2000 test images, a small grid (~1-2 min)\n"
         "  --threads N           intra-op threads (default 1: steadier than 2 on a shared 2-core machine)\n"
         "  --epochs N            epochs per run (default 2; quick 1)\n"
         "  --train-subset N      first N training images (default all 60000; quick 8192)\n"
         "  --test-subset N       first N test images (default all 10000; quick 2000)\n"
         "  --seeds N             seeds of the exact and budget runs (default 3; quick 1)\n"
         "  --fidelity-interval N gradient-fidelity telemetry every N steps in XConv runs (default 25; 0 off)\n"
         "  --lr X                Adam's peak learning rate, cosine decay (default 0.01)\n"
         "  --data DIR            Fashion-MNIST folder (default /usr/share/datasets/fashion-mnist)\n"
         "  --json FILE           one JSON object per run and line\n"
         "  --markdown FILE       markdown table of the results\n"
         "  --curves FILE         per-step and per-epoch loss and fidelity as JSON lines (plot_accuracy.py)\n";
}

absl::StatusOr<AccuracyBenchOptions> ParseAccuracyBenchFlags(const std::vector<std::string>& args) {
  absl::StatusOr<std::vector<Flag>> flags = SplitFlags(
      args, {"--quick", "--help", "-h"},
      {"--threads", "--epochs", "--train-subset", "--test-subset", "--seeds", "--fidelity-interval", "--lr", "--data",
       "--json", "--markdown", "--curves"},
      "accuracy");
  if (!flags.ok()) return flags.status();
  AccuracyBenchOptions options;
  for (const auto& [flag, value] : *flags) {
    absl::StatusOr<int64_t> n = int64_t{0};
    if (flag == "--threads" || flag == "--epochs" || flag == "--train-subset" || flag == "--test-subset" ||
        flag == "--seeds") {
      n = ParseInt(flag, value, 1);
    } else if (flag == "--fidelity-interval") {
      n = ParseInt(flag, value, 0);
    }
    if (!n.ok()) return n.status();
    if (flag == "--quick") options.quick = true;
    if (flag == "--help" || flag == "-h") options.help = true;
    if (flag == "--threads") options.threads = static_cast<int>(*n);
    if (flag == "--epochs") options.epochs = *n;
    if (flag == "--train-subset") options.train_subset = *n;
    if (flag == "--test-subset") options.test_subset = *n;
    if (flag == "--seeds") options.seeds = static_cast<int>(*n);
    if (flag == "--fidelity-interval") options.fidelity_interval = *n;
    if (flag == "--data") options.data_dir = value;
    if (flag == "--lr") {
      absl::StatusOr<double> lr = ParsePositive(flag, value);
      if (!lr.ok()) return lr.status();
      options.lr = *lr;
    }
    if (flag == "--json") options.json_path = value;
    if (flag == "--markdown") options.markdown_path = value;
    if (flag == "--curves") options.curves_path = value;
  }
  return options;
}

absl::Status RunAccuracyBench(const std::vector<std::string>& args) {
  absl::StatusOr<AccuracyBenchOptions> parsed = ParseAccuracyBenchFlags(args);
  if (!parsed.ok()) return parsed.status();
  if (parsed->help) {
    std::fputs(AccuracyBenchUsage().c_str(), stdout);
    return absl::OkStatus();
  }
  Setup setup;
  setup.flags = *parsed;
  AccuracyBenchOptions& f = setup.flags;
  if (f.epochs == 0) f.epochs = f.quick ? 1 : 2;
  if (f.train_subset == 0) f.train_subset = f.quick ? 8192 : 60000;
  if (f.test_subset == 0) f.test_subset = f.quick ? 2000 : 10000;
  if (f.seeds == 0) f.seeds = f.quick ? 1 : 3;
  setup.grid_probes = f.quick ? std::vector<int64_t>{2, 64} : std::vector<int64_t>{2, 8, 16, 64};
  setup.grid_batches = f.quick ? std::vector<int64_t>{128} : std::vector<int64_t>{32, 128};
  at::set_num_threads(f.threads);

  absl::StatusOr<core::TensorDataset> train = core::LoadMnistFolder(f.data_dir, /*train=*/true);
  if (!train.ok()) return train.status();
  absl::StatusOr<core::TensorDataset> test = core::LoadMnistFolder(f.data_dir, /*train=*/false);
  if (!test.ok()) return test.status();
  absl::StatusOr<core::TensorDataset> train_part = core::Subset(*train, std::min(f.train_subset, train->size()));
  absl::StatusOr<core::TensorDataset> test_part = core::Subset(*test, std::min(f.test_subset, test->size()));
  if (!train_part.ok()) return train_part.status();
  if (!test_part.ok()) return test_part.status();
  // Copies, so the full sets are freed (Subset returns views).
  setup.train = std::make_shared<const core::TensorDataset>(
      core::TensorDataset{train_part->inputs.clone(), train_part->targets.clone()});
  setup.test = std::make_shared<const core::TensorDataset>(
      core::TensorDataset{test_part->inputs.clone(), test_part->targets.clone()});
  *train = core::TensorDataset();
  *test = core::TensorDataset();
  std::fprintf(stderr,
               "accuracy bench: threads %d, small_cnn, %lld training images, %lld test images, %lld epoch(s), "
               "%d seed(s), grid r {%s} x batch {%s} (one seed), telemetry every %lld steps\n",
               f.threads, static_cast<long long>(setup.train->size()), static_cast<long long>(setup.test->size()),
               static_cast<long long>(f.epochs), f.seeds, absl::StrJoin(setup.grid_probes, ", ").c_str(),
               absl::StrJoin(setup.grid_batches, ", ").c_str(), static_cast<long long>(f.fidelity_interval));

  // The exact model's memory at the budget batch: fixed bytes and activations.
  RunSpec reference{"exact", kBudgetBatch, kNaN, 0, 0, 0, ""};
  absl::StatusOr<std::unique_ptr<Trainer>> exact = Trainer::Create(JobOptions(setup, reference));
  if (!exact.ok()) return exact.status();
  // The job's peak includes the loader's prefetched batches (Trainer::predicted_peak_bytes).
  const core::MemoryModel& memory = *(*exact)->memory_model();
  const core::MemoryPrediction prediction = memory.Predict(memory.ExactChoices(), kBudgetBatch);
  const int64_t exact_peak = (*exact)->predicted_peak_bytes();
  const int64_t loader_bytes = exact_peak - prediction.peak_bytes;
  // Fixed: what no plan changes (the model's state and the loader's prefetched input batches).
  const int64_t fixed_bytes =
      prediction.parameter_bytes + prediction.gradient_bytes + prediction.optimizer_state_bytes + loader_bytes;
  const int64_t activation_bytes = exact_peak - fixed_bytes;
  const int64_t minimum = core::MinimumBudget(memory, kBudgetBatch) + loader_bytes;
  const double minimum_fraction =
      static_cast<double>(minimum - fixed_bytes) / static_cast<double>(activation_bytes);
  std::fprintf(stderr, "exact job peak at batch %lld: %s = %s fixed (state, prefetched batches) + %s activations; "
               "smallest plan %s (%.0f%%)\n",
               static_cast<long long>(kBudgetBatch), FormatBytes(exact_peak).c_str(),
               FormatBytes(fixed_bytes).c_str(), FormatBytes(activation_bytes).c_str(),
               FormatBytes(minimum).c_str(), minimum_fraction * 100);
  exact->reset();

  // The fractions, and one the planner can meet when those are below its smallest plan:
  // halfway between the smallest plan and the exact model.
  std::vector<std::pair<double, std::string>> fractions;
  for (double fraction : kBudgetFractions) fractions.emplace_back(fraction, "");
  if (minimum_fraction > *std::min_element(std::begin(kBudgetFractions), std::end(kBudgetFractions))) {
    fractions.emplace_back(std::ceil((minimum_fraction + 1) / 2 * 100) / 100,
                           "halfway between the smallest plan and exact");
  }
  std::vector<RunSpec> specs;
  for (int s = 0; s < f.seeds; ++s) {
    const uint64_t seed = static_cast<uint64_t>(s);
    specs.push_back({"exact", kBudgetBatch, kNaN, 0, 0, seed, ""});
    for (const auto& [fraction, note] : fractions) {
      const int64_t budget = fixed_bytes + static_cast<int64_t>(std::llround(fraction * static_cast<double>(activation_bytes)));
      specs.push_back({"budget", kBudgetBatch, fraction, budget, 0, seed, note});
    }
  }
  for (int64_t batch : setup.grid_batches) {
    if (batch != kBudgetBatch) specs.push_back({"exact", batch, kNaN, 0, 0, 0, ""});
    for (int64_t r : setup.grid_probes) specs.push_back({"fixed", batch, kNaN, 0, r, 0, ""});
  }

  std::ofstream curves, json;
  if (!f.curves_path.empty()) {
    curves.open(f.curves_path);
    if (!curves) return absl::InvalidArgumentError(absl::StrCat("cannot write --curves ", f.curves_path));
  }
  if (!f.json_path.empty()) {
    json.open(f.json_path);
    if (!json) return absl::InvalidArgumentError(absl::StrCat("cannot write --json ", f.json_path));
  }
  const auto start = std::chrono::steady_clock::now();
  std::vector<RunResult> results;
  double telemetry = 0, steps = 0;
  for (const RunSpec& spec : specs) {
    absl::StatusOr<RunResult> result = RunOne(setup, spec, f.curves_path.empty() ? nullptr : &curves);
    if (!result.ok()) return absl::Status(result.status().code(), absl::StrCat(spec.Name(), ": ", result.status().message()));
    if (spec.group == "budget") {
      result->minimum_budget = minimum;
      result->minimum_fraction = minimum_fraction;
    }
    if (spec.group != "exact") {
      telemetry += result->telemetry_seconds;
      steps += result->step_seconds;
    }
    if (json.is_open()) json << ResultJson(*result, f.threads) << "\n" << std::flush;
    results.push_back(*std::move(result));
  }
  const double share = steps > 0 ? telemetry / steps : 0;
  const std::string md = Markdown(setup, results, fixed_bytes, activation_bytes, share);
  if (!f.markdown_path.empty()) {
    std::ofstream out(f.markdown_path);
    if (!(out << md)) return absl::InvalidArgumentError(absl::StrCat("cannot write --markdown ", f.markdown_path));
  }
  std::fputs(md.c_str(), stdout);
  std::fprintf(stderr, "accuracy bench: %.1f s in all\n",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return absl::OkStatus();
}

}  // namespace xtrain::bench
