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
#include "core/train/training_plan.h"
#include "core/util/job_slot.h"

namespace xtrain::core {

// Trains one model on one task (DESIGN.md §3 "Trainer steps"). Create checks the options, builds
// the model, plans it into the memory budget and converts it; Run trains epoch by epoch, evaluates
// after each, reports events, writes checkpoints, and stops early when cancelled. A job resumed
// from its checkpoint (options.checkpoint.resume_from) continues bit for bit like an uninterrupted
// one on the same machine and thread count. Not thread-safe: one thread calls Run.
//
// One job per process: from Create until it is destroyed a Trainer holds the process's job slot
// (core/util/job_slot.h), because it sets process-wide state (the default CPU generator during
// Run, the intra-op thread count) and its measured peaks read the process-wide CPU meter. A second
// Trainer, a PlanTraining call or a MemoryModel::Build beside it fails with FailedPrecondition.
//
// Closed loop: after every step of a budgeted job the measured peak is compared with the
// prediction; when it exceeds it by more than half the planner's margin, the job is re-planned at
// the same budget less the excess, the live model converted in place, and a kReplan event reported.
class Trainer {
 public:
  // InvalidArgument with a sentence naming the field for bad options or data; ResourceExhausted
  // with the smallest budget that fits when no plan fits memory.budget_bytes; NotFound for a
  // missing init or resume file; FailedPrecondition while another job holds the process (bad
  // options are reported first: ValidateTrainOptions runs before the job slot is claimed).
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(TrainOptions options);
  // The same with a plan made earlier, possibly in another process (PlanTraining's spec): the
  // memory model is rebuilt here and the spec checked against it and the options (same layers and
  // batch, fits memory.budget_bytes less the margin), then its choices are used instead of planning
  // again. A mismatch is InvalidArgument or FailedPrecondition with a sentence. With
  // checkpoint.resume_from the checkpoint's model is converted to the spec (a job taking a new
  // plan when it resumes).
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(TrainOptions options, const PlanSpec& plan);

  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Trains until all epochs (or options.max_steps steps) are done; a later call continues from
  // where the previous one stopped. Cancelled when *cancel turns true (checked before every step;
  // a checkpoint is written first when checkpoint.dir and on_cancel are set). Any failure comes
  // back as a Status saying where and why; no exception escapes. ResourceExhausted when a step
  // measured above the prediction and no plan fits the budget with the excess set aside.
  absl::Status Run(const EventCallback& callback, const std::atomic<bool>* cancel = nullptr);

  // Validation metrics of the model as it is now (the task's metric and "val_loss");
  // FailedPrecondition without validation data.
  absl::StatusOr<std::map<std::string, double>> Evaluate();

  // Switches the live model to `spec` between steps (the service's scheduler shrinking or growing a
  // job): memory.budget_bytes becomes spec.budget_bytes, the layers take the spec's choices in
  // place (parameters and optimizer state carry over). The spec is checked like Create's (same
  // layers and batch, fits its budget less the margin and any bytes the closed loop set aside);
  // on a refusal nothing changes. Call it from Run's callback or between Run calls.
  absl::Status Replan(const PlanSpec& spec);

  // Writes a checkpoint now; FailedPrecondition without checkpoint.dir.
  absl::StatusOr<std::string> SaveCheckpoint();

  // The plan the model runs (after any re-plan); null without a budget or a given plan.
  const Plan* plan() const { return planned_ && training_plan_ ? &training_plan_->plan : nullptr; }
  // The job's plan with its figures (as PlanTraining reports them); null without a memory model.
  const TrainingPlan* training_plan() const { return training_plan_ ? &*training_plan_ : nullptr; }
  // The memory model; null when neither a budget, a plan nor memory.predict asked for one.
  const MemoryModel* memory_model() const { return memory_model_ ? &*memory_model_ : nullptr; }
  // The model being trained (after conversion).
  std::shared_ptr<NetworkImpl> model() const { return model_; }
  const torch::optim::Optimizer& optimizer() const { return *optimizer_; }
  const TrainOptions& options() const { return options_; }

  // Every convolution's path and probe count (0 = exact), in module order.
  const std::vector<std::pair<std::string, int64_t>>& layer_probes() const { return probes_; }
  // The job's predicted peak: the memory model's step peak for the choices the model runs and
  // batch, plus what the loader and the trainer hold beside it (TrainingPlan::loader_bytes and
  // trainer_bytes); 0 without a memory model.
  int64_t predicted_peak_bytes() const { return predicted_peak_bytes_; }
  // Bytes the measurements showed above the prediction and re-planning set aside (0 until a re-plan).
  int64_t unmodelled_bytes() const { return unmodelled_bytes_; }
  // The meter's reading when Create began: measured peaks are relative to it.
  int64_t baseline_bytes() const { return baseline_bytes_; }
  // Size of each exact micro-batch of the fidelity telemetry; 0 when telemetry is off.
  int64_t fidelity_micro_batch() const { return fidelity_micro_batch_; }

  int64_t step() const { return step_; }
  LoaderPosition position() const { return position_; }
  int64_t steps_per_epoch() const;
  // Steps of all epochs: the span of the schedule (max_steps stops a job early without changing it).
  int64_t total_steps() const;

 private:
  Trainer(TrainOptions options, JobSlot slot);
  static absl::StatusOr<std::unique_ptr<Trainer>> CreateImpl(TrainOptions options, const PlanSpec* spec);

  absl::Status Initialize(const PlanSpec* spec);
  // Freezes, casts to the job's dtype and creates the optimizer over the trained parameters.
  absl::Status PrepareParameters();
  // Sets requires_grad off on the parameters under options.freeze; InvalidArgument for a prefix
  // that matches none.
  absl::Status Freeze();
  void SetUpTelemetry();
  // Converts the fresh model: as the checkpoint's layers on resume, else as the plan (or fixed_probes).
  absl::Status ConvertModel(const std::optional<Checkpoint>& resume);
  // Converts the live model to `choices` in place: XConv layers take their new settings, torch
  // convolutions and layers become XConv and lean as the plan needs (`lean_layers`: the plan runs mask
  // ReLUs and index max pools, also with every convolution exact). Parameters stay the same
  // tensors, so the optimizer's state carries over; freezing is applied again.
  absl::Status ApplyChoices(const std::vector<LayerChoice>& choices, bool lean_layers, uint64_t seed);
  // probes_, xconv_layers_ and lean_layers_ from the model as it runs now.
  void RecordLayers();
  // The memory model's choices for the layers the model runs now.
  std::vector<LayerChoice> CurrentChoices() const;
  // Replaces the plan (table, spec, predicted peak) by one for `plan`.
  void SetPlan(Plan plan);
  absl::Status RunLoop(const EventCallback& callback, const std::atomic<bool>* cancel);
  // One optimizer step on `example`; fills the step event.
  absl::Status Step(ExampleBatch example, TrainEvent& event);
  // The closed loop after a step: re-plans when `step` measured too far above the prediction.
  absl::Status FollowMeasurement(const TrainEvent& step, const EventCallback& emit);
  absl::StatusOr<std::map<std::string, double>> EvaluateUnguarded();
  absl::Status ReplanUnguarded(const PlanSpec& spec);
  absl::StatusOr<std::string> WriteCheckpoint();
  absl::Status EmitCheckpoint(const EventCallback& callback);
  TrainEvent BaseEvent(TrainEventKind kind) const;
  Batch ToModelDtype(Batch batch) const;

  JobSlot slot_;  // first member: released after everything the job holds is gone
  TrainOptions options_;
  int64_t baseline_bytes_ = 0;  // the CPU meter's reading when Create began
  std::unique_ptr<TaskAdapter> adapter_;
  std::shared_ptr<NetworkImpl> model_;
  std::optional<MemoryModel> memory_model_;
  std::optional<TrainingPlan> training_plan_;
  bool planned_ = false;  // a budget or a given plan decides the layers (plan() is set)
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
  int64_t unmodelled_bytes_ = 0;
  int replans_ = 0;
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
