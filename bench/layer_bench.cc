#include "bench/layer_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <exception>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "bench/bench_util.h"
#include "core/memory/cpu_memory_meter.h"
#include "core/xconv/conv_geometry.h"
#include "core/xconv/weight_gradient.h"
#include "core/xconv/xconv_op.h"
#include "core/xconv/xconv_options.h"

namespace xtrain::bench {
namespace {

using core::GradientRoute;
using core::XConvSettings;

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr int64_t kKernel = 3;
constexpr int64_t kFloatBytes = 4;

// One conv layer: kernel 3 per dimension, stride 1, padding 1, C_in = C_out = channels, square
// (cubic in 3-D) input of side `size`.
struct LayerShape {
  int64_t dims = 2;
  int64_t batch = 0;
  int64_t channels = 0;
  int64_t size = 0;

  int64_t Spatial() const {
    int64_t spatial = 1;
    for (int64_t d = 0; d < dims; ++d) spatial *= size;
    return spatial;
  }
  std::vector<int64_t> InputSizes() const {
    std::vector<int64_t> sizes = {batch, channels};
    sizes.insert(sizes.end(), dims, size);
    return sizes;
  }
  int64_t InputBytes() const { return batch * channels * Spatial() * kFloatBytes; }
  std::string SizeText() const {
    std::string text = absl::StrCat(size);
    for (int64_t d = 1; d < dims; ++d) absl::StrAppend(&text, "x", size);
    return text;
  }
  bool operator==(const LayerShape&) const = default;
};

// One measured case: a layer and the probe count r of its XConv variant.
struct LayerCase {
  LayerShape shape;
  int64_t probes = 0;

  std::string Name() const {
    return absl::StrCat(shape.dims, "d-b", shape.batch, "-c", shape.channels, "-", shape.SizeText(),
                        "-r", probes);
  }
};

// The grid of the issue, or its --quick slice; cases of one layer shape are adjacent.
std::vector<LayerCase> BuildCases(bool quick) {
  std::vector<LayerCase> cases;
  auto add = [&cases](LayerShape shape, const std::vector<int64_t>& probes) {
    for (int64_t r : probes) cases.push_back({shape, r});
  };
  if (quick) {
    add({2, 64, 64, 32}, {8, 16});
    add({3, 4, 16, 8}, {8});
    return cases;
  }
  for (int64_t batch : {16, 64, 128}) {
    for (int64_t channels : {16, 64, 256}) {
      for (int64_t size : {32, 64, 128}) add({2, batch, channels, size}, {8, 32, 128});
    }
  }
  add({3, 16, 32, 16}, {8, 32});
  return cases;
}

core::ConvGeometry Geometry(const LayerShape& shape) {
  return core::ConvGeometry{std::vector<int64_t>(shape.dims, 1), std::vector<int64_t>(shape.dims, 1),
                            std::vector<int64_t>(shape.dims, 1), 1};
}

// What backward's auto rule sees for this layer (weight_gradient.h).
core::ConvShape RouteShape(const LayerShape& shape) {
  int64_t kernel_volume = 1;
  for (int64_t d = 0; d < shape.dims; ++d) kernel_volume *= kKernel;
  const int64_t out_side = core::ConvOutputSize(shape.size, kKernel, 1, 1, 1);
  int64_t output_spatial = 1;
  for (int64_t d = 0; d < shape.dims; ++d) output_spatial *= out_side;
  return core::ConvShape{shape.batch, shape.channels, shape.channels, 1,
                         kernel_volume, shape.Spatial(), output_spatial};
}

// Tensors of one layer. With `input_grad` backward also computes dX, as in a hidden layer.
struct LayerTensors {
  torch::Tensor input;
  torch::Tensor weight;
  torch::Tensor bias;
  torch::Tensor grad_output;  // fixed G: backward of (y * G).sum()
};

LayerTensors MakeTensors(const LayerShape& shape, bool input_grad, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<int64_t> weight_sizes = {shape.channels, shape.channels};
  weight_sizes.insert(weight_sizes.end(), shape.dims, kKernel);
  const double fan_in = static_cast<double>(shape.channels * RouteShape(shape).kernel_volume);
  LayerTensors t;
  t.input = torch::randn(shape.InputSizes()).requires_grad_(input_grad);
  t.weight = (torch::randn(weight_sizes) / std::sqrt(fan_in)).requires_grad_(true);
  t.bias = torch::zeros({shape.channels}).requires_grad_(true);
  // G of a regression step towards a teacher layer, 0.5 ||conv(x, W) - conv(x, W_teacher)||^2:
  // correlated with the input as in training (i.i.d. noise would make any estimate look bad).
  const torch::Tensor teacher_delta = torch::randn(weight_sizes) / std::sqrt(fan_in);
  {
    torch::NoGradGuard no_grad;
    t.grad_output = core::XConvNd(shape.dims, t.input, teacher_delta, {}, Geometry(shape),
                                  XConvSettings{.probes = 0}, 0);
  }
  return t;
}

// One forward and backward pass; returns the weight gradient.
torch::Tensor ForwardBackward(const LayerShape& shape, const LayerTensors& t,
                              const XConvSettings& settings, uint64_t seed) {
  for (const torch::Tensor* leaf : {&t.input, &t.weight, &t.bias}) leaf->mutable_grad().reset();
  torch::Tensor output =
      core::XConvNd(shape.dims, t.input, t.weight, t.bias, Geometry(shape), settings, seed);
  output.backward(t.grad_output);
  return t.weight.grad();
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

struct Timed {
  double seconds = 0;          // median forward+backward wall time
  torch::Tensor grad_weight;   // of the last repetition
};

// Median wall time of `reps` forward+backward passes of each variant after one warm-up pass each.
// The variants take turns within every round (in rotating order), so a change in the machine's
// speed during the run (shared CPUs) hits all of them alike and their ratios stay comparable.
std::vector<Timed> TimeInterleaved(const LayerShape& shape, const LayerTensors& t,
                                   const std::vector<XConvSettings>& variants, uint64_t seed,
                                   int reps) {
  const size_t n = variants.size();
  std::vector<Timed> timed(n);
  std::vector<std::vector<double>> seconds(n);
  for (size_t v = 0; v < n; ++v) timed[v].grad_weight = ForwardBackward(shape, t, variants[v], seed);
  for (int round = 0; round < reps; ++round) {
    for (size_t k = 0; k < n; ++k) {
      const size_t v = (k + static_cast<size_t>(round)) % n;
      const auto start = std::chrono::steady_clock::now();
      timed[v].grad_weight = ForwardBackward(shape, t, variants[v], seed);
      seconds[v].push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  }
  for (size_t v = 0; v < n; ++v) timed[v].seconds = Median(std::move(seconds[v]));
  return timed;
}

// Bytes the forward pass leaves for backward: a fresh input is made inside a scope and dropped
// after forward, so what remains above the baseline, less the output, is what autograd keeps.
int64_t KeptBytes(const LayerShape& shape, const LayerTensors& t, const XConvSettings& settings,
                  uint64_t seed, core::CpuMemoryMeter& meter) {
  const int64_t baseline = meter.current_bytes();
  int64_t kept = 0;
  {
    torch::Tensor output;
    {
      // No requires_grad: autograd would keep a leaf input alive for its gradient.
      const torch::Tensor input = t.input.detach().clone();
      output = core::XConvNd(shape.dims, input, t.weight, t.bias, Geometry(shape), settings, seed);
    }
    kept = meter.current_bytes() - baseline - static_cast<int64_t>(output.nbytes());
  }
  const int64_t leaked = meter.current_bytes() - baseline;
  if (leaked != 0) {
    std::fprintf(stderr, "  note: %lld bytes still allocated after the output was dropped\n",
                 static_cast<long long>(leaked));
  }
  return kept;
}

double RelativeError(const torch::Tensor& estimate, const torch::Tensor& exact) {
  return (estimate - exact).norm().item<double>() / exact.norm().item<double>();
}

// The exact layer's tensors, kept bytes and weight gradient, shared by every probe count of one
// shape (its time is measured with each case, interleaved with XConv's).
struct ExactRun {
  LayerShape shape;
  LayerTensors tensors;
  int64_t bytes = 0;
  torch::Tensor grad_weight;
};

XConvSettings ExactSettings() {
  XConvSettings exact;
  exact.probes = 0;
  return exact;
}

ExactRun MeasureExact(const LayerShape& shape, const LayerBenchOptions& options,
                      core::CpuMemoryMeter& meter) {
  ExactRun run;
  run.shape = shape;
  run.tensors = MakeTensors(shape, options.input_grad, options.seed);
  run.grad_weight = ForwardBackward(shape, run.tensors, ExactSettings(), options.seed);
  run.bytes = KeptBytes(shape, run.tensors, ExactSettings(), options.seed, meter);
  return run;
}

// One row of the results: a measured case, or a skipped or failed one with `note` saying why.
struct LayerResult {
  LayerCase layer;
  bool measured = false;
  std::string note;
  std::string route;  // the route kAuto resolves to
  int threads = 0;
  int reps = 0;
  bool input_grad = true;
  double time_exact_s = 0;
  double time_tap_s = 0;
  double time_reconstruct_s = 0;
  double time_xconv_s = 0;  // the auto route's time
  int64_t bytes_exact = 0;
  int64_t bytes_xconv = 0;
  double grad_rel_err = 0;    // ||dW_auto - dW_exact||_F / ||dW_exact||_F
  double route_rel_diff = 0;  // ||dW_tap - dW_reconstruct||_F / ||dW_reconstruct||_F: rounding only
  bool auto_matches_route = false;  // dW of auto equals dW of `route` bit for bit
  double model_tap_rel = 0;  // EstimateRouteCost: tap / exact weight-gradient multiply-adds
  double model_reconstruct_rel = 0;

  double TimeRatio() const { return time_xconv_s / time_exact_s; }
  double BytesRatio() const {
    return static_cast<double>(bytes_xconv) / static_cast<double>(bytes_exact);
  }
  // Expected bytes ratio: the sketch keeps r values per channel, plus the channel mean when centred
  // (XConvSettings::center, on by default).
  int64_t KeptPerChannel() const { return layer.probes + (XConvSettings{}.center ? 1 : 0); }
  double ProbeRatio() const {
    return static_cast<double>(KeptPerChannel()) / static_cast<double>(layer.shape.Spatial());
  }
  // The goal applies at B >= 64 and r <= C/4.
  bool InGoalDomain() const { return layer.shape.batch >= 64 && 4 * layer.probes <= layer.shape.channels; }
  bool BytesAsExpected() const {
    return bytes_xconv * layer.shape.Spatial() == bytes_exact * KeptPerChannel();
  }
};

LayerResult MeasureXConv(const LayerCase& layer, const ExactRun& exact,
                         const LayerBenchOptions& options, core::CpuMemoryMeter& meter) {
  const LayerShape& shape = layer.shape;
  LayerResult result;
  result.layer = layer;
  result.measured = true;
  result.threads = torch::get_num_threads();
  result.reps = options.reps;
  result.input_grad = options.input_grad;
  result.bytes_exact = exact.bytes;

  XConvSettings settings;
  settings.probes = layer.probes;
  XConvSettings tap_settings = settings;
  tap_settings.route = GradientRoute::kTap;
  XConvSettings reconstruct_settings = settings;
  reconstruct_settings.route = GradientRoute::kReconstruct;
  const std::vector<Timed> timed =
      TimeInterleaved(shape, exact.tensors, {ExactSettings(), tap_settings, reconstruct_settings},
                      options.seed, options.reps);
  const Timed& tap = timed[1];
  const Timed& reconstruct = timed[2];
  // Each pass leaves a fresh weight.grad, so these stay as their pass left them.
  const torch::Tensor& tap_grad = tap.grad_weight;
  const torch::Tensor& reconstruct_grad = reconstruct.grad_weight;
  result.time_exact_s = timed[0].seconds;

  // Auto runs the chosen route's code, so its time is that route's; one untimed pass confirms it.
  const core::ConvShape route_shape = RouteShape(shape);
  const GradientRoute chosen =
      core::ResolveRoute(GradientRoute::kAuto, route_shape, layer.probes, settings.mode);
  settings.route = GradientRoute::kAuto;
  const torch::Tensor auto_grad = ForwardBackward(shape, exact.tensors, settings, options.seed);
  const torch::Tensor& chosen_grad = chosen == GradientRoute::kTap ? tap_grad : reconstruct_grad;

  result.route = std::string(core::GradientRouteName(chosen));
  result.time_tap_s = tap.seconds;
  result.time_reconstruct_s = reconstruct.seconds;
  result.time_xconv_s = chosen == GradientRoute::kTap ? tap.seconds : reconstruct.seconds;
  result.auto_matches_route = torch::equal(auto_grad, chosen_grad);
  result.grad_rel_err = RelativeError(auto_grad, exact.grad_weight);
  result.route_rel_diff = RelativeError(tap_grad, reconstruct_grad);
  const core::RouteCost cost = core::EstimateRouteCost(route_shape, layer.probes, settings.mode);
  result.model_tap_rel = cost.tap / cost.exact;
  result.model_reconstruct_rel = cost.reconstruct / cost.exact;
  result.bytes_xconv = KeptBytes(shape, exact.tensors, settings, options.seed, meter);
  return result;
}


std::string ResultJson(const LayerResult& r) {
  const LayerShape& s = r.layer.shape;
  return JsonObject()
      .String("case", r.layer.Name())
      .Int("dims", s.dims)
      .Int("batch", s.batch)
      .Int("channels", s.channels)
      .Int("spatial", s.Spatial())
      .String("size", s.SizeText())
      .Int("probes", r.layer.probes)
      .String("route", r.route)
      .Int("threads", r.threads)
      .Int("reps", r.reps)
      .Bool("input_grad", r.input_grad)
      .Number("time_exact_s", r.time_exact_s)
      .Number("time_xconv_s", r.time_xconv_s)
      .Number("time_tap_s", r.time_tap_s)
      .Number("time_reconstruct_s", r.time_reconstruct_s)
      .Int("bytes_exact", r.bytes_exact)
      .Int("bytes_xconv", r.bytes_xconv)
      .Number("grad_rel_err", r.grad_rel_err)
      .Number("route_rel_diff", r.route_rel_diff)
      .Bool("auto_matches_route", r.auto_matches_route)
      .Number("time_ratio", r.TimeRatio())
      .Number("bytes_ratio", r.BytesRatio())
      .Number("model_tap_rel", r.model_tap_rel)
      .Number("model_reconstruct_rel", r.model_reconstruct_rel)
      .Text();
}


std::string ResultsMarkdown(const std::vector<LayerResult>& results, int threads,
                            const LayerBenchOptions& options, const std::string& date) {
  std::string md = absl::StrCat(
      "# xtrain-bench layer\n\n",
      "threads: ", threads, " · date: ", date, " · goal: at B >= 64 and r <= C/4: XConv time ratio <= 0.9; ",
      "bytes ratio (r+1)/S (r probes and the channel mean)\n\n",
      "float32, kernel 3, stride 1, padding 1, C_in = C_out = C, independent Rademacher probes, centred sketch. ",
      "Time: median of ",
      options.reps, " forward+backward passes (", options.input_grad ? "dX, " : "no dX, ",
      "dW, db) after one warm-up; exact, tap and reconstruct take turns in each round. xconv = the route auto picks. ",
      "Bytes: what forward leaves for backward. Error: ||dW_xconv - dW||_F / ||dW||_F, one seed, ",
      "Gaussian inputs, G of a regression step towards a teacher layer. Goal column: only where B >= 64 and r <= C/4.\n\n",
      "| case | B | C | S | r | auto route | exact s | tap s | reconstruct s | xconv s | time ratio | "
      "bytes exact | bytes xconv | bytes ratio | (r+1)/S | grad rel err | goal |\n",
      "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
  for (const LayerResult& r : results) {
    const LayerShape& s = r.layer.shape;
    if (!r.measured) {
      absl::StrAppend(&md, "| ", r.layer.Name(), " | ", s.batch, " | ", s.channels, " | ", s.SizeText(),
                      " | ", r.layer.probes, " | ", r.note, " | | | | | | | | | | | |\n");
      continue;
    }
    std::string goal = "-";
    if (r.InGoalDomain()) {
      const bool time_ok = r.TimeRatio() <= 0.9;
      const bool bytes_ok = r.BytesAsExpected();
      goal = time_ok && bytes_ok ? "met" : absl::StrCat("missed (", time_ok ? "" : "time", !time_ok && !bytes_ok ? ", " : "",
                                                        bytes_ok ? "" : "bytes", ")");
    }
    absl::StrAppend(&md, absl::StrFormat(
        "| %s | %d | %d | %s | %d | %s | %.4f | %.4f | %.4f | %.4f | %.3f | %s | %s | %.5f | %.5f | %.3f | %s |\n",
        r.layer.Name(), s.batch, s.channels, s.SizeText(), r.layer.probes, r.route, r.time_exact_s,
        r.time_tap_s, r.time_reconstruct_s, r.time_xconv_s, r.TimeRatio(), FormatBytes(r.bytes_exact),
        FormatBytes(r.bytes_xconv), r.BytesRatio(), r.ProbeRatio(), r.grad_rel_err, goal));
  }
  return md;
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

void PrintResult(const LayerResult& r) {
  std::fprintf(stderr,
               "  exact %.4fs  tap %.4fs  reconstruct %.4fs  auto=%s  time ratio %.3f\n"
               "  bytes %lld -> %lld (ratio %.5f, (r+1)/S %.5f)  grad rel err %.4f  tap-vs-reconstruct %.1e%s\n",
               r.time_exact_s, r.time_tap_s, r.time_reconstruct_s, r.route.c_str(), r.TimeRatio(),
               static_cast<long long>(r.bytes_exact), static_cast<long long>(r.bytes_xconv),
               r.BytesRatio(), r.ProbeRatio(), r.grad_rel_err, r.route_rel_diff,
               r.auto_matches_route ? "" : "  (auto's dW differs from its route's!)");
}



}  // namespace

std::string LayerBenchUsage() {
  return "usage: xtrain-bench layer [flags]\n"
         "  --quick              small slice (B=64, C=64, 32x32, r in {8,16}; tiny 3-D case)\n"
         "  --threads N          intra-op threads (default: hardware threads)\n"
         "  --reps N             timed repetitions per measurement after one warm-up (default 3)\n"
         "  --no-input-grad      skip dX, as for a network's first layer (default: time dX too)\n"
         "  --json FILE          one JSON object per case and line, written as each case ends\n"
         "  --markdown FILE      markdown table, rewritten as each case ends\n"
         "  --filter TEXT        only cases whose name (e.g. 2d-b64-c64-32x32-r8) contains TEXT\n"
         "  --max-input-gib X    skip cases whose input tensor exceeds X GiB (default 3)\n"
         "  --seed N             seed of the data and the probes (default 1234)\n";
}

absl::StatusOr<LayerBenchOptions> ParseLayerBenchFlags(const std::vector<std::string>& args) {
  absl::StatusOr<std::vector<Flag>> flags =
      SplitFlags(args, {"--quick", "--no-input-grad", "--help", "-h"},
                 {"--threads", "--reps", "--seed", "--max-input-gib", "--json", "--markdown", "--filter"}, "layer");
  if (!flags.ok()) return flags.status();
  LayerBenchOptions options;
  for (const auto& [flag, value] : *flags) {
    absl::StatusOr<int64_t> n = int64_t{0};
    if (flag == "--threads" || flag == "--reps") n = ParseInt(flag, value, 1);
    if (flag == "--seed") n = ParseInt(flag, value, 0);
    if (!n.ok()) return n.status();
    if (flag == "--quick") options.quick = true;
    if (flag == "--no-input-grad") options.input_grad = false;
    if (flag == "--help" || flag == "-h") options.help = true;
    if (flag == "--threads") options.threads = static_cast<int>(*n);
    if (flag == "--reps") options.reps = static_cast<int>(*n);
    if (flag == "--seed") options.seed = static_cast<uint64_t>(*n);
    if (flag == "--max-input-gib") {
      absl::StatusOr<double> gib = ParsePositive(flag, value);
      if (!gib.ok()) return gib.status();
      options.max_input_gib = *gib;
    }
    if (flag == "--json") options.json_path = value;
    if (flag == "--markdown") options.markdown_path = value;
    if (flag == "--filter") options.filter = value;
  }
  return options;
}

absl::Status RunLayerBench(const std::vector<std::string>& args) {
  absl::StatusOr<LayerBenchOptions> parsed = ParseLayerBenchFlags(args);
  if (!parsed.ok()) return parsed.status();
  const LayerBenchOptions& options = *parsed;
  if (options.help) {
    std::fputs(LayerBenchUsage().c_str(), stdout);
    return absl::OkStatus();
  }
  // Installed before any tensor exists: every byte of the run goes through the meter.
  core::CpuMemoryMeter& meter = core::CpuMemoryMeter::Install();

  std::vector<LayerCase> cases;
  for (const LayerCase& layer : BuildCases(options.quick)) {
    if (layer.Name().find(options.filter) != std::string::npos) cases.push_back(layer);
  }
  if (cases.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("no case matches --filter '", options.filter, "'"));
  }
  const int hardware = static_cast<int>(std::thread::hardware_concurrency());
  const int threads = options.threads > 0 ? options.threads : std::max(hardware, 1);
  torch::set_num_threads(threads);
  std::fprintf(stderr, "xtrain-bench layer: threads %d (torch::get_num_threads() = %d), reps %d%s\n",
               threads, torch::get_num_threads(), options.reps,
               options.input_grad ? "" : ", no input gradient");

  std::ofstream json;
  if (!options.json_path.empty()) {
    json.open(options.json_path, std::ios::trunc);
    if (!json) return absl::UnavailableError(absl::StrCat("cannot open ", options.json_path));
  }
  const std::string date = Now("%Y-%m-%d %H:%M %Z");
  const auto run_start = std::chrono::steady_clock::now();
  const double cap_bytes = options.max_input_gib * kGiB;

  std::vector<LayerResult> results;
  std::optional<ExactRun> exact;
  for (size_t i = 0; i < cases.size(); ++i) {
    const LayerCase& layer = cases[i];
    const LayerShape& shape = layer.shape;
    std::fprintf(stderr, "[%zu/%zu] %s (input %s)\n", i + 1, cases.size(), layer.Name().c_str(),
                 FormatBytes(shape.InputBytes()).c_str());
    LayerResult result;
    result.layer = layer;
    if (static_cast<double>(shape.InputBytes()) > cap_bytes) {
      result.note = absl::StrFormat("skipped: input %s > --max-input-gib %g",
                                    FormatBytes(shape.InputBytes()), options.max_input_gib);
      std::fprintf(stderr, "  %s\n", result.note.c_str());
    } else {
      try {
        if (!exact || !(exact->shape == shape)) {
          exact.reset();  // free the previous shape's tensors first
          exact = MeasureExact(shape, options, meter);
        }
        result = MeasureXConv(layer, *exact, options, meter);
        PrintResult(result);
      } catch (const std::exception& e) {
        exact.reset();
        result.note = "failed: see stderr";
        std::fprintf(stderr, "  failed: %s\n", e.what());
      }
    }
    results.push_back(result);
    if (json.is_open() && result.measured) {
      json << ResultJson(result) << '\n';
      json.flush();
    }
    if (!options.markdown_path.empty()) {
      absl::Status written =
          WriteFile(options.markdown_path, ResultsMarkdown(results, threads, options, date));
      if (!written.ok()) return written;
    }
  }
  if (json.is_open() && !json) {
    return absl::UnavailableError(absl::StrCat("writing ", options.json_path, " failed"));
  }
  std::fprintf(stderr, "done: %zu cases in %.1f s\n", cases.size(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count());
  return absl::OkStatus();
}

}  // namespace xtrain::bench
