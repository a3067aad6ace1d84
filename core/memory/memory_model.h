#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/util/optimizer.h"
#include "core/xconv/convert.h"
#include "core/xconv/xconv_options.h"

namespace xtrain::core {

// The loss a step ends in; its saved tensors and gradient are part of the step's memory.
enum class LossKind { kCrossEntropy, kMse };

// One training step of a job: what the memory model predicts the peak of. The step is: zero the
// gradients, draw a batch (input and target), forward, loss, backward with the output still held
// (trainers keep it for metrics), optimizer step.
struct TrainingStep {
  std::vector<int64_t> sample_sizes;  // one input sample: channels, then spatial sizes
  int64_t batch = 32;
  torch::ScalarType dtype = torch::kFloat;
  LossKind loss = LossKind::kCrossEntropy;  // cross-entropy: integer targets shaped like the output less dim 1
  OptimizerKind optimizer = OptimizerKind::kSgdMomentum;
  // Where the job runs; its allocator is what the model calibrates against (a CUDA device needs a
  // CUDA LibTorch: the CUDA meter, 512-byte blocks, cuDNN work spaces).
  torch::Device device = torch::kCPU;
};

// Builds a fresh, identically shaped model (parameters on the CPU, float32).
using ModelFactory = std::function<absl::StatusOr<std::shared_ptr<torch::nn::Module>>()>;
// Runs the model's forward on a batch.
using ForwardFn = std::function<torch::Tensor(torch::nn::Module& model, const torch::Tensor& input)>;
// Forward of a model whose root is a torch::nn::Sequential.
torch::Tensor SequentialForward(torch::nn::Module& model, const torch::Tensor& input);

// How the model is calibrated.
struct MemoryModelOptions {
  int64_t calibration_batch = 2;  // steps run at this batch and twice it; every size is affine in B
  // Probe counts the XConv configuration is calibrated at; between them the backward working set
  // is interpolated linearly in r (it is convex in r, so the chords bound it from above).
  std::vector<int64_t> calibration_probes = {2, 16, 64};
  std::vector<ProbeMode> modes = {ProbeMode::kIndependent};  // modes a plan may use
  bool center = true;             // XConv centring (DESIGN.md §1 note: one more probe's worth)
};

// An affine function of the batch size: bytes = intercept + slope * batch.
struct Affine {
  double intercept = 0;
  double slope = 0;
  int64_t At(int64_t batch) const;
  // The line through (b1, v1) and (b2, v2).
  static Affine Through(int64_t b1, int64_t v1, int64_t b2, int64_t v2);
};

// A node's working set above the bytes live before it: the largest of its phases, each affine in
// the batch (XConv's backward has several phases that scale differently, see memory_phase.h).
struct PhaseLines {
  std::vector<Affine> phases;
  int64_t At(int64_t batch) const;
  // Per phase through (b1, peaks1 - before1) and (b2, peaks2 - before2); one line through the
  // largest peaks if the phase counts differ.
  static PhaseLines Through(int64_t b1, int64_t before1, const std::vector<int64_t>& peaks1, int64_t b2,
                            int64_t before2, const std::vector<int64_t>& peaks2);
  // Linear interpolation between two calibration points at fraction t (phase by phase).
  static int64_t Interpolate(const PhaseLines& low, const PhaseLines& high, double t, int64_t batch);
};

// What a working set measured above its calibration line at other batches: LibTorch picks other
// kernels for other problem sizes (mkldnn's backward for small maps), so the line through the
// calibration batches can miss. Per probed batch, interpolated between them and extrapolated from
// the last two; never below zero, so it only raises a prediction.
struct Excess {
  std::vector<int64_t> batches;  // ascending
  std::vector<int64_t> bytes;
  int64_t At(int64_t batch) const;
  // The excess of `measured` (at `batches`) over the line through its values at b1 and b2.
  static Excess Over(const std::vector<int64_t>& batches, const std::vector<int64_t>& measured, int64_t b1,
                     int64_t b2);
  // The same for a working set of several phases (`phases` per batch), over their PhaseLines.
  static Excess OverPhases(const std::vector<int64_t>& batches, const std::vector<std::vector<int64_t>>& phases,
                           int64_t b1, int64_t b2);
  // Linear interpolation between two excesses at fraction t (like PhaseLines::Interpolate).
  static int64_t Interpolate(const Excess& low, const Excess& high, double t, int64_t batch);
};

// A convolution the plan can run exact or as XConv.
struct ConvLayer {
  std::string path;                  // module path, as Convert names it ("features.3")
  std::vector<int64_t> sample_sizes;  // its input per sample: C_in, spatial...
  std::vector<int64_t> weight_sizes;
  int64_t groups = 1;
  int64_t in_channels() const { return sample_sizes[0]; }
  int64_t out_channels() const { return weight_sizes[0]; }
  int64_t spatial() const;           // S, the input's spatial volume
  int64_t kernel_volume() const;
  int64_t parameters() const;        // weight values
  // Why XConv cannot run it (a padding mode other than zeros, a transposed conv, ...): it stays
  // exact in every plan. Empty for a conv a plan may convert.
  std::string exact_reason;
  bool convertible() const { return exact_reason.empty(); }
};

// What one conv layer runs as in a plan.
struct LayerChoice {
  bool xconv = false;
  int64_t probes = 0;
  ProbeMode mode = ProbeMode::kIndependent;
};

// One row of the per-layer memory table.
struct MemoryRow {
  std::string name;          // layer path or autograd node type
  std::string kind;  // "conv", "xconv", "relu", "mask-relu", "pool", "index-pool", "batchnorm", "loss", "saved", "other"
  int64_t kept_bytes = 0;    // kept for backward in this plan (shared storages counted once)
  int64_t exact_kept_bytes = 0;
  int64_t transient_bytes = 0;  // working set of its backward above what was live before it
};

// A predicted peak with where it happens.
struct MemoryPrediction {
  int64_t peak_bytes = 0;
  std::string phase;        // "forward", "backward" or "optimizer"
  std::string at;           // node at the peak (backward)
  int64_t parameter_bytes = 0;
  int64_t gradient_bytes = 0;
  int64_t optimizer_state_bytes = 0;
  int64_t kept_bytes = 0;   // everything kept for backward at the end of the forward
};

// Byte-exact memory model of one training step (DESIGN.md §2), built from the real module tree.
// Build runs short training steps at two small batches (nothing at full size) in three configurations:
// exact, exact convs with lean layers (mask ReLUs, index max pools), and every convertible conv as
// XConv at each calibration probe count (with lean layers). A
// hook on every autograd node records the bytes live before it and its peak, so library work
// spaces are measured, not guessed. The saved storages and their keepers come from the autograd
// graph; a plan changes which keepers remain, so the model re-derives what is live at every node
// for any plan and batch. Predict is a pass over the recorded nodes: microseconds.
class MemoryModel {
 public:
  // One job per process: Build holds the process's job slot (core/util/job_slot.h) while it runs;
  // beside a live Trainer or another Build it fails with FailedPrecondition.
  static absl::StatusOr<MemoryModel> Build(const ModelFactory& factory, const ForwardFn& forward,
                                           const TrainingStep& step,
                                           const MemoryModelOptions& options = {});

  // Convolutions in forward order (those XConv cannot run included, see ConvLayer::exact_reason);
  // plans index their choices the same way.
  const std::vector<ConvLayer>& layers() const { return layers_; }
  const TrainingStep& step() const { return step_; }
  const MemoryModelOptions& options() const { return options_; }
  int64_t element_bytes() const;

  // All-exact choices (the unconverted model).
  std::vector<LayerChoice> ExactChoices() const { return std::vector<LayerChoice>(layers_.size()); }
  // InvalidArgument unless `batch` >= 1 and `choices` has one entry per layer, XConv only where
  // convertible, with probes >= 1 in a calibrated mode.
  absl::Status CheckChoices(const std::vector<LayerChoice>& choices, int64_t batch) const;
  // Peak of one steady-state training step (forward, backward, optimizer step) at `batch`. Lean
  // layers (mask ReLU, index max pool) run if `lean_layers` or any layer is XConv: the model is
  // calibrated with XConv behind them only. Choices or a batch CheckChoices refuses predict no
  // step: peak_bytes INT64_MAX (no budget holds it) and phase "invalid".
  MemoryPrediction Predict(const std::vector<LayerChoice>& choices, int64_t batch, bool lean_layers = false) const;
  int64_t PredictPeak(const std::vector<LayerChoice>& choices, int64_t batch, bool lean_layers = false) const {
    return Predict(choices, batch, lean_layers).peak_bytes;
  }
  // Bytes layer i keeps for backward as XConv with `choice` (sketch, channel means) at `batch`.
  int64_t SketchBytes(size_t layer, const LayerChoice& choice, int64_t batch) const;
  // The saved input of layer i at `batch` (what exact keeps, unless another node keeps it too).
  int64_t InputBytes(size_t layer, int64_t batch) const;
  // Whether converting layer i can free its input: false when the input is the batch or a node no
  // plan converts (BatchNorm, average pooling) keeps it too. Converting such a layer only adds a sketch.
  bool InputFreeable(size_t layer) const { return input_freeable_[layer]; }
  // Per-layer and per-node table for a plan (DESIGN.md: explainable).
  std::vector<MemoryRow> Table(const std::vector<LayerChoice>& choices, int64_t batch,
                               bool lean_layers = false) const;
  // Largest relative error of the model on its own XConv calibration runs, extrapolated to the
  // step's batch: a check that every storage a plan frees was modelled.
  double calibration_error() const { return calibration_error_; }
  // Autograd node types whose saved tensors the model cannot read (counted as fixed).
  const std::vector<std::string>& unknown_nodes() const { return unknown_nodes_; }
  // Development aid: runs `convert` at `batch` and prints predicted against measured per node.
  void DebugCompare(const ModelFactory& factory, const ForwardFn& forward,
                    const std::vector<LayerChoice>& choices, bool lean_layers, const ConvertOptions& convert,
                    int64_t batch) const;

 private:
  // One backward node in execution order, with its calibration.
  struct Node {
    std::string type;
    int layer = -1;          // conv layer index, if a convertible conv
    // A ReLU or max pool that Convert swaps for its lean form (mask ReLU, index max pool) when
    // anything is converted; the lean form keeps lean_bits per element of lean_numel.
    bool lean = false;
    int64_t lean_numel_per_sample = 0;
    int lean_bits = 0;
    Affine other;              // live bytes before it that the plan does not change
    Affine saved;              // what it keeps, exact configuration (storages counted once)
    PhaseLines transient_exact;  // working set, exact configuration
    PhaseLines transient_masks;  // working set, exact convolutions with mask ReLUs
    // [mode][calibration point]: working set in the converted configuration.
    std::vector<std::vector<PhaseLines>> transient_converted;
  };
  // A storage kept by at least one node that a plan can convert.
  struct Storage {
    Affine bytes;
    std::vector<int> keepers;        // node indices
    int death = 0;                   // last forward step that reads it (a plan may free it after)
  };
  // One forward op that created a backward node, in forward order.
  struct ForwardStep {
    int node = -1;          // index into nodes_
    Affine live_before;     // live bytes before the op, exact configuration
    // The same with lean layers (measured: the caller's own references, such as a U-Net's skips,
    // keep a tensor alive past its last reader however the layers keep it).
    Affine live_before_masks;
    PhaseLines transient_exact, transient_masks;
    std::vector<std::vector<PhaseLines>> transient_converted;  // [mode][calibration point]
  };
  struct Phase {
    Affine optimizer_peak;   // optimizer step (activations gone)
  };
  // A conv layer's working-set excess per configuration, measured on the layer alone.
  struct ExcessSet {
    Excess exact, masks;
    std::vector<std::vector<Excess>> converted;  // [mode][calibration point]
  };
  struct LayerExcess {
    ExcessSet forward, backward;
  };

  MemoryModel() = default;

  // Build's stages: the calibration runs, then the model fitted to them piece by piece.
  struct Calibration;
  static absl::StatusOr<Calibration> Calibrate(const ModelFactory& factory, const ForwardFn& forward,
                                               const TrainingStep& step, const MemoryModelOptions& options);
  // Nodes, conv layers (convertible or why not), lean nodes, the fixed byte counts.
  absl::Status ClassifyNodes(Calibration& runs);
  // The forward op by op: live bytes before each and its working set per configuration.
  absl::Status FitForward(const Calibration& runs);
  // Storages a plan can free, their keepers and last readers; freeable inputs; bytes per node.
  absl::Status FitStorages(const Calibration& runs);
  // Per backward node: the live bytes no plan changes and its working set per configuration.
  void FitNodes(const Calibration& runs);
  // Per conv layer: its forward's and backward's working sets run alone at batches from 1 to twice
  // the step's, in every configuration, against the calibration line (excess_).
  absl::Status ProbeLayers(const ModelFactory& factory, const Calibration& runs);
  // calibration_error_: the model against its own converted runs.
  void CheckCalibration(const Calibration& runs);
  // Whether node `k`, a keeper of a tracked storage, still keeps it under `choices` (`lean`:
  // lean layers on).
  bool KeeperActive(int k, const std::vector<LayerChoice>& choices, bool lean) const;
  // Bytes a lean node's lean form keeps at `batch`.
  static int64_t LeanBytes(const Node& node, int64_t batch);
  int64_t LiveTracked(const std::vector<LayerChoice>& choices, bool lean, int64_t batch, size_t node) const;
  int ModeIndex(ProbeMode mode) const;
  int64_t Transient(const Node& node, const std::vector<LayerChoice>& choices, bool lean,
                    int64_t batch) const;
  // The working set of `node` from its calibrations (exact, mask-only, converted per mode and r)
  // and, for a conv layer, the excess its probes measured (null: none).
  int64_t WorkingSet(const Node& node, const PhaseLines& exact, const PhaseLines& masks,
                     const std::vector<std::vector<PhaseLines>>& converted, const ExcessSet* excess,
                     const std::vector<LayerChoice>& choices, bool lean, int64_t batch) const;
  int64_t ForwardTransient(const ForwardStep& step, const std::vector<LayerChoice>& choices,
                           bool lean, int64_t batch) const;
  // The forward's peak for a plan, op by op.
  int64_t ForwardPeak(const std::vector<LayerChoice>& choices, bool lean, int64_t batch) const;

  TrainingStep step_;
  MemoryModelOptions options_;
  std::vector<ConvLayer> layers_;
  std::vector<int> layer_node_;  // node index of each layer
  std::vector<bool> input_freeable_;  // per layer, see InputFreeable
  std::vector<Node> nodes_;
  std::vector<Storage> storages_;
  std::vector<ForwardStep> forward_;
  std::vector<int> node_forward_;  // per node: its forward step, -1 if none
  std::vector<LayerExcess> excess_;  // per layer (ProbeLayers)
  Phase phase_;
  int64_t parameter_bytes_ = 0;
  int64_t optimizer_state_bytes_ = 0;
  // Buffers the lean configuration adds to the exact model's: XConv's seed and step (16 bytes) on
  // every conv it converts, exact ones (r = 0) included. Measured, not assumed.
  int64_t lean_buffer_bytes_ = 0;
  double calibration_error_ = 0;
  std::vector<std::string> unknown_nodes_;
};

// Measures what MemoryModel predicts: builds a model with `factory`, lets `prepare` convert it (may
// be null), and runs `steps` training steps at `batch` on random data under the CPU meter. Returns
// the peak bytes of the job over the steps (model, gradients, optimizer state, batch, activations).
using PrepareFn = std::function<absl::StatusOr<std::shared_ptr<torch::nn::Module>>(
    std::shared_ptr<torch::nn::Module>)>;
absl::StatusOr<int64_t> MeasureTrainingPeak(const ModelFactory& factory, const ForwardFn& forward,
                                            const TrainingStep& step, int64_t batch,
                                            const PrepareFn& prepare, int steps = 2);

}  // namespace xtrain::core
