#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/data/data_loader.h"
#include "core/data/task.h"
#include "core/memory/memory_model.h"
#include "core/memory/planner.h"
#include "core/models/network.h"
#include "core/train/checkpoint.h"
#include "core/train/checkpoint_store.h"
#include "core/train/fidelity_probe.h"
#include "core/train/lr_schedule.h"
#include "core/train/train_event.h"
#include "core/train/train_options.h"

namespace xtrain::core {

// Trains one model on one task (DESIGN.md §3 "Trainer steps"). Create checks the options, builds
// the model, plans it into the memory budget and converts it; Run trains epoch by epoch, evaluates
// after each, reports events, writes checkpoints, and stops early when cancelled. A job resumed
// from its checkpoint (options.checkpoint.resume_from) continues bit for bit like an uninterrupted
// one on the same machine and thread count. Not thread-safe: one thread calls Run.
class Trainer {
 public:
  // InvalidArgument with a sentence naming the field for bad options or data; ResourceExhausted
  // with the planner's message when no plan fits memory.budget_bytes; NotFound for a missing
  // init or resume file.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(TrainOptions options);

  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Trains until all epochs (or options.max_steps steps) are done; a later call continues from
  // where the previous one stopped. Cancelled when *cancel turns true (checked before every step;
  // a checkpoint is written first when checkpoint.dir and on_cancel are set). Any failure comes
  // back as a Status saying where and why; no exception escapes.
  absl::Status Run(const EventCallback& callback, const std::atomic<bool>* cancel = nullptr);

  // Validation metrics of the model as it is now (the task's metric and "val_loss");
  // FailedPrecondition without validation data.
  absl::StatusOr<std::map<std::string, double>> Evaluate();

  // Writes a checkpoint now; FailedPrecondition without checkpoint.dir.
  absl::StatusOr<std::string> SaveCheckpoint();

  // The plan the model was converted by; null without a memory budget.
  const Plan* plan() const { return plan_ ? &*plan_ : nullptr; }
  // The memory model; null when neither a budget nor memory.predict asked for one.
  const MemoryModel* memory_model() const { return memory_model_ ? &*memory_model_ : nullptr; }
  // The model being trained (after conversion).
  std::shared_ptr<NetworkImpl> model() const { return model_; }
  const TrainOptions& options() const { return options_; }

  // Every convolution's path and probe count (0 = exact), in module order.
  const std::vector<std::pair<std::string, int64_t>>& layer_probes() const { return probes_; }
  // The job's predicted peak: the memory model's step peak for this job's choices and batch plus
  // the loader's prefetched batches (data.prefetch of them); 0 without a memory model.
  int64_t predicted_peak_bytes() const { return predicted_peak_bytes_; }
  // Size of each exact micro-batch of the fidelity telemetry; 0 when telemetry is off.
  int64_t fidelity_micro_batch() const { return fidelity_micro_batch_; }

  int64_t step() const { return step_; }
  LoaderPosition position() const { return position_; }
  int64_t steps_per_epoch() const;
  // Steps of all epochs: the span of the schedule (max_steps stops a job early without changing it).
  int64_t total_steps() const;

 private:
  explicit Trainer(TrainOptions options);

  absl::Status Initialize();
  absl::Status BuildMemoryModel();
  // Freezes, casts to the job's dtype and creates the optimizer over the trained parameters.
  absl::Status PrepareParameters();
  void SetUpTelemetry();
  absl::Status CheckModelFitsTask(NetworkImpl& model);
  absl::Status ConvertModel(const std::optional<Checkpoint>& resume);
  // The memory model's per-layer choices for converted layers `layers` (others exact).
  std::vector<LayerChoice> ChoicesOf(const std::vector<XConvLayerRecord>& layers) const;
  absl::Status RunLoop(const EventCallback& callback, const std::atomic<bool>* cancel);
  // One optimizer step on `example`; fills the step event.
  absl::Status Step(ExampleBatch example, TrainEvent& event);
  absl::StatusOr<std::map<std::string, double>> EvaluateUnguarded();
  absl::StatusOr<std::string> WriteCheckpoint();
  absl::Status EmitCheckpoint(const EventCallback& callback);
  TrainEvent BaseEvent(TrainEventKind kind) const;
  Batch ToModelDtype(Batch batch) const;
  // Bytes the job holds between steps: parameters, gradients, buffers, optimizer state.
  int64_t ResidentBytes() const;
  // One gathered batch (inputs and targets as the dataset stores them).
  int64_t BatchBytes() const;
  // The loader's prefetched batches: set aside from the budget before planning.
  int64_t LoaderBytes() const;

  TrainOptions options_;
  std::unique_ptr<TaskAdapter> adapter_;
  std::shared_ptr<NetworkImpl> model_;
  std::optional<MemoryModel> memory_model_;
  std::optional<Plan> plan_;
  std::vector<torch::Tensor> trainable_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::unique_ptr<DataLoader> loader_;
  std::optional<CheckpointStore> store_;
  std::unique_ptr<FidelityProbe> fidelity_;
  std::optional<LrSchedule> schedule_;
  torch::Generator task_generator_;
  torch::Tensor global_generator_state_;  // installed at Run start, saved at its end
  std::vector<std::pair<std::string, int64_t>> probes_;
  std::vector<XConvLayerRecord> xconv_layers_;
  bool lean_layers_ = false;  // the model runs mask ReLUs and index max pools
  int64_t predicted_peak_bytes_ = 0;
  int64_t fidelity_micro_batch_ = 0;

  int64_t step_ = 0;
  LoaderPosition position_;
  double epoch_loss_sum_ = 0;
  int64_t epoch_loss_count_ = 0;
  double last_lr_ = 0;
  std::string last_checkpoint_;
  bool running_ = false;                     // inside Run: the job's generator state is installed
  std::map<std::string, double> last_metrics_;  // of the last evaluation, for the done event
  double last_epoch_loss_ = TrainEvent::kNaN;
};

}  // namespace xtrain::core
