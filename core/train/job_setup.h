#pragma once

// Steps PlanTraining and Trainer::Create share: the checks that read data or run the model, the
// job's memory model, the loader's bytes and the plan. Internal to core/train.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/data/task.h"
#include "core/memory/memory_model.h"
#include "core/memory/planner.h"
#include "core/models/network.h"
#include "core/train/train_options.h"
#include "core/train/training_plan.h"

namespace xtrain::core::train_internal {

absl::Status Invalid(absl::string_view sentence);
// `status` with `context` in front of its message, same code.
absl::Status Prefixed(const absl::Status& status, absl::string_view context);

// The data checks ValidateTrainOptions leaves out because they read every example: finite inputs,
// no negative label.
absl::Status CheckDataValues(const TrainOptions& options);

// Runs `model` on two training examples and checks its output against the task: the classes
// cover the labels, dense outputs match the target's shape.
absl::Status CheckModelFitsTask(const TrainOptions& options, const TaskAdapter& adapter, NetworkImpl& model);

// The job's memory model: the task's real input and loss at batch_size, dtype and optimizer.
absl::StatusOr<MemoryModel> BuildJobMemoryModel(const TrainOptions& options, const TaskAdapter& adapter);

// One gathered batch of `batch` examples (inputs and targets as the dataset stores them).
int64_t BatchBytes(const TrainOptions& options, int64_t batch);
// What the data loader holds beside a training step: its epoch permutation (int64 per training
// example) and data.prefetch gathered batches.
int64_t LoaderBytes(const TrainOptions& options, int64_t batch);
// What the trainer itself holds beside the step and the loader: two states of LibTorch's default CPU
// generator (the job's, and during Run the process's it swapped out).
int64_t TrainerBytes();
// Everything a job holds beside its training step: LoaderBytes plus TrainerBytes.
int64_t BesideStepBytes(const TrainOptions& options, int64_t batch);

// Whether `plan` runs the lean layers: its lean_layers flag (every plan with an XConv layer has it;
// "lean layers, every conv exact" is the planner's cheapest plan without gradient noise).
bool LeanOf(const Plan& plan);

// A Plan for given `choices` without searching: per-layer rows, the step's prediction and the
// planner's fidelity proxy. Lean layers run if `lean_layers` or any layer is XConv. `budget_bytes`
// is the step's budget (0: none).
Plan PlanFor(const MemoryModel& model, const std::vector<LayerChoice>& choices, bool lean_layers, int64_t batch,
             int64_t budget_bytes, const PlannerOptions& planner);

// The plain values of `choices` on `model`.
PlanSpec SpecOf(const MemoryModel& model, const std::vector<LayerChoice>& choices, bool lean_layers,
                int64_t batch, int64_t budget_bytes);

// The choices `spec` names, after checking it against `options` and `model`: the same batch, the
// same layers, probe counts and modes the model can run, XConv only on layers XConv can run and
// only with lean layers (spec.lean_layers with every probe 0 is the lean-only plan). InvalidArgument or FailedPrecondition with
// a sentence.
absl::StatusOr<std::vector<LayerChoice>> ChoicesOf(const PlanSpec& spec, const TrainOptions& options,
                                                   const MemoryModel& model);

// The job's chain: `planned`'s own plan, then the planner's chain (PlanChain) points below it down
// to the cheapest, by decreasing peak. Peaks are the job's: the step's plus loader and trainer bytes.
std::vector<ChainPoint> PlanChain(const MemoryModel& model, const TrainingPlan& planned, int64_t batch,
                                  const PlannerOptions& planner);

// Plans the job on its memory model: with `spec`, checks it and takes its choices (which must fit
// memory.budget_bytes less the margin); otherwise plans into memory.budget_bytes, or takes
// memory.fixed_probes or the exact model without a budget.
absl::StatusOr<TrainingPlan> PlanJob(const TrainOptions& options, const MemoryModel& model, const PlanSpec* spec);

}  // namespace xtrain::core::train_internal
