#include "core/memory/memory_model.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <climits>
#include <cmath>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <ATen/record_function.h>

#include "absl/strings/str_cat.h"
#include "core/memory/autograd_graph.h"
#include "core/memory/cpu_memory_meter.h"
#ifdef XTRAIN_HAVE_CUDA_METER
#include "core/memory/cuda_memory_meter.h"
#endif
#include "core/util/job_slot.h"
#include "core/util/memory_phase.h"
#include "core/util/status_macros.h"
#include "core/util/torch_guard.h"
#include "core/xconv/convert.h"
#include "core/xconv/index_max_pool.h"
#include "core/xconv/modules.h"

namespace xtrain::core {
namespace {

namespace ag = torch::autograd;

// Live bytes before one backward node and the peak of each of its phases until the next node
// starts (the last phase covers the release of its saved tensors and the accumulation of its
// outputs). Most nodes have one phase; XConv's backward marks several (memory_phase.h).
struct NodeRecord {
  ag::Node* node = nullptr;
  int64_t before = 0;
  std::vector<int64_t> peaks;
};

// Collects NodeRecords in execution order; the meter's peak is reset at each node and phase.
class Recorder : public MemoryPhaseObserver {
 public:
  Recorder(MemoryMeter& meter, int64_t base) : meter_(meter), base_(base) {}
  void Enter(ag::Node* node) {
    Close();
    records_.push_back({node, meter_.current_bytes() - base_, {}});
    meter_.ResetPeak();
  }
  void OnPhase() override {
    if (records_.empty()) return;
    records_.back().peaks.push_back(meter_.peak_bytes() - base_);
    meter_.ResetPeak();
  }
  void Close() {
    if (!records_.empty()) records_.back().peaks.push_back(meter_.peak_bytes() - base_);
  }
  const std::vector<NodeRecord>& records() const { return records_; }

 private:
  MemoryMeter& meter_;
  int64_t base_;
  std::vector<NodeRecord> records_;
};

// One forward op that recorded an autograd node: live bytes after it, peak since the previous one.
struct ForwardRecord {
  const void* node = nullptr;
  int64_t live = 0;
  int64_t peak = 0;
};

// Records the forward op by op: LibTorch's op callbacks (RecordFunction) for library ops, and
// MarkForwardOutput for our custom functions. Ops whose outputs carry no new autograd node (inside
// a custom function, or without grad) fold into the next record.
class ForwardRecorder : public MemoryPhaseObserver {
 public:
  ForwardRecorder(MemoryMeter& meter, int64_t base) : meter_(meter), base_(base) {}
  void Output(const torch::Tensor& t) {
    if (!t.defined() || !t.requires_grad() || !t.grad_fn()) return;
    const std::shared_ptr<torch::autograd::Node>& grad_fn = t.grad_fn();
    const void* node = grad_fn.get();
    auto [it, inserted] = seen_.try_emplace(node, Seen{grad_fn, records_.size()});
    if (!inserted) {
      if (!it->second.node.expired()) return;
      // A node that died inside the forward (an op's temporary) and whose address a new node took:
      // the old record is no node of the graph (its peak carries into the next one).
      records_[it->second.record].node = nullptr;
      it->second = Seen{grad_fn, records_.size()};
    }
    records_.push_back({node, meter_.current_bytes() - base_, meter_.peak_bytes() - base_});
    meter_.ResetPeak();
  }
  void OnPhase() override {}
  void OnForwardOutput(const torch::Tensor& output) override { Output(output); }
  const std::vector<ForwardRecord>& records() const { return records_; }
  int64_t pending_peak() const { return meter_.peak_bytes() - base_; }

 private:
  MemoryMeter& meter_;
  int64_t base_;
  std::vector<ForwardRecord> records_;
  // Nodes recorded, weakly held (a strong reference would keep their saved tensors alive).
  struct Seen {
    std::weak_ptr<torch::autograd::Node> node;
    size_t record = 0;
  };
  std::unordered_map<const void*, Seen> seen_;
};

thread_local ForwardRecorder* active_forward = nullptr;

std::unique_ptr<at::ObserverContext> OnOpStart(const at::RecordFunction&) { return nullptr; }

void OnOpEnd(const at::RecordFunction& fn, at::ObserverContext*) {
  if (active_forward == nullptr) return;
  for (const c10::IValue& value : fn.outputs()) {
    if (value.isTensor()) {
      active_forward->Output(value.toTensor());
    } else if (value.isTensorList()) {
      for (const torch::Tensor& t : value.toTensorVector()) active_forward->Output(t);
    }
  }
}

// Installs the op callback and the custom-function observer for one forward.
class ForwardScope {
 public:
  explicit ForwardScope(ForwardRecorder* recorder) : phases_(recorder) {
    active_forward = recorder;
    handle_ = at::addThreadLocalCallback(at::RecordFunctionCallback(&OnOpStart, &OnOpEnd).needsOutputs(true));
  }
  ~ForwardScope() {
    at::removeCallback(handle_);
    active_forward = nullptr;
  }

 private:
  MemoryPhaseScope phases_;
  at::CallbackHandle handle_;
};

class RecordHook : public ag::FunctionPreHook {
 public:
  RecordHook(Recorder* recorder, ag::Node* node) : recorder_(recorder), node_(node) {}
  ag::variable_list operator()(const ag::variable_list& grads) override {
    recorder_->Enter(node_);
    return grads;
  }

 private:
  Recorder* recorder_;
  ag::Node* node_;
};

// One calibration step (the second of two: steady state) at one batch and configuration. Bytes
// are everything the job allocated: model, gradients, optimizer state, batch, activations.
struct StepRecord {
  int64_t forward_peak = 0;
  int64_t forward_end = 0;
  int64_t optimizer_peak = 0;
  std::vector<GraphNode> nodes;  // execution order (node pointers dropped)
  std::vector<int64_t> before;
  std::vector<std::vector<int64_t>> peaks;  // per node, per phase
  // The forward op by op: the node it created (index into `nodes`), live bytes after, peak during.
  int64_t forward_start = 0;
  std::vector<int> forward_nodes;
  std::vector<int64_t> forward_live, forward_peak_at;
  std::unordered_set<const void*> fixed;  // parameters, buffers, the batch: never a plan's to free
  std::unordered_map<const void*, std::string> parameter_names;
  int64_t parameter_bytes = 0;
  int64_t buffer_bytes = 0;  // the model's buffers (BatchNorm statistics, XConv's seed and step)
  std::map<std::string, std::string> left_exact;  // convs Convert left exact, and why
};

struct Config {
  bool convert = false;
  XConvSettings settings;
  const ConvertOptions* plan = nullptr;  // per-layer conversion instead of `settings` everywhere
};

// Moves a module to the job's device and casts its floating parameters and buffers to `dtype`;
// integer buffers (XConv's seed and step counters, BatchNorm's batch count) keep their type.
void ToJob(torch::nn::Module& module, const torch::Device& device, torch::ScalarType dtype) {
  module.to(device);
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) {
    if (p.is_floating_point() && p.scalar_type() != dtype) p.set_data(p.data().to(dtype));
  }
  for (auto& b : module.buffers()) {
    if (b.is_floating_point() && b.scalar_type() != dtype) b.set_data(b.to(dtype));
  }
}

// The meter of the job's device.
absl::StatusOr<std::unique_ptr<MemoryMeter>> MeterFor(const torch::Device& device) {
  if (device.is_cpu()) {
    struct CpuView final : MemoryMeter {
      CpuMemoryMeter& cpu = CpuMemoryMeter::Install();
      int64_t current_bytes() const override { return cpu.current_bytes(); }
      int64_t peak_bytes() const override { return cpu.peak_bytes(); }
      void ResetPeak() override { cpu.ResetPeak(); }
    };
    return std::unique_ptr<MemoryMeter>(std::make_unique<CpuView>());
  }
#ifdef XTRAIN_HAVE_CUDA_METER
  if (device.is_cuda()) {
    absl::StatusOr<CudaMemoryMeter> cuda = CudaMemoryMeter::ForDevice(device.has_index() ? device.index() : 0);
    if (!cuda.ok()) return cuda.status();
    return std::unique_ptr<MemoryMeter>(std::make_unique<CudaMemoryMeter>(*cuda));
  }
#endif
  return absl::UnimplementedError(absl::StrCat("memory model: no meter for device ", device.str(),
                                               " in this build (the CUDA meter needs a CUDA LibTorch)"));
}

// Random targets on the CPU generator, moved to the job's device.
torch::Tensor MakeTarget(LossKind loss, std::vector<int64_t> sizes, torch::ScalarType dtype,
                         at::Generator& gen, const torch::Device& device) {
  if (loss == LossKind::kMse) return torch::randn(sizes, gen, torch::TensorOptions().dtype(dtype)).to(device);
  const int64_t classes = sizes.size() > 1 ? sizes[1] : 1;
  if (sizes.size() > 1) sizes.erase(sizes.begin() + 1);
  return torch::randint(0, classes, sizes, gen, torch::TensorOptions().dtype(torch::kLong)).to(device);
}

torch::Tensor Loss(LossKind loss, const torch::Tensor& output, const torch::Tensor& target) {
  if (loss == LossKind::kMse) return torch::mse_loss(output, target);
  return torch::nn::functional::cross_entropy(output, target);
}

absl::StatusOr<StepRecord> RunStep(const ModelFactory& factory, const ForwardFn& forward,
                                   const TrainingStep& step, int64_t batch, const Config& config) {
  absl::StatusOr<std::unique_ptr<MemoryMeter>> made_meter = MeterFor(step.device);
  if (!made_meter.ok()) return made_meter.status();
  MemoryMeter& meter = **made_meter;
  const int64_t base = meter.current_bytes();
  StepRecord record;
  XTRAIN_RETURN_IF_ERROR(GuardTorch("memory model: a calibration step failed", [&]() -> absl::Status {
    absl::StatusOr<std::shared_ptr<torch::nn::Module>> made = factory();
    if (!made.ok()) return made.status();
    std::shared_ptr<torch::nn::Module> model = *std::move(made);
    if (config.convert) {
      ConvertOptions convert;
      convert.settings = config.settings;
      convert.seed = 0x5eed;
      convert.unsupported_stay_exact = true;  // such convs are exact in every plan
      absl::StatusOr<ConvertResult> converted = Convert(model, config.plan ? *config.plan : convert);
      if (!converted.ok()) return converted.status();
      model = converted->module;
      record.left_exact = converted->left_exact;
    }
    ToJob(*model, step.device, step.dtype);
    model->train();
    std::unique_ptr<torch::optim::Optimizer> optimizer =
        MakeOptimizer(step.optimizer, model->parameters(), 1e-4);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
    std::vector<int64_t> input_sizes = {batch};
    input_sizes.insert(input_sizes.end(), step.sample_sizes.begin(), step.sample_sizes.end());
    const auto options = torch::TensorOptions().dtype(step.dtype);
    std::vector<int64_t> output_sizes;
    for (int s = 0; s < 2; ++s) {
      const bool measured = s == 1;
      optimizer->zero_grad();
      torch::Tensor input = torch::randn(input_sizes, gen, options).to(step.device);
      torch::Tensor target;
      if (measured) target = MakeTarget(step.loss, output_sizes, step.dtype, gen, step.device);
      meter.ResetPeak();
      ForwardRecorder forward_recorder(meter, base);
      if (measured) record.forward_start = meter.current_bytes() - base;
      torch::Tensor output, loss;
      {
        std::optional<ForwardScope> scope;
        if (measured) scope.emplace(&forward_recorder);
        output = forward(*model, input);
        if (!measured) {
          output_sizes = output.sizes().vec();
          target = MakeTarget(step.loss, output_sizes, step.dtype, gen, step.device);
        }
        loss = Loss(step.loss, output, target);
      }
      Recorder recorder(meter, base);
      std::vector<GraphNode> graph;
      if (measured) {
        record.forward_peak = meter.peak_bytes() - base;
        record.forward_end = meter.current_bytes() - base;
        graph = CollectGraph(loss);
        for (GraphNode& node : graph) {
          node.node->add_pre_hook(std::make_unique<RecordHook>(&recorder, node.node.get()));
        }
        for (const auto& p : model->named_parameters()) {
          record.fixed.insert(StorageKey(p.value()));
          record.parameter_names[StorageKey(p.value())] = p.key();
          record.parameter_bytes += static_cast<int64_t>(p.value().nbytes());
        }
        for (const auto& b : model->buffers()) {
          record.fixed.insert(StorageKey(b));
          record.buffer_bytes += static_cast<int64_t>(b.nbytes());
        }
        record.fixed.insert(StorageKey(input));
        record.fixed.insert(StorageKey(target));
      }
      meter.ResetPeak();
      {
        MemoryPhaseScope phases(measured ? &recorder : nullptr);
        loss.backward();
      }
      recorder.Close();
      output = torch::Tensor();
      loss = torch::Tensor();
      if (measured) {
        std::unordered_map<ag::Node*, size_t> index;
        for (size_t i = 0; i < graph.size(); ++i) index[graph[i].node.get()] = i;
        std::unordered_map<const void*, int> position;
        for (const NodeRecord& r : recorder.records()) {
          auto it = index.find(r.node);
          if (it == index.end()) continue;
          GraphNode node = graph[it->second];
          node.node.reset();
          position[node.self] = static_cast<int>(record.nodes.size());
          record.nodes.push_back(std::move(node));
          record.before.push_back(r.before);
          record.peaks.push_back(r.peaks);
        }
        // Forward records of nodes the backward ran; others fold their peak into the next one.
        int64_t carried = 0;
        for (const ForwardRecord& f : forward_recorder.records()) {
          carried = std::max(carried, f.peak);
          auto it = position.find(f.node);
          if (it == position.end()) continue;
          record.forward_nodes.push_back(it->second);
          record.forward_live.push_back(f.live);
          record.forward_peak_at.push_back(carried);
          carried = 0;
        }
        graph.clear();
      }
      meter.ResetPeak();
      optimizer->step();
      if (measured) record.optimizer_peak = meter.peak_bytes() - base;
    }
    return absl::OkStatus();
  }));
  return record;
}

// LibTorch picks the CPU convolution kernel by batch and thread count (mkldnn unless 1x1 unstrided
// at batch < 16 on one thread); with two threads or more the choice is the same at every batch > 1,
// so calibration runs with at least two and extrapolates to the job's batch.
class AtLeastTwoThreads {
 public:
  AtLeastTwoThreads() : saved_(at::get_num_threads()) {
    if (saved_ < 2) at::set_num_threads(2);
  }
  ~AtLeastTwoThreads() {
    if (saved_ < 2) at::set_num_threads(saved_);
  }

 private:
  int saved_;
};

bool AnyXConv(const std::vector<LayerChoice>& choices) {
  return std::any_of(choices.begin(), choices.end(), [](const LayerChoice& c) { return c.xconv; });
}

bool IsXConvNode(const std::string& type) { return type.find("XConvFunction") != std::string::npos; }
bool IsMaskReluNode(const std::string& type) { return type.find("MaskRelu") != std::string::npos; }
bool IsIndexMaxPoolNode(const std::string& type) { return type.find("IndexMaxPool") != std::string::npos; }
bool IsMaxPoolNode(const std::string& type) {
  return type == "MaxPool2DWithIndicesBackward0" || type == "MaxPool3DWithIndicesBackward0";
}

// Storages kept by a convertible node, identified across runs by (first keeper, slot in its list).
struct StorageSite {
  std::vector<int> keepers;
  int64_t bytes = 0;
  const void* producer = nullptr;
  uint32_t output_nr = 0;
};

std::map<std::pair<int, int>, StorageSite> TrackedStorages(const StepRecord& run,
                                                           const std::vector<bool>& convertible) {
  std::unordered_map<const void*, std::pair<int, int>> first;
  std::map<std::pair<int, int>, StorageSite> sites;
  for (int n = 0; n < static_cast<int>(run.nodes.size()); ++n) {
    const auto& saved = run.nodes[n].saved;
    for (int slot = 0; slot < static_cast<int>(saved.size()); ++slot) {
      if (saved[slot].key == nullptr || run.fixed.count(saved[slot].key)) continue;
      auto [it, inserted] = first.emplace(saved[slot].key, std::make_pair(n, slot));
      StorageSite& site = sites[it->second];
      if (inserted) {
        site.bytes = saved[slot].bytes;
        site.producer = saved[slot].producer;
        site.output_nr = saved[slot].output_nr;
      }
      if (site.keepers.empty() || site.keepers.back() != n) site.keepers.push_back(n);
    }
  }
  for (auto it = sites.begin(); it != sites.end();) {
    const bool tracked = std::any_of(it->second.keepers.begin(), it->second.keepers.end(),
                                     [&](int k) { return convertible[k]; });
    it = tracked ? std::next(it) : sites.erase(it);
  }
  return sites;
}

// The last forward step that reads the output `output_nr` of `producer` (directly or through
// views), or the producer's step if nothing reads it; INT_MAX if a reader or the producer has no
// forward step (then the storage is never assumed dead).
int LastReader(const StepRecord& run, const std::vector<int>& node_forward, const void* producer,
               uint32_t output_nr) {
  if (producer == nullptr) return INT_MAX;
  int last = -1;
  std::vector<std::pair<const void*, int>> frontier = {{producer, static_cast<int>(output_nr)}};
  std::unordered_set<const void*> visited;
  while (!frontier.empty()) {
    auto [node, nr] = frontier.back();
    frontier.pop_back();
    for (size_t n = 0; n < run.nodes.size(); ++n) {
      for (const auto& [input, input_nr] : run.nodes[n].inputs) {
        if (input != node || (nr >= 0 && static_cast<int>(input_nr) != nr)) continue;
        if (node_forward[n] < 0) return INT_MAX;
        last = std::max(last, node_forward[n]);
        if (IsViewNode(run.nodes[n].type) && visited.insert(run.nodes[n].self).second) {
          frontier.emplace_back(run.nodes[n].self, -1);
        }
      }
    }
  }
  if (last >= 0) return last;
  // Read by no forward op (max pooling's indices): dead, under a plan that drops its keepers,
  // from the op that makes it.
  for (size_t n = 0; n < run.nodes.size(); ++n) {
    if (run.nodes[n].self == producer && node_forward[n] >= 0) return node_forward[n];
  }
  return INT_MAX;
}

std::string ModuleOfParameter(const std::string& name) {
  const size_t dot = name.rfind('.');
  return dot == std::string::npos ? "" : name.substr(0, dot);
}

}  // namespace

torch::Tensor SequentialForward(torch::nn::Module& model, const torch::Tensor& input) {
  auto* sequential = model.as<torch::nn::Sequential>();
  TORCH_CHECK(sequential != nullptr, "SequentialForward needs a torch::nn::Sequential root");
  return sequential->forward(input);
}

int64_t Affine::At(int64_t batch) const {
  return static_cast<int64_t>(std::llround(intercept + slope * static_cast<double>(batch)));
}

Affine Affine::Through(int64_t b1, int64_t v1, int64_t b2, int64_t v2) {
  Affine line;
  line.slope = static_cast<double>(v2 - v1) / static_cast<double>(b2 - b1);
  line.intercept = static_cast<double>(v1) - line.slope * static_cast<double>(b1);
  return line;
}

int64_t PhaseLines::At(int64_t batch) const {
  int64_t most = 0;
  for (const Affine& phase : phases) most = std::max(most, phase.At(batch));
  return most;
}

PhaseLines PhaseLines::Through(int64_t b1, int64_t before1, const std::vector<int64_t>& peaks1, int64_t b2,
                               int64_t before2, const std::vector<int64_t>& peaks2) {
  PhaseLines lines;
  if (peaks1.size() == peaks2.size()) {
    for (size_t k = 0; k < peaks1.size(); ++k) {
      lines.phases.push_back(Affine::Through(b1, peaks1[k] - before1, b2, peaks2[k] - before2));
    }
  } else {
    const int64_t p1 = peaks1.empty() ? before1 : *std::max_element(peaks1.begin(), peaks1.end());
    const int64_t p2 = peaks2.empty() ? before2 : *std::max_element(peaks2.begin(), peaks2.end());
    lines.phases.push_back(Affine::Through(b1, p1 - before1, b2, p2 - before2));
  }
  return lines;
}

int64_t PhaseLines::Interpolate(const PhaseLines& low, const PhaseLines& high, double t, int64_t batch) {
  auto mix = [t](double a, double b) { return static_cast<int64_t>(std::llround(a + (b - a) * t)); };
  if (low.phases.size() != high.phases.size()) {
    return mix(static_cast<double>(low.At(batch)), static_cast<double>(high.At(batch)));
  }
  int64_t most = 0;
  for (size_t k = 0; k < low.phases.size(); ++k) {
    most = std::max(most, mix(static_cast<double>(low.phases[k].At(batch)),
                              static_cast<double>(high.phases[k].At(batch))));
  }
  return most;
}

int64_t Excess::At(int64_t batch) const {
  const size_t n = batches.size();
  if (n == 0) return 0;
  if (n == 1) return std::max<int64_t>(bytes[0], 0);
  size_t i = static_cast<size_t>(std::lower_bound(batches.begin(), batches.end(), batch) - batches.begin());
  if (i < n && batches[i] == batch) return std::max<int64_t>(bytes[i], 0);
  i = std::clamp<size_t>(i, 1, n - 1);  // the segment around `batch`, or the first / last one
  const double t = static_cast<double>(batch - batches[i - 1]) / static_cast<double>(batches[i] - batches[i - 1]);
  const double value = static_cast<double>(bytes[i - 1]) + t * static_cast<double>(bytes[i] - bytes[i - 1]);
  return std::max<int64_t>(std::llround(value), 0);
}

Excess Excess::Over(const std::vector<int64_t>& batches, const std::vector<int64_t>& measured, int64_t b1,
                    int64_t b2) {
  auto at = [&](int64_t b) {
    return measured[static_cast<size_t>(std::find(batches.begin(), batches.end(), b) - batches.begin())];
  };
  const Affine line = Affine::Through(b1, at(b1), b2, at(b2));
  Excess excess;
  excess.batches = batches;
  for (size_t i = 0; i < batches.size(); ++i) excess.bytes.push_back(measured[i] - line.At(batches[i]));
  return excess;
}

Excess Excess::OverPhases(const std::vector<int64_t>& batches, const std::vector<std::vector<int64_t>>& phases,
                          int64_t b1, int64_t b2) {
  auto at = [&](int64_t b) {
    return phases[static_cast<size_t>(std::find(batches.begin(), batches.end(), b) - batches.begin())];
  };
  // Phase by phase, as the model fits a node's working set (PhaseLines).
  const PhaseLines lines = PhaseLines::Through(b1, 0, at(b1), b2, 0, at(b2));
  Excess excess;
  excess.batches = batches;
  for (size_t i = 0; i < batches.size(); ++i) {
    const int64_t most = phases[i].empty() ? 0 : *std::max_element(phases[i].begin(), phases[i].end());
    excess.bytes.push_back(most - lines.At(batches[i]));
  }
  return excess;
}

int64_t Excess::Interpolate(const Excess& low, const Excess& high, double t, int64_t batch) {
  const double a = static_cast<double>(low.At(batch));
  return std::llround(a + (static_cast<double>(high.At(batch)) - a) * t);
}

int64_t ConvLayer::spatial() const {
  int64_t s = 1;
  for (size_t i = 1; i < sample_sizes.size(); ++i) s *= sample_sizes[i];
  return s;
}

int64_t ConvLayer::kernel_volume() const {
  int64_t k = 1;
  for (size_t i = 2; i < weight_sizes.size(); ++i) k *= weight_sizes[i];
  return k;
}

int64_t ConvLayer::parameters() const {
  int64_t p = 1;
  for (int64_t v : weight_sizes) p *= v;
  return p;
}

// The calibration runs a model is fitted to: steady-state steps at two batches in the exact
// configuration, with lean layers alone, and converted at each calibration probe count and mode.
struct MemoryModel::Calibration {
  int64_t b1 = 0, b2 = 0;
  StepRecord exact1, exact2, masks1, masks2;
  std::vector<std::vector<StepRecord>> converted;  // [mode][2 * point + batch index]
  std::vector<bool> convertible;                    // per node: a plan can swap it (ClassifyNodes)
  std::vector<bool> layer_input_grad;               // per layer: its input gets a gradient (ClassifyNodes)
};

namespace {

absl::Status ValidateBuild(const TrainingStep& step, const MemoryModelOptions& options) {
  if (step.sample_sizes.size() < 2) {
    return absl::InvalidArgumentError(
        "memory model: sample_sizes must list channels and at least one spatial size");
  }
  if (step.batch < 1 || options.calibration_batch < 1) {
    return absl::InvalidArgumentError("memory model: batch and calibration_batch must be >= 1");
  }
  const std::vector<int64_t>& points = options.calibration_probes;
  if (points.size() < 2 || points[0] < 1 || !std::is_sorted(points.begin(), points.end()) ||
      std::adjacent_find(points.begin(), points.end()) != points.end()) {
    return absl::InvalidArgumentError(
        "memory model: calibration_probes needs at least two increasing probe counts >= 1");
  }
  if (options.modes.empty()) return absl::InvalidArgumentError("memory model: allow at least one mode");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<MemoryModel> MemoryModel::Build(const ModelFactory& factory, const ForwardFn& forward,
                                               const TrainingStep& step,
                                               const MemoryModelOptions& options) {
  // One job per process (core/util/job_slot.h): calibration installs the phase observer and reads
  // the process-wide CPU meter. A Trainer's own Build runs as its nested claim.
  absl::StatusOr<JobSlot> slot = JobSlot::Acquire("a MemoryModel::Build");
  if (!slot.ok()) return slot.status();
  if (absl::Status status = ValidateBuild(step, options); !status.ok()) return status;
  AtLeastTwoThreads threads;
  return GuardTorch("memory model", [&]() -> absl::StatusOr<MemoryModel> {
    XTRAIN_ASSIGN_OR_RETURN(Calibration runs, Calibrate(factory, forward, step, options));
    MemoryModel model;
    model.step_ = step;
    model.options_ = options;
    XTRAIN_RETURN_IF_ERROR(model.ClassifyNodes(runs));
    XTRAIN_RETURN_IF_ERROR(model.ProbeLayers(factory, runs));
    XTRAIN_RETURN_IF_ERROR(model.FitForward(runs));
    XTRAIN_RETURN_IF_ERROR(model.FitStorages(runs));
    model.FitNodes(runs);
    model.CheckCalibration(runs);
    return model;
  });
}

absl::StatusOr<MemoryModel::Calibration> MemoryModel::Calibrate(const ModelFactory& factory,
                                                                const ForwardFn& forward,
                                                                const TrainingStep& step,
                                                                const MemoryModelOptions& options) {
  Calibration runs;
  runs.b1 = options.calibration_batch;
  runs.b2 = 2 * runs.b1;
  // The exact configuration at two batches.
  auto exact1 = RunStep(factory, forward, step, runs.b1, {});
  if (!exact1.ok()) return exact1.status();
  auto exact2 = RunStep(factory, forward, step, runs.b2, {});
  if (!exact2.ok()) return exact2.status();
  // Exact convolutions with mask ReLUs: what the unconverted layers of a mixed plan run as.
  Config masks_only;
  masks_only.convert = true;
  masks_only.settings.probes = 0;
  auto masks1 = RunStep(factory, forward, step, runs.b1, masks_only);
  if (!masks1.ok()) return masks1.status();
  auto masks2 = RunStep(factory, forward, step, runs.b2, masks_only);
  if (!masks2.ok()) return masks2.status();
  const size_t count = exact1->nodes.size();
  for (const auto* run : {&*exact2, &*masks1, &*masks2}) {
    if (run->nodes.size() != count) {
      return absl::FailedPreconditionError(
          "memory model: the autograd graph changes with the batch size; the model cannot be "
          "extrapolated");
    }
  }
  runs.exact1 = *std::move(exact1);
  runs.exact2 = *std::move(exact2);
  runs.masks1 = *std::move(masks1);
  runs.masks2 = *std::move(masks2);

  // Converted configurations: [mode][2 * point + batch index].
  for (ProbeMode mode : options.modes) {
    std::vector<StepRecord> per_mode;
    for (int64_t probes : options.calibration_probes) {
      Config config;
      config.convert = true;
      config.settings.probes = probes;
      config.settings.mode = mode;
      config.settings.center = options.center;
      config.settings.route =
          mode == ProbeMode::kOrthogonal ? GradientRoute::kReconstruct : GradientRoute::kTap;
      for (int64_t b : {runs.b1, runs.b2}) {
        auto run = RunStep(factory, forward, step, b, config);
        if (!run.ok()) return run.status();
        if (run->nodes.size() != count) {
          return absl::InternalError(absl::StrCat(
              "memory model: the converted model runs ", run->nodes.size(),
              " backward nodes against ", count, " exact; a custom module may call functional ops"));
        }
        per_mode.push_back(*std::move(run));
      }
    }
    runs.converted.push_back(std::move(per_mode));
  }
  return runs;
}

absl::Status MemoryModel::ClassifyNodes(Calibration& runs) {
  const StepRecord& exact1 = runs.exact1;
  const size_t count = exact1.nodes.size();
  parameter_bytes_ = exact1.parameter_bytes;
  lean_buffer_bytes_ = runs.masks1.buffer_bytes - exact1.buffer_bytes;
  optimizer_state_bytes_ = OptimizerStateMultiple(step_.optimizer) * exact1.parameter_bytes;
  nodes_.resize(count);
  // Which nodes a plan converts, and the conv layers.
  runs.convertible.assign(count, false);
  const StepRecord& low = runs.converted[0][0];
  for (size_t n = 0; n < count; ++n) {
    const GraphNode& exact = exact1.nodes[n];
    const std::string& other = low.nodes[n].type;
    Node& node = nodes_[n];
    node.type = exact.type;
    // A convolution whose weight is no parameter (a weight computed in forward) is an ordinary node
    // that no plan changes, like any other op.
    const bool weight_is_parameter = exact1.parameter_names.count(exact.weight_key) > 0;
    if (exact.type == "ConvolutionBackward0" && !weight_is_parameter && other != exact.type) {
      return absl::InternalError(absl::StrCat("memory model: backward node ", n,
                                              " converted a convolution whose weight is not a parameter"));
    }
    if (exact.type == "ConvolutionBackward0" && weight_is_parameter && (IsXConvNode(other) || other == exact.type)) {
      // A conv layer; one that stays a torch conv in the converted runs is exact in every plan.
      runs.convertible[n] = IsXConvNode(other);
      ConvLayer layer;
      auto name = exact1.parameter_names.find(exact.weight_key);
      layer.path = ModuleOfParameter(name->second);
      layer.sample_sizes.assign(exact.input_sizes.begin() + 1, exact.input_sizes.end());
      layer.weight_sizes = exact.weight_sizes;
      layer.groups = exact.groups;
      if (!runs.convertible[n]) {
        auto why = low.left_exact.find(layer.path);
        layer.exact_reason = why != low.left_exact.end() ? why->second
                             : exact.transposed
                                 ? "transposed convolution: XConv runs forward convolutions only"
                                 : "not a Conv2d/Conv3d module that Convert swaps";
      }
      node.layer = static_cast<int>(layers_.size());
      layers_.push_back(layer);
      layer_node_.push_back(static_cast<int>(n));
    } else if ((exact.type == "ReluBackward0" && IsMaskReluNode(other)) ||
               (IsMaxPoolNode(exact.type) && IsIndexMaxPoolNode(other))) {
      runs.convertible[n] = true;
      node.lean = true;
      node.lean_numel_per_sample = exact.output_numel / runs.b1;
      // A mask bit per element; a window offset per pooled element.
      node.lean_bits = exact.type == "ReluBackward0" ? 1 : OffsetBits(exact.pool_window);
    } else if (exact.type != other) {
      return absl::InternalError(absl::StrCat("memory model: backward node ", n, " is ", exact.type,
                                              " exact but ", other, " converted"));
    }
    if (!exact.known) unknown_nodes_.push_back(exact.type);
  }

  // Layers in forward order (they were found in backward order).
  std::reverse(layers_.begin(), layers_.end());
  std::reverse(layer_node_.begin(), layer_node_.end());
  const int layer_count = static_cast<int>(layers_.size());
  for (Node& node : nodes_) {
    if (node.layer >= 0) node.layer = layer_count - 1 - node.layer;
  }
  for (int n : layer_node_) runs.layer_input_grad.push_back(exact1.nodes[n].input_requires_grad);
  return absl::OkStatus();
}

absl::Status MemoryModel::FitForward(const Calibration& runs) {
  const StepRecord& exact1 = runs.exact1;
  const int64_t b1 = runs.b1, b2 = runs.b2;
  // The forward op by op, in every configuration.
  for (const StepRecord* run : {&runs.exact2, &runs.masks1, &runs.masks2}) {
    if (run->forward_nodes != exact1.forward_nodes) {
      return absl::InternalError("memory model: the forward ops differ between calibration runs");
    }
  }
  for (const auto& per_mode : runs.converted) {
    for (const StepRecord& run : per_mode) {
      if (run.forward_nodes != exact1.forward_nodes) {
        return absl::InternalError("memory model: the converted forward records other ops than the exact one");
      }
    }
  }
  node_forward_.assign(nodes_.size(), -1);
  auto live_before = [](const StepRecord& run, size_t f) {
    return f == 0 ? run.forward_start : run.forward_live[f - 1];
  };
  auto forward_lines = [&](const StepRecord& r1, const StepRecord& r2, size_t f) {
    return PhaseLines::Through(b1, live_before(r1, f), {r1.forward_peak_at[f]}, b2, live_before(r2, f),
                               {r2.forward_peak_at[f]});
  };
  for (size_t f = 0; f < exact1.forward_nodes.size(); ++f) {
    ForwardStep fs;
    fs.node = exact1.forward_nodes[f];
    node_forward_[fs.node] = static_cast<int>(f);
    fs.live_before = Affine::Through(b1, live_before(exact1, f), b2, live_before(runs.exact2, f));
    fs.live_before_masks = Affine::Through(b1, live_before(runs.masks1, f), b2, live_before(runs.masks2, f));
    fs.transient_exact = forward_lines(exact1, runs.exact2, f);
    fs.transient_masks = forward_lines(runs.masks1, runs.masks2, f);
    for (const auto& per_mode : runs.converted) {
      std::vector<PhaseLines> per_point;
      for (size_t i = 0; i < options_.calibration_probes.size(); ++i) {
        per_point.push_back(forward_lines(per_mode[2 * i], per_mode[2 * i + 1], f));
      }
      fs.transient_converted.push_back(std::move(per_point));
    }
    forward_.push_back(std::move(fs));
  }
  return absl::OkStatus();
}

absl::Status MemoryModel::FitStorages(const Calibration& runs) {
  const int64_t b1 = runs.b1, b2 = runs.b2;
  // Storages a plan can free, with their keepers and sizes at the two batches.
  const auto sites1 = TrackedStorages(runs.exact1, runs.convertible);
  const auto sites2 = TrackedStorages(runs.exact2, runs.convertible);
  if (sites1.size() != sites2.size()) {
    return absl::FailedPreconditionError("memory model: saved tensors differ between batch sizes");
  }
  for (const auto& [key, site] : sites1) {
    auto it = sites2.find(key);
    if (it == sites2.end() || it->second.keepers != site.keepers) {
      return absl::FailedPreconditionError("memory model: saved tensors differ between batch sizes");
    }
    storages_.push_back({Affine::Through(b1, site.bytes, b2, it->second.bytes), site.keepers, 0});
    storages_.back().death = LastReader(runs.exact1, node_forward_, site.producer, site.output_nr);
  }

  // A layer's input is freeable when a tracked storage it keeps has only convertible keepers.
  input_freeable_.assign(layers_.size(), false);
  for (const Storage& storage : storages_) {
    const bool all_convertible = std::all_of(storage.keepers.begin(), storage.keepers.end(),
                                             [&](int k) { return runs.convertible[k]; });
    for (int k : storage.keepers) {
      if (nodes_[k].layer >= 0 && all_convertible) input_freeable_[nodes_[k].layer] = true;
    }
  }

  // What each node keeps (for the table): storages counted once, parameters and the batch left out.
  const size_t count = nodes_.size();
  auto saved_per_node = [&](const StepRecord& run) {
    std::vector<int64_t> bytes(count, 0);
    std::unordered_set<const void*> seen;
    for (size_t n = 0; n < count; ++n) {
      for (const SavedStorage& saved : run.nodes[n].saved) {
        if (saved.key != nullptr && !run.fixed.count(saved.key) && seen.insert(saved.key).second) {
          bytes[n] += saved.bytes;
        }
      }
    }
    return bytes;
  };
  const std::vector<int64_t> saved1 = saved_per_node(runs.exact1);
  const std::vector<int64_t> saved2 = saved_per_node(runs.exact2);
  for (size_t n = 0; n < count; ++n) nodes_[n].saved = Affine::Through(b1, saved1[n], b2, saved2[n]);
  return absl::OkStatus();
}

void MemoryModel::FitNodes(const Calibration& runs) {
  const int64_t b1 = runs.b1, b2 = runs.b2;
  const StepRecord& exact1 = runs.exact1;
  const StepRecord& exact2 = runs.exact2;
  // Per node: live bytes the plan does not change, and transients per configuration.
  const std::vector<LayerChoice> exact_choices = ExactChoices();
  auto tracked_exact = [&](int64_t batch, size_t n) { return LiveTracked(exact_choices, false, batch, n); };
  for (size_t n = 0; n < nodes_.size(); ++n) {
    Node& node = nodes_[n];
    node.other = Affine::Through(b1, exact1.before[n] - tracked_exact(b1, n), b2,
                                 exact2.before[n] - tracked_exact(b2, n));
    node.transient_exact = PhaseLines::Through(b1, exact1.before[n], exact1.peaks[n], b2,
                                               exact2.before[n], exact2.peaks[n]);
    node.transient_masks = PhaseLines::Through(b1, runs.masks1.before[n], runs.masks1.peaks[n], b2,
                                               runs.masks2.before[n], runs.masks2.peaks[n]);
    for (const auto& per_mode : runs.converted) {
      std::vector<PhaseLines> per_point;
      for (size_t i = 0; i < options_.calibration_probes.size(); ++i) {
        const StepRecord& r1 = per_mode[2 * i];
        const StepRecord& r2 = per_mode[2 * i + 1];
        per_point.push_back(
            PhaseLines::Through(b1, r1.before[n], r1.peaks[n], b2, r2.before[n], r2.peaks[n]));
      }
      node.transient_converted.push_back(std::move(per_point));
    }
  }
  phase_.optimizer_peak = Affine::Through(b1, exact1.optimizer_peak, b2, exact2.optimizer_peak);
}

void MemoryModel::CheckCalibration(const Calibration& runs) {
  // Predicted live bytes before each node against those measured on the converted runs.
  const std::vector<int64_t>& points = options_.calibration_probes;
  double worst = 0;
  for (size_t m = 0; m < runs.converted.size(); ++m) {
    for (size_t i = 0; i < points.size(); ++i) {
      std::vector<LayerChoice> all(layers_.size());
      for (size_t l = 0; l < all.size(); ++l) {
        if (layers_[l].convertible()) all[l] = {true, points[i], options_.modes[m]};
      }
      for (int k = 0; k < 2; ++k) {
        const StepRecord& run = runs.converted[m][2 * i + k];
        const int64_t batch = k == 0 ? runs.b1 : runs.b2;
        for (size_t n = 0; n < nodes_.size(); ++n) {
          const int64_t predicted = nodes_[n].other.At(batch) + lean_buffer_bytes_ + LiveTracked(all, true, batch, n);
          const double error = std::abs(static_cast<double>(predicted - run.before[n])) /
                               static_cast<double>(std::max<int64_t>(run.before[n], 1));
          worst = std::max(worst, error);
        }
      }
    }
  }
  calibration_error_ = worst;
}

namespace {

using ConvCall = std::function<torch::Tensor(const torch::Tensor&)>;

// A conv module's forward, or an empty function for a module type this file does not know.
ConvCall CallOf(const std::shared_ptr<torch::nn::Module>& module) {
  if (auto c = std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(module)) return [c](const torch::Tensor& x) { return c->forward(x); };
  if (auto c = std::dynamic_pointer_cast<torch::nn::Conv3dImpl>(module)) return [c](const torch::Tensor& x) { return c->forward(x); };
  if (auto c = std::dynamic_pointer_cast<torch::nn::ConvTranspose2dImpl>(module)) {
    return [c](const torch::Tensor& x) { return c->forward(x); };
  }
  if (auto c = std::dynamic_pointer_cast<torch::nn::ConvTranspose3dImpl>(module)) {
    return [c](const torch::Tensor& x) { return c->forward(x); };
  }
  if (auto c = std::dynamic_pointer_cast<XConv2dImpl>(module)) return [c](const torch::Tensor& x) { return c->forward(x); };
  if (auto c = std::dynamic_pointer_cast<XConv3dImpl>(module)) return [c](const torch::Tensor& x) { return c->forward(x); };
  return {};
}

// `conv` as Convert makes it with `settings` (sharing its parameters), or `conv` itself if XConv
// cannot run it; null if it is no Conv2d/Conv3d.
absl::StatusOr<std::shared_ptr<torch::nn::Module>> Converted(const std::shared_ptr<torch::nn::Module>& conv,
                                                             const XConvSettings& settings) {
  torch::nn::Sequential holder;
  if (auto c = std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(conv)) {
    holder->push_back(c);
  } else if (auto c = std::dynamic_pointer_cast<torch::nn::Conv3dImpl>(conv)) {
    holder->push_back(c);
  } else {
    return std::shared_ptr<torch::nn::Module>();
  }
  ConvertOptions options;
  options.settings = settings;
  options.lean_layers = false;
  options.unsupported_stay_exact = true;
  absl::StatusOr<ConvertResult> converted = Convert(holder.ptr(), options);
  if (!converted.ok()) return converted.status();
  return converted->module->children()[0];
}

// Peaks of the phases a backward marks (memory_phase.h), above the bytes live when it started.
class PhasePeaks : public MemoryPhaseObserver {
 public:
  explicit PhasePeaks(MemoryMeter& meter) : meter_(meter), before_(meter.current_bytes()) { meter_.ResetPeak(); }
  void OnPhase() override {
    peaks_.push_back(meter_.peak_bytes() - before_);
    meter_.ResetPeak();
  }
  std::vector<int64_t> Close() {
    peaks_.push_back(meter_.peak_bytes() - before_);
    return peaks_;
  }

 private:
  MemoryMeter& meter_;
  int64_t before_;
  std::vector<int64_t> peaks_;
};

// One layer run alone at a batch: its forward's working set and its backward's per phase, above
// what was live before each, in the second of two steps (steady state, as calibration measures).
struct LayerProbe {
  int64_t forward = 0;
  std::vector<int64_t> backward;
};

LayerProbe ProbeLayer(const ConvCall& call, const std::vector<int64_t>& sample_sizes, bool input_grad,
                      const TrainingStep& step, int64_t batch, MemoryMeter& meter) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(13);
  std::vector<int64_t> sizes = {batch};
  sizes.insert(sizes.end(), sample_sizes.begin(), sample_sizes.end());
  const auto options = torch::TensorOptions().dtype(step.dtype);
  // One run: a second one measured the same bytes for every layer of the bench's seven nets (their
  // predictions at every batch from 1 to 4x the job's were identical), at twice the cost.
  LayerProbe probe;
  torch::Tensor x = torch::randn(sizes, gen, options).to(step.device);
  if (input_grad) x.requires_grad_(true);
  const int64_t before = meter.current_bytes();
  meter.ResetPeak();
  torch::Tensor y = call(x);
  probe.forward = meter.peak_bytes() - before;
  const torch::Tensor g = torch::randn(y.sizes(), gen, options).to(step.device);
  PhasePeaks phases(meter);
  {
    MemoryPhaseScope observe(&phases);
    y.backward(g);
  }
  probe.backward = phases.Close();
  return probe;
}

}  // namespace

absl::Status MemoryModel::ProbeLayers(const ModelFactory& factory, const Calibration& runs) {
  excess_.assign(layers_.size(), LayerExcess{});
  // 1, the calibration batches, then doubling up to twice the step's batch (LargestBatch looks
  // past it; beyond, the last two extrapolate).
  std::vector<int64_t> batches = {1, runs.b1, runs.b2};
  for (int64_t b = 2 * runs.b2; b < 2 * step_.batch; b *= 2) batches.push_back(b);
  batches.push_back(std::max(2 * step_.batch, runs.b2));
  std::sort(batches.begin(), batches.end());
  batches.erase(std::unique(batches.begin(), batches.end()), batches.end());

  absl::StatusOr<std::unique_ptr<MemoryMeter>> meter = MeterFor(step_.device);
  if (!meter.ok()) return meter.status();
  // Configurations as calibrated: exact, exact convs as XConv r = 0, XConv per mode and point.
  struct Configuration {
    XConvSettings settings;
    Excess* forward = nullptr;
    Excess* backward = nullptr;
  };
  std::map<std::string, LayerExcess> probed;  // by layer signature: equal layers probe once
  return GuardTorch("memory model: probing a layer alone failed", [&]() -> absl::Status {
    absl::StatusOr<std::shared_ptr<torch::nn::Module>> model = factory();
    if (!model.ok()) return model.status();
    const auto modules = (*model)->named_modules();
    for (size_t l = 0; l < layers_.size(); ++l) {
      const std::shared_ptr<torch::nn::Module>* conv = modules.find(layers_[l].path);
      if (conv == nullptr) continue;  // a functional conv: no module to run alone
      std::ostringstream signature;
      (*conv)->pretty_print(signature);
      for (int64_t v : layers_[l].sample_sizes) signature << " " << v;
      signature << (runs.layer_input_grad[l] ? " grad" : " no-grad");
      if (auto it = probed.find(signature.str()); it != probed.end()) {
        excess_[l] = it->second;
        continue;
      }
      LayerExcess excess;
      std::vector<Configuration> configurations;
      XConvSettings exact_settings;
      exact_settings.probes = 0;
      configurations.push_back({exact_settings, &excess.forward.exact, &excess.backward.exact});
      configurations.push_back({exact_settings, &excess.forward.masks, &excess.backward.masks});
      const std::vector<int64_t>& points = options_.calibration_probes;
      excess.forward.converted.assign(options_.modes.size(), std::vector<Excess>(points.size()));
      excess.backward.converted.assign(options_.modes.size(), std::vector<Excess>(points.size()));
      for (size_t m = 0; m < options_.modes.size(); ++m) {
        for (size_t i = 0; i < points.size(); ++i) {
          XConvSettings settings;
          settings.probes = points[i];
          settings.mode = options_.modes[m];
          settings.center = options_.center;
          settings.route = settings.mode == ProbeMode::kOrthogonal ? GradientRoute::kReconstruct : GradientRoute::kTap;
          configurations.push_back({settings, &excess.forward.converted[m][i], &excess.backward.converted[m][i]});
        }
      }
      // A conv XConv cannot run is the same torch conv in every configuration: probe it once.
      const size_t runs_needed = layers_[l].convertible() ? configurations.size() : 1;
      for (size_t c = 0; c < runs_needed; ++c) {
        // The exact configuration runs the torch conv; the others what Convert makes of it.
        std::shared_ptr<torch::nn::Module> module = *conv;
        if (c > 0) {
          absl::StatusOr<std::shared_ptr<torch::nn::Module>> converted = Converted(*conv, configurations[c].settings);
          if (!converted.ok()) return converted.status();
          if (*converted) module = *converted;
        }
        const ConvCall call = CallOf(module);
        if (!call) break;  // a conv type this file cannot run alone: no excess
        ToJob(*module, step_.device, step_.dtype);
        module->train();
        std::vector<LayerProbe> probes;
        for (int64_t b : batches) {
          probes.push_back(ProbeLayer(call, layers_[l].sample_sizes, runs.layer_input_grad[l], step_, b, **meter));
        }
        std::vector<int64_t> forward;
        std::vector<std::vector<int64_t>> backward;
        for (const LayerProbe& probe : probes) {
          forward.push_back(probe.forward);
          backward.push_back(probe.backward);
        }
        *configurations[c].forward = Excess::Over(batches, forward, runs.b1, runs.b2);
        *configurations[c].backward = Excess::OverPhases(batches, backward, runs.b1, runs.b2);
      }
      for (size_t c = runs_needed; c < configurations.size(); ++c) {
        *configurations[c].forward = excess.forward.exact;
        *configurations[c].backward = excess.backward.exact;
      }
      probed[signature.str()] = excess;
      excess_[l] = std::move(excess);
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<int64_t> MeasureTrainingPeak(const ModelFactory& factory, const ForwardFn& forward,
                                            const TrainingStep& step, int64_t batch,
                                            const PrepareFn& prepare, int steps) {
  absl::StatusOr<std::unique_ptr<MemoryMeter>> made_meter = MeterFor(step.device);
  if (!made_meter.ok()) return made_meter.status();
  MemoryMeter& meter = **made_meter;
  const int64_t base = meter.current_bytes();
  meter.ResetPeak();
  int64_t peak = 0;
  XTRAIN_RETURN_IF_ERROR(GuardTorch("measure: a training step failed", [&]() -> absl::Status {
    absl::StatusOr<std::shared_ptr<torch::nn::Module>> made = factory();
    if (!made.ok()) return made.status();
    std::shared_ptr<torch::nn::Module> model = *std::move(made);
    if (prepare) {
      made = prepare(model);
      if (!made.ok()) return made.status();
      model = *std::move(made);
    }
    ToJob(*model, step.device, step.dtype);
    model->train();
    std::unique_ptr<torch::optim::Optimizer> optimizer =
        MakeOptimizer(step.optimizer, model->parameters(), 1e-4);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(11);
    std::vector<int64_t> input_sizes = {batch};
    input_sizes.insert(input_sizes.end(), step.sample_sizes.begin(), step.sample_sizes.end());
    std::vector<int64_t> output_sizes;
    {
      torch::NoGradGuard no_grad;
      model->eval();
      std::vector<int64_t> one = input_sizes;
      one[0] = 1;
      output_sizes = forward(*model, torch::zeros(one, torch::TensorOptions().dtype(step.dtype).device(step.device))).sizes().vec();
      output_sizes[0] = batch;
      model->train();
    }
    meter.ResetPeak();
    for (int s = 0; s < steps; ++s) {
      optimizer->zero_grad();
      torch::Tensor input = torch::randn(input_sizes, gen, torch::TensorOptions().dtype(step.dtype)).to(step.device);
      torch::Tensor target = MakeTarget(step.loss, output_sizes, step.dtype, gen, step.device);
      // The output stays alive through backward, as a trainer that reports metrics keeps it.
      torch::Tensor output = forward(*model, input);
      torch::Tensor loss = Loss(step.loss, output, target);
      loss.backward();
      loss = torch::Tensor();
      output = torch::Tensor();
      optimizer->step();
    }
    peak = meter.peak_bytes() - base;
    return absl::OkStatus();
  }));
  return peak;
}

void MemoryModel::DebugCompare(const ModelFactory& factory, const ForwardFn& forward,
                               const std::vector<LayerChoice>& choices, bool lean_layers,
                               const ConvertOptions& convert, int64_t batch) const {
  Config config;
  config.convert = true;
  config.plan = &convert;
  auto run = RunStep(factory, forward, step_, batch, config);
  if (!run.ok()) {
    std::fprintf(stderr, "debug run failed: %s\n", std::string(run.status().message()).c_str());
    return;
  }
  const bool lean = lean_layers || AnyXConv(choices);
  std::fprintf(stderr, "forward peak meas %ld end meas %ld; optimizer meas %ld pred %ld\n", run->forward_peak,
               run->forward_end, run->optimizer_peak, phase_.optimizer_peak.At(batch));
  for (size_t n = 0; n < nodes_.size() && n < run->nodes.size(); ++n) {
    const int64_t before =
        nodes_[n].other.At(batch) + (lean ? lean_buffer_bytes_ : 0) + LiveTracked(choices, lean, batch, n);
    const int64_t peak = before + Transient(nodes_[n], choices, lean, batch);
    std::fprintf(stderr, "%3zu %-28s before pred %9ld meas %9ld | peak pred %9ld meas %9ld %s\n", n,
                 run->nodes[n].type.substr(0, 28).c_str(), before, run->before[n], peak,
                 *std::max_element(run->peaks[n].begin(), run->peaks[n].end()),
                 nodes_[n].layer >= 0 ? layers_[nodes_[n].layer].path.c_str() : "");
  }
}

int64_t MemoryModel::element_bytes() const { return static_cast<int64_t>(c10::elementSize(step_.dtype)); }

int MemoryModel::ModeIndex(ProbeMode mode) const {
  for (size_t i = 0; i < options_.modes.size(); ++i) {
    if (options_.modes[i] == mode) return static_cast<int>(i);
  }
  return -1;
}

int64_t MemoryModel::SketchBytes(size_t layer, const LayerChoice& choice, int64_t batch) const {
  if (!choice.xconv) return 0;
  const ConvLayer& l = layers_[layer];
  const int64_t values_per_sample =
      choice.mode == ProbeMode::kIndependent ? l.in_channels() * choice.probes : choice.probes;
  const int64_t means = options_.center ? l.in_channels() : 0;
  return batch * (values_per_sample + means) * element_bytes();
}

int64_t MemoryModel::InputBytes(size_t layer, int64_t batch) const {
  return batch * layers_[layer].in_channels() * layers_[layer].spatial() * element_bytes();
}

// Bytes of the tracked storages plus sketches and masks live before node `node` (node =
// nodes_.size() stands for the end of the forward, when every keeper is still pending: use 0).
bool MemoryModel::KeeperActive(int k, const std::vector<LayerChoice>& choices, bool lean) const {
  const Node& keeper = nodes_[k];
  if (keeper.layer >= 0) return !choices[keeper.layer].xconv;
  if (keeper.lean) return !lean;
  return true;
}

int64_t MemoryModel::LeanBytes(const Node& node, int64_t batch) {
  return (batch * node.lean_numel_per_sample * node.lean_bits + 7) / 8;
}

int64_t MemoryModel::LiveTracked(const std::vector<LayerChoice>& choices, bool lean, int64_t batch,
                                 size_t node) const {
  int64_t live = 0;
  for (const Storage& s : storages_) {
    for (auto it = s.keepers.rbegin(); it != s.keepers.rend(); ++it) {
      if (*it < static_cast<int>(node)) break;
      if (KeeperActive(*it, choices, lean)) {
        live += s.bytes.At(batch);
        break;
      }
    }
  }
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (choices[l].xconv && layer_node_[l] >= static_cast<int>(node)) live += SketchBytes(l, choices[l], batch);
  }
  if (lean) {
    for (size_t n = node; n < nodes_.size(); ++n) {
      if (nodes_[n].lean) live += LeanBytes(nodes_[n], batch);
    }
  }
  return live;
}

int64_t MemoryModel::WorkingSet(const Node& node, const PhaseLines& exact, const PhaseLines& masks,
                                const std::vector<std::vector<PhaseLines>>& converted, const ExcessSet* excess,
                                const std::vector<LayerChoice>& choices, bool lean, int64_t batch) const {
  if (node.layer >= 0 && choices[node.layer].xconv) {
    const LayerChoice& c = choices[node.layer];
    const int mode = std::max(ModeIndex(c.mode), 0);
    const auto& per_point = converted[mode];
    const std::vector<int64_t>& points = options_.calibration_probes;
    // The segment around r (the first or last one beyond the calibrated range).
    size_t i = 1;
    while (i + 1 < points.size() && points[i] < c.probes) ++i;
    const double t = static_cast<double>(c.probes - points[i - 1]) /
                     static_cast<double>(points[i] - points[i - 1]);
    int64_t bytes = PhaseLines::Interpolate(per_point[i - 1], per_point[i], t, batch);
    if (excess != nullptr && static_cast<size_t>(mode) < excess->converted.size()) {
      bytes += Excess::Interpolate(excess->converted[mode][i - 1], excess->converted[mode][i], t, batch);
    }
    return bytes;
  }
  if (node.lean && lean) return converted[0][0].At(batch);
  const int64_t extra = excess == nullptr ? 0 : lean ? excess->masks.At(batch) : excess->exact.At(batch);
  return (lean ? masks.At(batch) : exact.At(batch)) + extra;
}

int64_t MemoryModel::Transient(const Node& node, const std::vector<LayerChoice>& choices,
                               bool lean, int64_t batch) const {
  const ExcessSet* excess = node.layer >= 0 && static_cast<size_t>(node.layer) < excess_.size()
                                ? &excess_[node.layer].backward
                                : nullptr;
  return WorkingSet(node, node.transient_exact, node.transient_masks, node.transient_converted, excess, choices,
                    lean, batch);
}

int64_t MemoryModel::ForwardTransient(const ForwardStep& step, const std::vector<LayerChoice>& choices,
                                      bool lean, int64_t batch) const {
  const Node& node = nodes_[step.node];
  const ExcessSet* excess = node.layer >= 0 && static_cast<size_t>(node.layer) < excess_.size()
                                ? &excess_[node.layer].forward
                                : nullptr;
  return WorkingSet(node, step.transient_exact, step.transient_masks, step.transient_converted, excess, choices,
                    lean, batch);
}

int64_t MemoryModel::ForwardPeak(const std::vector<LayerChoice>& choices, bool lean, int64_t batch) const {
  const size_t steps = forward_.size();
  // A plan with lean layers starts from the forward measured with them (exact convolutions),
  // whose storages and masks are already counted. Changes against that, by the step from which
  // they hold: storages only converted convolutions kept die after their last reader; sketches
  // appear after the op that makes them.
  std::vector<int64_t> delta(steps + 1, 0);
  if (lean) {
    for (const Storage& s : storages_) {
      // Kept with lean layers and exact convolutions: some keeper is not a lean layer.
      const bool kept_lean = std::any_of(s.keepers.begin(), s.keepers.end(), [&](int k) { return !nodes_[k].lean; });
      const bool kept = std::any_of(s.keepers.begin(), s.keepers.end(),
                                    [&](int k) { return KeeperActive(k, choices, true); });
      if (s.death != INT_MAX && kept_lean && !kept) {
        delta[std::min<size_t>(s.death + 1, steps)] -= s.bytes.At(batch);
      }
    }
    for (size_t l = 0; l < layers_.size(); ++l) {
      const int f = node_forward_[layer_node_[l]];
      if (choices[l].xconv && f >= 0) delta[f + 1] += SketchBytes(l, choices[l], batch);
    }
  }
  int64_t change = 0, peak = 0;
  for (size_t f = 0; f < steps; ++f) {
    change += delta[f];
    const Affine& base = lean ? forward_[f].live_before_masks : forward_[f].live_before;
    const int64_t before = base.At(batch) + change;
    peak = std::max(peak, before + ForwardTransient(forward_[f], choices, lean, batch));
  }
  return peak;
}

absl::Status MemoryModel::CheckChoices(const std::vector<LayerChoice>& choices, int64_t batch) const {
  if (batch < 1) return absl::InvalidArgumentError(absl::StrCat("memory model: the batch must be >= 1, not ", batch));
  if (choices.size() != layers_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("memory model: ", choices.size(), " layer choices for ",
                                                   layers_.size(), " convolutions; give one per layer"));
  }
  for (size_t l = 0; l < layers_.size(); ++l) {
    const LayerChoice& c = choices[l];
    if (!c.xconv) continue;
    if (!layers_[l].convertible()) {
      return absl::InvalidArgumentError(
          absl::StrCat("memory model: ", layers_[l].path, " cannot run as XConv (", layers_[l].exact_reason, ")"));
    }
    if (c.probes < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("memory model: ", layers_[l].path, " as XConv needs probes >= 1, not ", c.probes));
    }
    if (ModeIndex(c.mode) < 0) {
      return absl::InvalidArgumentError(absl::StrCat("memory model: ", layers_[l].path, " uses mode ",
                                                     std::string(ProbeModeName(c.mode)),
                                                     ", which the model was not calibrated for"));
    }
  }
  return absl::OkStatus();
}

MemoryPrediction MemoryModel::Predict(const std::vector<LayerChoice>& choices, int64_t batch,
                                      bool lean_layers) const {
  MemoryPrediction p;
  p.parameter_bytes = parameter_bytes_;
  p.gradient_bytes = parameter_bytes_;
  p.optimizer_state_bytes = optimizer_state_bytes_;
  if (absl::Status status = CheckChoices(choices, batch); !status.ok()) {
    p.peak_bytes = INT64_MAX;
    p.phase = "invalid";
    p.at = std::string(status.message());
    return p;
  }
  const bool lean = lean_layers || AnyXConv(choices);

  // Live tracked bytes before every node in one pass: each storage is live from the start of the
  // backward until its last active keeper has run.
  const size_t count = nodes_.size();
  std::vector<int64_t> delta(count + 1, 0);
  auto live_until = [&](int last, int64_t bytes) {
    if (last < 0) return;
    delta[0] += bytes;
    delta[last + 1] -= bytes;
  };
  for (const Storage& s : storages_) {
    int last = -1;
    for (auto it = s.keepers.rbegin(); it != s.keepers.rend(); ++it) {
      if (KeeperActive(*it, choices, lean)) {
        last = *it;
        break;
      }
    }
    live_until(last, s.bytes.At(batch));
  }
  int64_t compressed = 0;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const int64_t bytes = SketchBytes(l, choices[l], batch);
    compressed += bytes;
    live_until(layer_node_[l], bytes);
  }
  if (lean) {
    for (size_t n = 0; n < count; ++n) {
      if (!nodes_[n].lean) continue;
      const int64_t bytes = LeanBytes(nodes_[n], batch);
      compressed += bytes;
      live_until(static_cast<int>(n), bytes);
    }
  }
  // The exact model's buffers are in `other`; the lean configuration's own ones come on top.
  const int64_t buffers = lean ? lean_buffer_bytes_ : 0;
  int64_t live = 0;
  for (size_t n = 0; n < count; ++n) {
    live += delta[n];
    const int64_t before = nodes_[n].other.At(batch) + buffers + live;
    const int64_t peak = before + Transient(nodes_[n], choices, lean, batch);
    if (peak > p.peak_bytes) {
      p.peak_bytes = peak;
      p.phase = "backward";
      p.at = nodes_[n].layer >= 0 ? layers_[nodes_[n].layer].path : nodes_[n].type;
    }
  }
  p.kept_bytes = delta[0];
  const int64_t forward_peak = ForwardPeak(choices, lean, batch);
  if (forward_peak > p.peak_bytes) {
    p.peak_bytes = forward_peak;
    p.phase = "forward";
    p.at = "";
  }
  const int64_t optimizer = phase_.optimizer_peak.At(batch) + buffers;
  if (optimizer > p.peak_bytes) {
    p.peak_bytes = optimizer;
    p.phase = "optimizer";
    p.at = "";
  }
  return p;
}

std::vector<MemoryRow> MemoryModel::Table(const std::vector<LayerChoice>& choices, int64_t batch,
                                          bool lean_layers) const {
  std::vector<MemoryRow> rows;
  if (!CheckChoices(choices, batch).ok()) return rows;
  const bool lean = lean_layers || AnyXConv(choices);
  for (size_t n = 0; n < nodes_.size(); ++n) {
    const Node& node = nodes_[n];
    MemoryRow row;
    row.transient_bytes = Transient(node, choices, lean, batch);
    if (node.layer >= 0) {
      const LayerChoice& c = choices[node.layer];
      row.name = layers_[node.layer].path;
      row.kind = c.xconv ? "xconv" : "conv";
      row.exact_kept_bytes = InputBytes(node.layer, batch);
      row.kept_bytes = c.xconv ? SketchBytes(node.layer, c, batch) : row.exact_kept_bytes;
    } else if (node.lean) {
      const bool relu = node.type == "ReluBackward0";
      row.name = node.type;
      row.kind = relu ? (lean ? "mask-relu" : "relu") : (lean ? "index-pool" : "pool");
      // Exact: a ReLU keeps its output; a max pool its input and int64 indices (storages shared
      // with a later node are counted at the first node of the backward that keeps them).
      row.exact_kept_bytes =
          relu ? batch * node.lean_numel_per_sample * element_bytes() : node.saved.At(batch);
      row.kept_bytes = lean ? LeanBytes(node, batch) : row.exact_kept_bytes;
    } else {
      row.name = node.type;
      row.exact_kept_bytes = row.kept_bytes = node.saved.At(batch);
      const std::string& t = node.type;
      row.kind = t.find("BatchNorm") != std::string::npos ? "batchnorm"
                 : t.find("Pool") != std::string::npos    ? "pool"
                 : t.find("Loss") != std::string::npos || t.find("Softmax") != std::string::npos ? "loss"
                 : row.kept_bytes > 0                       ? "saved"
                                                            : "other";
    }
    rows.push_back(row);
  }
  std::reverse(rows.begin(), rows.end());  // forward order reads more naturally
  return rows;
}

}  // namespace xtrain::core
