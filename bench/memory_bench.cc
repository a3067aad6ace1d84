#include "bench/memory_bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>

#include <torch/torch.h>

#include "bench/bench_util.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/memory/planner.h"
#include "core/models/model_zoo.h"

namespace xtrain::bench {
namespace {

using core::MemoryModel;
using core::Plan;

struct Options {
  bool quick = false;
  int threads = 2;
  std::string json_path;
  std::string markdown_path;
  std::string filter;
  // name=path,...: TorchScript modules (scripts/export_torchvision.py) benchmarked instead of the zoo's
  // nets, on 1x64x64 inputs with 10 classes, with the training step's time exact against planned.
  std::string script;
  bool help = false;
};

// One network of the benchmark: a zoo spec, its input and the batch the sweep runs at.
struct Net {
  std::string name;
  core::ModelSpec spec;
  std::vector<int64_t> sample_sizes;
  int64_t batch = 16;
  core::LossKind loss = core::LossKind::kCrossEntropy;
  bool sweep = true;  // false: planning time only (the ResNet-50-sized net)
  bool step_time = false;  // time training steps exact against the cheapest plan
};

core::ModelSpec Spec(std::string name, int64_t dims, int64_t in, int64_t out, int64_t width, int64_t depth,
                     bool batch_norm = true) {
  core::ModelSpec spec;
  spec.name = std::move(name);
  spec.dims = dims;
  spec.in_channels = in;
  spec.out_channels = out;
  spec.classes = out;
  spec.width = width;
  spec.depth = depth;
  spec.batch_norm = batch_norm;
  spec.seed = 7;
  return spec;
}

std::vector<Net> Nets(bool quick) {
  using core::LossKind;
  if (quick) {
    return {
        {"dncnn-d8-w16-24px", Spec("dncnn", 2, 1, 1, 16, 8, false), {1, 24, 24}, 8, LossKind::kMse},
        {"resnet18-w8-16px", Spec("resnet18", 2, 3, 10, 8, 1), {3, 16, 16}, 8},
        {"small_cnn-28px", Spec("small_cnn", 2, 1, 10, 16, 0), {1, 28, 28}, 8},
    };
  }
  return {
      // The DnCNN shape (17 conv-ReLU layers at full resolution, no BatchNorm): SR and inpainting nets.
      {"dncnn-d17-w64-40px", Spec("dncnn", 2, 1, 1, 64, 17, false), {1, 40, 40}, 16, LossKind::kMse},
      {"resnet18-w32-32px", Spec("resnet18", 2, 3, 10, 32, 2), {3, 32, 32}, 32},
      {"squeezenet1_1-64px", Spec("squeezenet1_1", 2, 3, 10, 0, 0), {3, 64, 64}, 32},
      {"unet2d-w16-64px", Spec("unet", 2, 1, 2, 16, 3), {1, 64, 64}, 16},
      {"unet3d-w8-16px", Spec("unet", 3, 1, 2, 8, 2), {1, 16, 16, 16}, 8},
      {"small_cnn-28px", Spec("small_cnn", 2, 1, 10, 32, 0), {1, 28, 28}, 64},
      // More convolutions than ResNet-50 (53): planning time.
      {"resnet-d7-w16-32px (58 convs)", Spec("resnet18", 2, 3, 10, 16, 7), {3, 32, 32}, 32,
       LossKind::kCrossEntropy, false},
  };
}

// The nets of --script: each torchscript module on 1x64x64 images (Fashion-MNIST resized), 10 classes.
absl::StatusOr<std::vector<Net>> ScriptNets(const std::string& list) {
  std::vector<Net> nets;
  for (absl::string_view item : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> named = absl::StrSplit(item, absl::MaxSplits('=', 1));
    if (named.second.empty()) return absl::InvalidArgumentError(absl::StrCat("--script: '", item, "' is not name=path"));
    core::ModelSpec spec;
    spec.name = core::kTorchScriptModel;
    spec.script_path = named.second;
    spec.classes = 10;
    spec.seed = 7;
    Net net{named.first + "-64px", spec, {1, 64, 64}, named.first == "resnet18" ? 32 : 64};
    net.step_time = true;
    nets.push_back(net);
  }
  return nets;
}

core::ModelFactory Factory(const core::ModelSpec& spec) {
  return [spec]() -> absl::StatusOr<std::shared_ptr<torch::nn::Module>> {
    absl::StatusOr<std::shared_ptr<core::NetworkImpl>> net = core::BuildModel(spec);
    if (!net.ok()) return net.status();
    return std::static_pointer_cast<torch::nn::Module>(*net);
  };
}

torch::Tensor Forward(torch::nn::Module& model, const torch::Tensor& input) {
  return dynamic_cast<core::NetworkImpl&>(model).forward(input);
}

double Milliseconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

absl::StatusOr<int64_t> Measure(const Net& net, const MemoryModel& model, const Plan& plan) {
  return core::MeasureTrainingPeak(Factory(net.spec), &Forward, model.step(), plan.batch,
                                   [&](std::shared_ptr<torch::nn::Module> root)
                                       -> absl::StatusOr<std::shared_ptr<torch::nn::Module>> {
                                     auto converted = core::ApplyPlan(root, plan, model, 99);
                                     if (!converted.ok()) return converted.status();
                                     return converted->module;
                                   });
}

// One line of results. Kinds: "exact" (the unconverted model), "lean" (lean layers, every conv
// exact), "sweep" / "refused" (a budget's plan), "largest_batch_lean" and "largest_batch" (the
// largest batch the exact peak holds with exact gradients and with XConv), "plan_time".
struct Record {
  std::string net, kind;
  int64_t batch = 0, budget = 0, predicted = 0, measured = 0, exact = 0;
  double fraction = 0, plan_ms = 0, model_ms = 0, fidelity = 1;
  int converted = 0, layers = 0;
  bool lean_layers = false;
  int64_t exact_batch = 0, lean_batch = 0, xconv_batch = 0;  // largest-batch records
  int64_t lean_peak = 0, smallest_peak = 0;  // exact records: predicted peaks of lean alone and of the cheapest plan
  std::string note;

  std::string Json() const {
    JsonObject o;
    o.String("net", net).String("kind", kind).Int("batch", batch).Number("budget_fraction", fraction);
    o.Int("budget_bytes", budget).Int("predicted_peak_bytes", predicted).Int("measured_peak_bytes", measured);
    o.Int("exact_peak_bytes", exact).Number("plan_ms", plan_ms).Number("model_ms", model_ms);
    o.Int("converted_layers", converted).Int("layers", layers).Bool("lean_layers", lean_layers);
    o.Number("fidelity", fidelity);
    if (kind == "exact") o.Int("lean_peak_bytes", lean_peak).Int("smallest_plan_peak_bytes", smallest_peak);
    if (kind == "largest_batch" || kind == "largest_batch_lean") {
      o.Int("exact_batch", exact_batch).Int("lean_batch", lean_batch).Int("xconv_batch", xconv_batch);
    }
    o.String("note", note);
    return o.Text();
  }
};

// Fills a record's plan fields.
void Describe(const Plan& plan, Record& r) {
  r.predicted = plan.predicted_peak_bytes();
  r.plan_ms = plan.plan_ms;
  r.fidelity = plan.fidelity;
  r.converted = plan.converted_layers();
  r.lean_layers = plan.lean_layers;
}

// "exact", "lean" or "lean + 3 XConv".
std::string PlanName(const Plan& plan) {
  if (plan.converted_layers() > 0) return absl::StrCat("lean + ", plan.converted_layers(), " XConv");
  return plan.lean_layers ? "lean" : "exact";
}

Record MakeRecord(const std::string& net, const std::string& kind, int64_t batch, int64_t budget,
                  int64_t exact, double fraction, double model_ms, size_t layers) {
  Record r;
  r.net = net;
  r.kind = kind;
  r.batch = batch;
  r.budget = budget;
  r.exact = exact;
  r.fraction = fraction;
  r.model_ms = model_ms;
  r.layers = static_cast<int>(layers);
  return r;
}

double Error(const Record& r) {
  return r.measured > 0 ? static_cast<double>(r.predicted - r.measured) / static_cast<double>(r.measured) : 0;
}

bool Planned(const Record& r) {
  return (r.kind == "lean" || r.kind == "sweep" || r.kind == "largest_batch" || r.kind == "largest_batch_lean") &&
         r.measured > 0;
}

// Median and max of |error| over the records `take` selects, and how many.
struct ErrorSummary {
  double median = 0, worst = 0;
  size_t count = 0;
};
template <typename Take>
ErrorSummary Summarise(const std::vector<Record>& records, Take take) {
  std::vector<double> errors;
  for (const Record& r : records) {
    if (take(r)) errors.push_back(std::abs(Error(r)));
  }
  std::sort(errors.begin(), errors.end());
  ErrorSummary s;
  s.count = errors.size();
  if (!errors.empty()) {
    s.median = errors[errors.size() / 2];
    s.worst = errors.back();
  }
  return s;
}

absl::StatusOr<Options> ParseFlags(const std::vector<std::string>& args) {
  absl::StatusOr<std::vector<Flag>> flags =
      SplitFlags(args, {"--quick", "--help", "-h"}, {"--threads", "--json", "--markdown", "--filter", "--script"}, "memory");
  if (!flags.ok()) return flags.status();
  Options options;
  for (const auto& [flag, value] : *flags) {
    if (flag == "--quick") options.quick = true;
    if (flag == "--help" || flag == "-h") options.help = true;
    if (flag == "--threads") {
      absl::StatusOr<int64_t> n = ParseInt(flag, value, 1);
      if (!n.ok()) return n.status();
      options.threads = static_cast<int>(*n);
    }
    if (flag == "--json") options.json_path = value;
    if (flag == "--markdown") options.markdown_path = value;
    if (flag == "--filter") options.filter = value;
    if (flag == "--script") options.script = value;
  }
  return options;
}

}  // namespace

std::string MemoryBenchUsage() {
  return "usage: xtrain-bench memory [flags]\n"
         "  --quick          three small nets (about a minute)\n"
         "  --threads N      intra-op threads (default 2; the model calibrates with at least 2)\n"
         "  --json FILE      one JSON object per measured case and line\n"
         "  --markdown FILE  markdown tables of the results\n"
         "  --filter TEXT    only nets whose name contains TEXT\n"
         "  --script N=P,... TorchScript modules (scripts/export_torchvision.py) instead of the zoo's nets,\n"
         "                   with step times exact against the cheapest plan\n";
}

absl::Status RunMemoryBench(const std::vector<std::string>& args) {
  absl::StatusOr<Options> parsed = ParseFlags(args);
  if (!parsed.ok()) return parsed.status();
  const Options& options = *parsed;
  if (options.help) {
    std::fputs(MemoryBenchUsage().c_str(), stdout);
    return absl::OkStatus();
  }
  at::set_num_threads(options.threads);
  std::printf("memory benchmark: %d intra-op threads, CPU meter (exact bytes)\n", options.threads);
  std::ofstream json;
  if (!options.json_path.empty()) {
    json.open(options.json_path, std::ios::trunc);
    if (!json) return absl::InvalidArgumentError(absl::StrCat("cannot write ", options.json_path));
  }
  std::vector<Record> records;
  auto emit = [&](const Record& r) {
    records.push_back(r);
    if (json.is_open()) json << r.Json() << "\n" << std::flush;
  };

  std::vector<Net> nets = Nets(options.quick);
  if (!options.script.empty()) {
    absl::StatusOr<std::vector<Net>> script_nets = ScriptNets(options.script);
    if (!script_nets.ok()) return script_nets.status();
    nets = *std::move(script_nets);
  }
  std::vector<std::string> step_lines;
  for (const Net& net : nets) {
    if (!options.filter.empty() && net.name.find(options.filter) == std::string::npos) continue;
    core::TrainingStep step;
    step.sample_sizes = net.sample_sizes;
    step.batch = net.batch;
    step.loss = net.loss;
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<MemoryModel> model = MemoryModel::Build(Factory(net.spec), &Forward, step);
    if (!model.ok()) return absl::InternalError(absl::StrCat(net.name, ": ", model.status().message()));
    const double model_ms = Milliseconds(start);
    const int64_t exact = model->PredictPeak(model->ExactChoices(), net.batch);
    std::printf("%s: %zu convertible convs, model built in %.0f ms, exact peak %.1f MiB at batch %ld\n",
                net.name.c_str(), model->layers().size(), model_ms, exact / 1048576.0, net.batch);
    std::fflush(stdout);
    if (!net.sweep) {
      // Planning time only: median of 21 plans over budgets from the floor to the exact peak.
      const int64_t floor = core::MinimumBudget(*model, net.batch);
      std::vector<double> times;
      for (int i = 0; i <= 20; ++i) {
        absl::StatusOr<Plan> plan = core::MakePlan(*model, floor + (exact - floor) * i / 20, net.batch);
        if (plan.ok()) times.push_back(plan->plan_ms);
      }
      std::sort(times.begin(), times.end());
      Record r = MakeRecord(net.name, "plan_time", net.batch, exact, exact, 1.0, model_ms, model->layers().size());
      r.plan_ms = times[times.size() / 2];
      r.note = absl::StrFormat("median of %d plans; max %.3f ms", static_cast<int>(times.size()), times.back());
      std::printf("  planning: median %.3f ms, max %.3f ms over %zu budgets\n", r.plan_ms, times.back(), times.size());
      emit(r);
      continue;
    }
    absl::StatusOr<int64_t> measured_exact = core::MeasureTrainingPeak(Factory(net.spec), &Forward, step, net.batch, nullptr);
    if (!measured_exact.ok()) return measured_exact.status();
    absl::StatusOr<std::vector<core::ChainPoint>> chain = core::PlanChain(*model, net.batch);
    if (!chain.ok()) return chain.status();
    auto is_lean = [](const core::ChainPoint& point) {
      return point.lean_layers && std::none_of(point.choices.begin(), point.choices.end(),
                                               [](const core::LayerChoice& c) { return c.xconv; });
    };
    {
      Record r = MakeRecord(net.name, "exact", net.batch, exact, exact, 1.0, model_ms, model->layers().size());
      r.predicted = exact;
      r.measured = *measured_exact;
      r.smallest_peak = chain->front().peak_bytes;
      for (const core::ChainPoint& point : *chain) {
        if (is_lean(point)) r.lean_peak = point.peak_bytes;
      }
      emit(r);
    }
    // Lean layers alone (exact gradients): the chain's point just below exact, when it saves.
    for (const core::ChainPoint& point : *chain) {
      if (!is_lean(point)) continue;
      const int64_t budget = core::BudgetForPeak(point.peak_bytes);
      Record r = MakeRecord(net.name, "lean", net.batch, budget, exact,
                            static_cast<double>(budget) / static_cast<double>(exact), model_ms, model->layers().size());
      absl::StatusOr<Plan> plan = core::PlanFromChoices(*model, point.choices, true, net.batch, budget);
      if (!plan.ok()) return plan.status();
      absl::StatusOr<int64_t> measured = Measure(net, *model, *plan);
      if (!measured.ok()) return measured.status();
      Describe(*plan, r);
      r.measured = *measured;
      std::printf("  lean layers alone: predicted %.2f MiB (%.1f%% of exact), measured %.2f MiB (%+.2f%%)\n",
                  r.predicted / 1048576.0, 100.0 * static_cast<double>(r.predicted) / static_cast<double>(exact),
                  r.measured / 1048576.0, 100 * Error(r));
      emit(r);
    }
    for (int percent = 20; percent <= 100; percent += 10) {
      Record r = MakeRecord(net.name, "sweep", net.batch, exact * percent / 100, exact, percent / 100.0, model_ms,
                            model->layers().size());
      absl::StatusOr<Plan> plan = core::MakePlan(*model, r.budget, net.batch);
      if (!plan.ok()) {
        r.kind = "refused";
        r.note = absl::StrCat("floor ", core::MinimumBudget(*model, net.batch));
        emit(r);
        continue;
      }
      absl::StatusOr<int64_t> measured = Measure(net, *model, *plan);
      if (!measured.ok()) return measured.status();
      Describe(*plan, r);
      r.measured = *measured;
      r.note = PlanName(*plan);
      std::printf("  %3d%%: predicted %.2f MiB, measured %.2f MiB (%+.2f%%), %s, %d/%d XConv, fidelity %.3f, "
                  "plan %.2f ms%s\n",
                  percent, r.predicted / 1048576.0, r.measured / 1048576.0, 100 * Error(r), r.note.c_str(),
                  r.converted, r.layers, r.fidelity, r.plan_ms, r.measured > r.budget ? "  OVER BUDGET" : "");
      std::fflush(stdout);
      emit(r);
    }
    // The largest batch the exact peak at this batch holds: exact, with exact gradients (lean layers
    // alone) and with XConv, each planned batch measured (the paper's SqueezeNet table).
    const int64_t exact_batch = core::LargestBatch(*model, exact, {}, 0, /*exact_only=*/true);
    const int64_t lean_batch = core::LargestBatch(*model, exact, {}, /*min_fidelity=*/1.0);
    const int64_t xconv_batch = core::LargestBatch(*model, exact);
    for (const auto& [kind, batch] : {std::pair<std::string, int64_t>{"largest_batch_lean", lean_batch},
                                      std::pair<std::string, int64_t>{"largest_batch", xconv_batch}}) {
      Record r = MakeRecord(net.name, kind, batch, exact, exact, 1.0, model_ms, model->layers().size());
      r.exact_batch = exact_batch;
      r.lean_batch = lean_batch;
      r.xconv_batch = xconv_batch;
      absl::StatusOr<Plan> plan = core::MakePlan(*model, exact, batch);
      if (plan.ok()) {
        absl::StatusOr<int64_t> measured = Measure(net, *model, *plan);
        if (!measured.ok()) return measured.status();
        Describe(*plan, r);
        r.measured = *measured;
        r.note = PlanName(*plan);
      }
      emit(r);
    }
    auto ratio = [&](int64_t b) { return exact_batch > 0 ? static_cast<double>(b) / exact_batch : 0.0; };
    std::printf("  budget %.1f MiB holds batch %ld exact, %ld with lean layers (%.2fx), %ld with XConv (%.2fx)\n",
                exact / 1048576.0, exact_batch, lean_batch, ratio(lean_batch), xconv_batch, ratio(xconv_batch));
    std::fflush(stdout);
    if (net.step_time) {
      // Seconds per training step at the net's batch: (6 steps - 1 step) / 5, so the build and the
      // conversion drop out; exact against the cheapest plan (every freeable conv XConv at 2 probes).
      absl::StatusOr<Plan> cheapest = core::MakePlan(*model, core::MinimumBudget(*model, net.batch), net.batch);
      if (!cheapest.ok()) return cheapest.status();
      auto per_step = [&](const core::PrepareFn& prepare) -> absl::StatusOr<double> {
        auto start = std::chrono::steady_clock::now();
        if (auto s = core::MeasureTrainingPeak(Factory(net.spec), &Forward, step, net.batch, prepare, 1); !s.ok()) {
          return s.status();
        }
        const double one = Milliseconds(start);
        start = std::chrono::steady_clock::now();
        if (auto s = core::MeasureTrainingPeak(Factory(net.spec), &Forward, step, net.batch, prepare, 6); !s.ok()) {
          return s.status();
        }
        return (Milliseconds(start) - one) / 5;
      };
      absl::StatusOr<double> exact_ms = per_step(nullptr);
      if (!exact_ms.ok()) return exact_ms.status();
      absl::StatusOr<double> planned_ms = per_step([&](std::shared_ptr<torch::nn::Module> root)
                                                       -> absl::StatusOr<std::shared_ptr<torch::nn::Module>> {
        auto converted = core::ApplyPlan(root, *cheapest, *model, 99);
        if (!converted.ok()) return converted.status();
        return converted->module;
      });
      if (!planned_ms.ok()) return planned_ms.status();
      Record r = MakeRecord(net.name, "step_time", net.batch, cheapest->budget_bytes, exact, 1.0, model_ms,
                            model->layers().size());
      Describe(*cheapest, r);
      r.note = absl::StrFormat("exact %.1f ms, %s %.1f ms per step: %.2fx", *exact_ms, PlanName(*cheapest),
                               *planned_ms, *planned_ms / *exact_ms);
      std::printf("  step time at batch %ld: %s\n", net.batch, r.note.c_str());
      step_lines.push_back(absl::StrFormat("| %s | %d | %.1f | %s | %.1f | %.2f |", net.name, net.batch, *exact_ms,
                                           PlanName(*cheapest), *planned_ms, *planned_ms / *exact_ms));
      emit(r);
    }
  }

  // Summary: the error of planned steps (each under its budget) and, apart, of the exact models.
  const ErrorSummary planned = Summarise(records, Planned);
  const ErrorSummary exact_models = Summarise(records, [](const Record& r) { return r.kind == "exact"; });
  int overruns = 0;
  for (const Record& r : records) {
    if (Planned(r) && r.measured > r.budget) ++overruns;
  }
  const std::string summary = absl::StrFormat(
      "planned steps |error|: median %.3f%%, max %.3f%% over %d measured steps; %d budget overruns. "
      "Exact models |error|: median %.3f%%, max %.3f%% over %d nets.",
      100 * planned.median, 100 * planned.worst, planned.count, overruns, 100 * exact_models.median,
      100 * exact_models.worst, exact_models.count);
  std::printf("%s\n", summary.c_str());

  if (!options.markdown_path.empty()) {
    std::ofstream md(options.markdown_path, std::ios::trunc);
    if (!md) return absl::InvalidArgumentError(absl::StrCat("cannot write ", options.markdown_path));
    md << "# Memory planner: predicted against measured peaks (CPU meter, " << options.threads
       << " threads)\n\n" << summary << "\n\n"
       << "## Where each saving comes from\n\n"
       << "Lean layers (mask ReLU, index max pool) keep exact gradients; XConv trades gradient noise for memory. "
          "Peaks predicted at the net's batch; largest batches under the exact peak as the budget.\n\n"
       << "| net | batch | exact MiB | lean MiB | smallest plan MiB | largest batch exact | lean | XConv | "
          "lean / exact | XConv / exact |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (const Record& e : records) {
      if (e.kind != "exact") continue;
      const auto largest = std::find_if(records.begin(), records.end(), [&](const Record& r) {
        return r.net == e.net && r.kind == "largest_batch";
      });
      if (largest == records.end()) continue;
      const double exact_batch = static_cast<double>(std::max<int64_t>(largest->exact_batch, 1));
      md << absl::StrFormat("| %s | %d | %.2f | %s | %.2f | %d | %d | %d | %.2f | %.2f |\n", e.net, e.batch,
                            e.predicted / 1048576.0,
                            e.lean_peak > 0 ? absl::StrFormat("%.2f", e.lean_peak / 1048576.0) : std::string("-"),
                            e.smallest_peak / 1048576.0, largest->exact_batch, largest->lean_batch,
                            largest->xconv_batch, largest->lean_batch / exact_batch, largest->xconv_batch / exact_batch);
    }
    if (!step_lines.empty()) {
      md << "\n## Training step time, exact against the cheapest plan (" << options.threads << " threads)\n\n"
         << "| net | batch | exact ms | cheapest plan | its ms | ratio |\n|---|---:|---:|---|---:|---:|\n";
      for (const std::string& line : step_lines) md << line << "\n";
    }
    md << "\n## Every measured step\n\n"
       << "| net | kind | batch | budget | budget MiB | predicted MiB | measured MiB | error | lean layers | "
          "XConv layers | fidelity | plan ms | note |\n|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|\n";
    for (const Record& r : records) {
      md << absl::StrFormat("| %s | %s | %d | %.0f%% | %.2f | %.2f | %.2f | %+.2f%% | %s | %d/%d | %.3f | %.2f | %s |\n",
                            r.net, r.kind, r.batch, 100 * r.fraction, r.budget / 1048576.0, r.predicted / 1048576.0,
                            r.measured / 1048576.0, 100 * Error(r), r.lean_layers ? "on" : "off", r.converted,
                            r.layers, r.fidelity, r.plan_ms, r.note);
    }
  }
  if (overruns > 0) return absl::InternalError(absl::StrCat(overruns, " planned steps ran over their budget"));
  return absl::OkStatus();
}

}  // namespace xtrain::bench
