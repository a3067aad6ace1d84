#include "bench/accuracy_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "bench/bench_util.h"
#include "core/data/idx_reader.h"
#include "core/data/tensor_dataset.h"
#include "core/train/trainer.h"
#include "core/train/training_plan.h"

namespace xtrain::bench {
namespace {

using core::TrainEvent;
using core::TrainEventKind;
using core::Trainer;
using core::TrainingPlan;
using core::TrainOptions;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kBudgetFractions[] = {0.5, 0.3};  // of the exact job's activation memory
constexpr double kGoalPoints = 0.5;                // XConv at 50% within this many points of exact

// What one training run is.
struct RunSpec {
  std::string group;               // "exact", "lean", "budget", "fixed"
  double budget_fraction = kNaN;   // of the exact job's activation memory (budget runs)
  int64_t budget_bytes = 0;
  int64_t probes = 0;              // fixed-probe runs
  uint64_t seed = 0;

  std::string Name() const {
    if (group == "budget") {
      return absl::StrFormat("budget%02d-s%d", static_cast<int>(std::lround(budget_fraction * 100)), seed);
    }
    if (group == "fixed") return absl::StrCat("r", probes, "-s", seed);
    return absl::StrCat(group, "-s", seed);
  }
  // The markdown table groups seeds of one configuration.
  std::string ConfigKey() const {
    if (group == "budget") return absl::StrFormat("XConv, budget %d%%", static_cast<int>(std::lround(budget_fraction * 100)));
    if (group == "fixed") return absl::StrCat("XConv r=", probes, " everywhere");
    if (group == "lean") return "lean (exact gradients)";
    return "exact";
  }
};

// What one run gave.
struct RunResult {
  RunSpec spec;
  bool refused = false;            // the trainer refused the job (note says why)
  std::string note;
  double test_accuracy = kNaN;
  double final_loss = kNaN;        // mean training loss of the last epoch
  int64_t peak_measured = 0;       // largest step peak (CPU meter less the process's bytes before Create)
  int64_t telemetry_peak = 0;      // largest peak of the fidelity telemetry's passes, measured the same way
  int64_t peak_predicted = 0;      // the job's predicted peak (at the end, after any re-plan)
  int replans = 0;
  double fidelity_ratio = kNaN;    // mean over telemetry steps of sum V_x / sum V_sgd
  int fidelity_reports = 0;
  double train_seconds = 0;        // wall time of Run (evaluations and telemetry included)
  double step_seconds = 0;         // sum of step times (telemetry excluded)
  double telemetry_seconds = 0;
  double load_average = kNaN;      // the machine's 1-minute load average when the run ended
  int64_t steps = 0;
  std::string probes;              // per conv layer, "features.0:exact features.3:r8"
};

// The settings every run is made of, with presets resolved.
struct Setup {
  AccuracyBenchOptions flags;
  std::shared_ptr<const core::TensorDataset> train;
  std::shared_ptr<const core::TensorDataset> test;
  int64_t warmup_steps = 0;
  std::optional<core::PlanSpec> lean_spec;
};

double LoadAverage() {
  std::ifstream in("/proc/loadavg");
  double one = kNaN;
  if (!(in >> one)) return kNaN;
  return one;
}

TrainOptions JobOptions(const Setup& setup, const RunSpec& spec) {
  const AccuracyBenchOptions& f = setup.flags;
  TrainOptions o;
  o.model.name = "small_cnn";
  o.model.in_channels = 1;
  o.model.classes = 10;
  o.model.width = f.width;
  o.model.seed = spec.seed;
  o.task.kind = core::TaskKind::kClassification;
  o.data.train = setup.train;
  o.data.validation = setup.test;
  o.batch_size = f.batch;
  o.epochs = f.epochs;
  o.seed = spec.seed;
  o.optimizer.kind = f.optimizer == "adam" ? core::OptimizerKind::kAdam : core::OptimizerKind::kSgdMomentum;
  o.optimizer.lr = f.lr;
  o.optimizer.momentum = 0.9;
  o.optimizer.weight_decay = f.weight_decay;
  o.schedule.kind = core::ScheduleKind::kCosine;
  o.schedule.warmup_steps = setup.warmup_steps;
  o.memory.predict = true;
  o.memory.budget_bytes = spec.budget_bytes;
  o.memory.fixed_probes = spec.probes;
  o.fidelity_interval = spec.group == "budget" || spec.group == "fixed" ? f.fidelity_interval : 0;
  o.threads = f.threads;
  return o;
}

// The lean arm's plan: every convolution exact, with mask ReLUs and index max pools, so the
// gradients are exact and only the lean layers' saving shows. Hook: the trainer takes it once the
// planner plans lean layers alone (PlanChain's lean point, Plan::lean_layers); until then it refuses
// the spec with a sentence and the arm is reported as not available.
core::PlanSpec LeanSpec(const TrainingPlan& exact) {
  core::PlanSpec spec = exact.spec;
  for (core::PlanSpec::Layer& layer : spec.layers) layer.probes = 0;
  spec.lean_layers = true;
  return spec;
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
  std::fprintf(stderr, "[%s] %s: creating\n", Now("%H:%M:%S").c_str(), spec.Name().c_str());
  const TrainOptions options = JobOptions(setup, spec);
  absl::StatusOr<std::unique_ptr<Trainer>> trainer =
      spec.group == "lean" ? Trainer::Create(options, *setup.lean_spec) : Trainer::Create(options);
  if (!trainer.ok()) {
    const absl::StatusCode code = trainer.status().code();
    const bool expected = code == absl::StatusCode::kResourceExhausted ||
                          (spec.group == "lean" && code == absl::StatusCode::kInvalidArgument);
    if (!expected) return trainer.status();
    result.refused = true;
    result.note = std::string(trainer.status().message());  // the trainer's sentence
    std::fprintf(stderr, "  refused: %s\n", result.note.c_str());
    return result;
  }
  result.probes = ProbesText(**trainer);
  if ((*trainer)->plan() != nullptr) std::fprintf(stderr, "%s", (*trainer)->plan()->Table().c_str());
  double ratio_sum = 0;
  const auto start = std::chrono::steady_clock::now();
  const absl::Status status = (*trainer)->Run([&](const TrainEvent& e) {
    JsonObject line;
    line.String("run", spec.Name()).String("config", spec.ConfigKey()).Int("batch", setup.flags.batch)
        .Int("seed", static_cast<int64_t>(spec.seed)).String("kind", core::TrainEventKindName(e.kind))
        .Int("step", e.step).Int("epoch", e.epoch).Number("loss", e.loss);
    if (e.kind == TrainEventKind::kStep) {
      result.peak_measured = std::max(result.peak_measured, e.measured_peak_bytes);
      result.telemetry_peak = std::max(result.telemetry_peak, e.telemetry_peak_bytes);
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
      if (e.step % 100 == 0) std::fprintf(stderr, "  step %lld loss %.4f\n", static_cast<long long>(e.step), e.loss);
    } else if (e.kind == TrainEventKind::kEpoch) {
      result.final_loss = e.loss;
      result.test_accuracy = e.metric_value;
      line.Number("test_accuracy", e.metric_value);
      std::fprintf(stderr, "  epoch %lld: train loss %.4f, test accuracy %.4f\n",
                   static_cast<long long>(e.epoch), e.loss, e.metric_value);
    } else if (e.kind == TrainEventKind::kReplan) {
      ++result.replans;
      line.String("reason", e.reason);
      std::fprintf(stderr, "  re-planned: %s\n", e.reason.c_str());
    } else {
      return;
    }
    if (curves != nullptr) *curves << line.Text() << "\n" << std::flush;
  });
  result.train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.load_average = LoadAverage();
  if (!status.ok()) return status;
  result.peak_predicted = (*trainer)->predicted_peak_bytes();
  result.probes = ProbesText(**trainer);
  if (result.fidelity_reports > 0) result.fidelity_ratio = ratio_sum / result.fidelity_reports;
  std::fprintf(stderr, "  done in %.1f s: accuracy %.4f, peak %s measured / %s predicted\n", result.train_seconds,
               result.test_accuracy, FormatBytes(result.peak_measured).c_str(),
               FormatBytes(result.peak_predicted).c_str());
  return result;
}

std::string ResultJson(const Setup& setup, const RunResult& r) {
  const AccuracyBenchOptions& f = setup.flags;
  JsonObject o;
  o.String("run", r.spec.Name()).String("model", "small_cnn").Int("width", f.width).String("dataset", "fashion-mnist")
      .String("config", r.spec.ConfigKey()).String("group", r.spec.group).Int("batch", f.batch);
  if (r.spec.group == "budget") {
    o.Number("budget_fraction", r.spec.budget_fraction).Int("budget_bytes", r.spec.budget_bytes);
  }
  if (r.spec.group == "fixed") o.Int("probes", r.spec.probes);
  return o.Int("seed", static_cast<int64_t>(r.spec.seed))
      .Int("epochs", f.epochs)
      .String("optimizer", f.optimizer)
      .Number("lr", f.lr)
      .Number("weight_decay", f.weight_decay)
      .Int("warmup_steps", setup.warmup_steps)
      .Int("threads", f.threads)
      .Bool("refused", r.refused)
      .Number("test_accuracy", r.test_accuracy)
      .Number("final_train_loss", r.final_loss)
      .Int("peak_bytes", r.peak_measured)
      .Int("telemetry_peak_bytes", r.telemetry_peak)
      .Int("predicted_peak_bytes", r.peak_predicted)
      .Int("replans", r.replans)
      .Number("fidelity_ratio", r.fidelity_ratio)
      .Int("steps", r.steps)
      .Number("train_seconds", r.train_seconds)
      .Number("step_seconds", r.step_seconds)
      .Number("telemetry_seconds", r.telemetry_seconds)
      .Number("load_average", r.load_average)
      .String("layer_probes", r.probes)
      .String("note", r.note)
      .Text();
}

struct Summary {
  double mean = kNaN;
  double std = kNaN;  // sample standard deviation
  int count = 0;
  double se() const { return count > 0 ? std / std::sqrt(static_cast<double>(count)) : kNaN; }
};

Summary Summarise(const std::vector<double>& values) {
  Summary s;
  s.count = static_cast<int>(values.size());
  if (values.empty()) return s;
  double sum = 0;
  for (double v : values) sum += v;
  s.mean = sum / s.count;
  double squares = 0;
  for (double v : values) squares += (v - s.mean) * (v - s.mean);
  s.std = s.count > 1 ? std::sqrt(squares / (s.count - 1)) : 0.0;
  return s;
}

// The memory a budget fraction applies to: the exact job's peak split into what no plan changes
// and the activations.
struct MemorySplit {
  int64_t exact_peak = 0;
  int64_t fixed = 0;        // parameters, gradients, optimizer state, what the loader holds
  int64_t activations = 0;  // kept for backward, gradients of activations, work space, the batch in use
  int64_t minimum = 0;      // the smallest budget any plan fits
};

std::string Markdown(const Setup& setup, const std::vector<RunResult>& results, const MemorySplit& memory,
                     double telemetry_share) {
  const AccuracyBenchOptions& f = setup.flags;
  double load_low = std::numeric_limits<double>::infinity(), load_high = 0;
  for (const RunResult& r : results) {
    if (std::isfinite(r.load_average)) {
      load_low = std::min(load_low, r.load_average);
      load_high = std::max(load_high, r.load_average);
    }
  }
  const unsigned cores = std::thread::hardware_concurrency();
  std::string md = absl::StrCat(
      "# xtrain-bench accuracy\n\n", "date: ", Now("%Y-%m-%d %H:%M"), " · threads: ", f.threads, " · ", cores,
      " cores · small_cnn (width ", f.width, ") on Fashion-MNIST: first ", setup.train->size(),
      " training images, test on ", setup.test->size(), " test images · float32\n\n",
      absl::StrFormat("Recipe, the same for every arm: %s%s lr %g, weight decay %g, batch %d, %d epochs, linear "
                      "warm-up over %d steps then cosine decay to 0.\n\n",
                      f.optimizer == "adam" ? "Adam" : "SGD", f.optimizer == "adam" ? "" : " (momentum 0.9)", f.lr,
                      f.weight_decay, f.batch, f.epochs, setup.warmup_steps),
      "Memory (PlanTraining of the exact job): its predicted peak is ", FormatBytes(memory.exact_peak), ", of which ",
      FormatBytes(memory.fixed),
      " fixed (parameters, gradients, optimizer state and what the data loader holds: its epoch permutation and "
      "2 prefetched batches) and ",
      FormatBytes(memory.activations),
      " activations; budget = fixed + fraction x activations. Peaks measured: the CPU meter's step peak less what "
      "the process held before the trainer was created; telemetry peak: the same over the fidelity telemetry's "
      "passes. Fidelity: mean over telemetry steps (every ",
      f.fidelity_interval,
      ") of sum V_x / sum V_sgd; below 1 means probe noise is smaller than SGD's own. Accuracy: mean ± sample std "
      "over seeds; gap: exact's mean less the arm's, ± the standard error of the difference (sqrt(se1² + se2²)).\n\n",
      "| arm | budget / r | runs | test accuracy % | gap to exact (points) | train s | × exact | peak measured | "
      "peak predicted | telemetry peak | re-plans | fidelity ratio | probes | note |\n"
      "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|\n");
  std::vector<std::string> keys;
  for (const RunResult& r : results) {
    if (std::find(keys.begin(), keys.end(), r.spec.ConfigKey()) == keys.end()) keys.push_back(r.spec.ConfigKey());
  }
  std::map<std::string, Summary> accuracy, seconds;
  for (const std::string& key : keys) {
    std::vector<const RunResult*> rows;
    for (const RunResult& r : results) {
      if (r.spec.ConfigKey() == key) rows.push_back(&r);
    }
    const RunResult& first = *rows.front();
    std::string setting = "-";
    if (first.spec.group == "budget") {
      setting = absl::StrFormat("%.0f%% (%s)", first.spec.budget_fraction * 100, FormatBytes(first.spec.budget_bytes));
    } else if (first.spec.group == "fixed") {
      setting = absl::StrCat("r=", first.spec.probes);
    }
    if (first.refused) {
      std::string note = first.note;
      if (first.spec.group == "budget") {
        note = absl::StrFormat("smallest budget %s = %.0f%% of the activations: %s", FormatBytes(memory.minimum),
                               100.0 * static_cast<double>(memory.minimum - memory.fixed) /
                                   static_cast<double>(memory.activations),
                               first.note);
      }
      absl::StrAppend(&md, "| ", key, " | ", setting, " | 0 | ",
                      first.spec.group == "lean" ? "not available" : "refused",
                      " | - | - | - | - | - | - | - | - | - | ", note, " |\n");
      continue;
    }
    std::vector<double> acc, secs, fidelity;
    int64_t measured = 0, predicted = 0, telemetry = 0;
    int replans = 0;
    for (const RunResult* r : rows) {
      acc.push_back(r->test_accuracy * 100);
      secs.push_back(r->train_seconds);
      if (std::isfinite(r->fidelity_ratio)) fidelity.push_back(r->fidelity_ratio);
      measured = std::max(measured, r->peak_measured);
      predicted = std::max(predicted, r->peak_predicted);
      telemetry = std::max(telemetry, r->telemetry_peak);
      replans += r->replans;
    }
    accuracy[key] = Summarise(acc);
    seconds[key] = Summarise(secs);
    const Summary& a = accuracy[key];
    const Summary& s = seconds[key];
    std::string gap = "-", ratio = "-";
    if (key != "exact" && accuracy.count("exact")) {
      const Summary& e = accuracy["exact"];
      gap = absl::StrFormat("%+.2f ± %.2f", e.mean - a.mean, std::hypot(e.se(), a.se()));
      ratio = absl::StrFormat("%.2f", s.mean / seconds["exact"].mean);
    }
    const Summary fid = Summarise(fidelity);
    absl::StrAppend(&md, "| ", key, " | ", setting, " | ", a.count, " | ", absl::StrFormat("%.2f ± %.2f", a.mean, a.std),
                    " | ", gap, " | ", absl::StrFormat("%.0f", s.mean), " | ", ratio, " | ", FormatBytes(measured),
                    " | ", FormatBytes(predicted), " | ", telemetry > 0 ? FormatBytes(telemetry) : std::string("-"),
                    " | ", replans, " | ", fid.count > 0 ? absl::StrFormat("%.3g", fid.mean) : std::string("-"),
                    " | ", first.probes, " | ", first.note, " |\n");
  }
  const std::string half = "XConv, budget 50%";
  std::string goal;
  if (!accuracy.count("exact") || !accuracy.count(half)) {
    goal = "not measured: the 50% budget was refused (see its row)";
  } else {
    const Summary& e = accuracy["exact"];
    const Summary& x = accuracy[half];
    const double gap = e.mean - x.mean;
    const double se = std::hypot(e.se(), x.se());
    const std::string noise =
        e.count < 2 || x.count < 2
            ? std::string("one seed: the noise is not measured, run more seeds")
            : absl::StrFormat("the gap is %s the noise (|gap| %s 2 standard errors = %.2f)",
                              std::abs(gap) > 2 * se ? "outside" : "inside", std::abs(gap) > 2 * se ? ">" : "<=",
                              2 * se);
    goal = absl::StrFormat("%s: exact %.2f%%, XConv at 50%% %.2f%%, gap %.2f ± %.2f points (%d and %d seeds); %s",
                           gap <= kGoalPoints ? "met" : "missed", e.mean, x.mean, gap, se, e.count, x.count, noise);
  }
  absl::StrAppend(&md, "\nGoal (XConv at the 50% budget within ", kGoalPoints, " points of exact): ", goal, "\n\n",
                  absl::StrFormat("Telemetry overhead (XConv runs): %.1f%% of the step time (every %d steps).\n\n",
                                  telemetry_share * 100, f.fidelity_interval));
  if (load_high > 0) {
    absl::StrAppend(&md, absl::StrFormat(
                             "Machine load (1-minute load average at the end of each run): %.2f to %.2f on %d cores%s\n",
                             load_low, load_high, cores,
                             load_high > f.threads + 0.5
                                 ? ": other work ran beside this benchmark on a shared machine, so train_seconds and "
                                   "their ratios carry that noise."
                                 : "."));
  }
  return md;
}

absl::StatusOr<std::vector<int64_t>> ParseList(absl::string_view flag, absl::string_view value) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(value, ',', absl::SkipEmpty())) {
    absl::StatusOr<int64_t> n = ParseInt(flag, part, 1);
    if (!n.ok()) return n.status();
    out.push_back(*n);
  }
  return out;
}

}  // namespace

std::string AccuracyBenchUsage() {
  return "usage: xtrain-bench accuracy [flags]\n"
         "  --quick               1 seed, 8192 training images, 2000 test images, 2 epochs, no grid (a few minutes)\n"
         "  --threads N           intra-op threads (default 1: steadier than 2 on a shared 2-core machine)\n"
         "  --epochs N            epochs per run (default 12; quick 2)\n"
         "  --train-subset N      first N training images (default all 60000; quick 8192)\n"
         "  --test-subset N       first N test images (default all 10000; quick 2000)\n"
         "  --seeds N             seeds of the exact, lean and budget arms (default 5; quick 1)\n"
         "  --width N             small_cnn's width (default 32)\n"
         "  --batch N             batch size (default 128)\n"
         "  --optimizer sgd|adam  SGD with momentum 0.9 (default) or Adam\n"
         "  --lr X                peak learning rate (default 0.1)\n"
         "  --weight-decay X      (default 5e-4)\n"
         "  --warmup-epochs X     linear warm-up over this many epochs' steps (default 1)\n"
         "  --grid R1,R2,...      fixed probes on every conv, one seed each (default 2,16; quick none; empty: none)\n"
         "  --fidelity-interval N gradient-fidelity telemetry every N steps in XConv runs (default 50; 0 off)\n"
         "  --data DIR            Fashion-MNIST folder (default /usr/share/datasets/fashion-mnist)\n"
         "  --json FILE           one JSON object per run and line\n"
         "  --markdown FILE       markdown table of the results\n"
         "  --curves FILE         per-step and per-epoch loss and fidelity as JSON lines (plot_accuracy.py)\n";
}

absl::StatusOr<AccuracyBenchOptions> ParseAccuracyBenchFlags(const std::vector<std::string>& args) {
  absl::StatusOr<std::vector<Flag>> flags = SplitFlags(
      args, {"--quick", "--help", "-h"},
      {"--threads", "--epochs", "--train-subset", "--test-subset", "--seeds", "--width", "--batch", "--optimizer",
       "--lr", "--weight-decay", "--warmup-epochs", "--grid", "--fidelity-interval", "--data", "--json",
       "--markdown", "--curves"},
      "accuracy");
  if (!flags.ok()) return flags.status();
  AccuracyBenchOptions options;
  for (const auto& [flag, value] : *flags) {
    absl::StatusOr<int64_t> n = int64_t{0};
    if (flag == "--threads" || flag == "--epochs" || flag == "--train-subset" || flag == "--test-subset" ||
        flag == "--seeds" || flag == "--width" || flag == "--batch") {
      n = ParseInt(flag, value, 1);
    } else if (flag == "--fidelity-interval") {
      n = ParseInt(flag, value, 0);
    }
    if (!n.ok()) return n.status();
    absl::StatusOr<double> x = 1.0;
    if (flag == "--lr" || flag == "--warmup-epochs") x = ParsePositive(flag, value);
    if (flag == "--weight-decay") {
      double parsed = 0;
      x = absl::SimpleAtod(value, &parsed) && parsed >= 0
              ? absl::StatusOr<double>(parsed)
              : absl::InvalidArgumentError(absl::StrCat("--weight-decay ", value, ": use a number of 0 or more"));
    }
    if (!x.ok()) return x.status();
    if (flag == "--quick") options.quick = true;
    if (flag == "--help" || flag == "-h") options.help = true;
    if (flag == "--threads") options.threads = static_cast<int>(*n);
    if (flag == "--epochs") options.epochs = *n;
    if (flag == "--train-subset") options.train_subset = *n;
    if (flag == "--test-subset") options.test_subset = *n;
    if (flag == "--seeds") options.seeds = static_cast<int>(*n);
    if (flag == "--width") options.width = *n;
    if (flag == "--batch") options.batch = *n;
    if (flag == "--fidelity-interval") options.fidelity_interval = *n;
    if (flag == "--lr") options.lr = *x;
    if (flag == "--weight-decay") options.weight_decay = *x;
    if (flag == "--warmup-epochs") options.warmup_epochs = *x;
    if (flag == "--optimizer") {
      if (value != "sgd" && value != "adam") {
        return absl::InvalidArgumentError(absl::StrCat("--optimizer ", value, ": use sgd or adam"));
      }
      options.optimizer = value;
    }
    if (flag == "--grid") {
      absl::StatusOr<std::vector<int64_t>> grid = ParseList(flag, value);
      if (!grid.ok()) return grid.status();
      options.grid_probes = *grid;
      options.grid_set = true;
    }
    if (flag == "--data") options.data_dir = value;
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
  if (f.epochs == 0) f.epochs = f.quick ? 2 : 12;
  if (f.train_subset == 0) f.train_subset = f.quick ? 8192 : 60000;
  if (f.test_subset == 0) f.test_subset = f.quick ? 2000 : 10000;
  if (f.seeds == 0) f.seeds = f.quick ? 1 : 5;
  if (!f.grid_set) f.grid_probes = f.quick ? std::vector<int64_t>{} : std::vector<int64_t>{2, 16};
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
  setup.warmup_steps = static_cast<int64_t>(std::llround(f.warmup_epochs * static_cast<double>(setup.train->size() / f.batch)));
  std::fprintf(stderr,
               "accuracy bench: threads %d, small_cnn width %lld, %lld training images, %lld test images, %lld "
               "epoch(s), %s lr %g, %d seed(s), grid r {%s} (one seed), telemetry every %lld steps\n",
               f.threads, static_cast<long long>(f.width), static_cast<long long>(setup.train->size()),
               static_cast<long long>(setup.test->size()), static_cast<long long>(f.epochs), f.optimizer.c_str(), f.lr,
               f.seeds, absl::StrJoin(f.grid_probes, ", ").c_str(), static_cast<long long>(f.fidelity_interval));

  // The exact job's memory, from the planning step (no trainer, no training).
  absl::StatusOr<TrainingPlan> exact = core::PlanTraining(JobOptions(setup, RunSpec{"exact", kNaN, 0, 0, 0}));
  if (!exact.ok()) return exact.status();
  const core::MemoryPrediction& prediction = exact->plan.prediction;
  MemorySplit memory;
  memory.exact_peak = exact->exact_peak_bytes;
  memory.fixed = prediction.parameter_bytes + prediction.gradient_bytes + prediction.optimizer_state_bytes +
                 exact->loader_bytes;
  memory.activations = memory.exact_peak - memory.fixed;
  memory.minimum = exact->minimum_budget_bytes;
  setup.lean_spec = LeanSpec(*exact);
  std::fprintf(stderr, "exact job peak: %s = %s fixed + %s activations; smallest plan %s\n",
               FormatBytes(memory.exact_peak).c_str(), FormatBytes(memory.fixed).c_str(),
               FormatBytes(memory.activations).c_str(), FormatBytes(memory.minimum).c_str());

  std::vector<RunSpec> specs;
  bool lean_refused = false;
  for (int s = 0; s < f.seeds; ++s) {
    const uint64_t seed = static_cast<uint64_t>(s);
    specs.push_back({"exact", kNaN, 0, 0, seed});
    specs.push_back({"lean", kNaN, 0, 0, seed});
    for (double fraction : kBudgetFractions) {
      const int64_t budget =
          memory.fixed + static_cast<int64_t>(std::llround(fraction * static_cast<double>(memory.activations)));
      specs.push_back({"budget", fraction, budget, 0, seed});
    }
  }
  for (int64_t r : f.grid_probes) specs.push_back({"fixed", kNaN, 0, r, 0});

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
  std::map<std::string, bool> refused;  // a refusal does not depend on the seed: asked once
  double telemetry = 0, steps = 0;
  for (const RunSpec& spec : specs) {
    if (refused[spec.ConfigKey()]) continue;
    absl::StatusOr<RunResult> result = RunOne(setup, spec, f.curves_path.empty() ? nullptr : &curves);
    if (!result.ok()) {
      return absl::Status(result.status().code(), absl::StrCat(spec.Name(), ": ", result.status().message()));
    }
    if (result->refused) refused[spec.ConfigKey()] = true;
    if (spec.group == "lean" && result->refused) lean_refused = true;
    if (spec.group == "budget" || spec.group == "fixed") {
      telemetry += result->telemetry_seconds;
      steps += result->step_seconds;
    }
    if (json.is_open()) json << ResultJson(setup, *result) << "\n" << std::flush;
    results.push_back(*std::move(result));
  }
  if (lean_refused) std::fprintf(stderr, "lean arm not available: see its row\n");
  const double share = steps > 0 ? telemetry / steps : 0;
  const std::string md = Markdown(setup, results, memory, share);
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
