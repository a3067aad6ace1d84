#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace xtrain::core {

// One XConv layer's gradient fidelity at one step (fidelity_probe.h).
struct LayerFidelity {
  std::string path;
  int64_t probes = 0;
  double xconv_variance = 0;  // V_x: tr Var of the XConv weight gradient over probe draws
  double sgd_variance = 0;    // V_sgd: tr Var of the minibatch-mean exact gradient over batches
  double ratio = 0;           // V_x / V_sgd: about 1 or less is the paper's criterion
};

// Fidelity of all XConv layers at one step.
struct FidelityReport {
  std::vector<LayerFidelity> layers;
  double xconv_variance = 0;  // sum over layers
  double sgd_variance = 0;    // sum over layers
  double ratio = 0;           // sum V_x / sum V_sgd
  int64_t micro_batch = 0;    // size of each exact micro-batch behind V_sgd
  double seconds = 0;         // time the measurement took
};

enum class TrainEventKind {
  kStep,        // after every optimizer step
  kEpoch,       // after an epoch's evaluation
  kCheckpoint,  // after a checkpoint was written
  kDone,        // once, when Run finishes all epochs or max_steps
  // After a step whose measured peak exceeded the prediction by more than half the planner's
  // margin: the job was re-planned at the same budget with the excess set aside, and the live
  // model converted to the new plan (weights and optimizer state kept).
  kReplan,
};

inline const char* TrainEventKindName(TrainEventKind kind) {
  switch (kind) {
    case TrainEventKind::kStep: return "step";
    case TrainEventKind::kEpoch: return "epoch";
    case TrainEventKind::kCheckpoint: return "checkpoint";
    case TrainEventKind::kDone: return "done";
    case TrainEventKind::kReplan: return "replan";
  }
  return "?";
}

// What Trainer::Run reports. Fields that do not apply to a kind keep their defaults (NaN, 0).
struct TrainEvent {
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

  TrainEventKind kind = TrainEventKind::kStep;
  int64_t step = 0;       // optimizer steps done so far in the job
  int64_t epoch = 0;      // the epoch the step belongs to / that ended
  double loss = kNaN;     // step: its training loss; epoch and done: the epoch's mean training loss
  std::string metric_name;     // the task's metric (epoch, done); empty without validation data
  double metric_value = kNaN;
  std::map<std::string, double> metrics;  // every validation metric, including "val_loss"
  double lr = kNaN;
  double samples_per_second = 0;  // step: batch / step_seconds
  double step_seconds = 0;        // step: wall time of the step (telemetry excluded)
  // step: the process's CPU bytes at the step's peak (CPU meter) less what it held before
  // Trainer::Create began: model, gradients, optimizer state, the batch, what the loader holds,
  // activations and work space, everything the job allocated. The fidelity telemetry's passes are
  // measured apart (telemetry_peak_bytes). replan: the step's figure that triggered it.
  int64_t measured_peak_bytes = 0;
  // step with telemetry: the same measurement over the fidelity telemetry's passes.
  int64_t telemetry_peak_bytes = 0;
  // The memory model's step peak plus what the loader holds (0 without a model); replan: the
  // new plan's.
  int64_t predicted_peak_bytes = 0;
  // replan: the previous plan's predicted peak.
  int64_t previous_predicted_peak_bytes = 0;
  // replan: bytes the measurement showed above the prediction, now set aside from the budget.
  int64_t unmodelled_bytes = 0;
  std::string reason;  // replan: why, in a sentence
  std::vector<std::pair<std::string, int64_t>> probes;  // conv path -> r (0 = exact)
  std::optional<FidelityReport> fidelity;  // step: on telemetry steps
  std::string checkpoint_path;             // checkpoint: the file written
};

// Receives Trainer::Run's events on the training thread; it must not block for long.
using EventCallback = std::function<void(const TrainEvent&)>;

}  // namespace xtrain::core
