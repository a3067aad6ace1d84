#pragma once

// The planning step of a training job, without training: what the service's dry run (PlanJob)
// reports and what Trainer::Create does first. A plan travels between processes as a PlanSpec.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/memory/memory_model.h"
#include "core/memory/planner.h"
#include "core/train/train_options.h"
#include "core/xconv/xconv_options.h"

namespace xtrain::core {

// A plan as plain values a caller can store and send to another process; Trainer::Create(options,
// spec) rebuilds the memory model there, checks the spec against it and the options, and converts
// the model as the spec says instead of planning again.
struct PlanSpec {
  // One convertible convolution.
  struct Layer {
    std::string path;                          // module path ("features.3")
    int64_t probes = 0;                        // 0: exact; else XConv with this r
    ProbeMode mode = ProbeMode::kIndependent;  // XConv's probe mode (ignored when exact)
    bool operator==(const Layer&) const = default;
  };
  std::vector<Layer> layers;   // every convertible convolution, in forward order
  bool lean_layers = false;    // ReLUs run as mask ReLUs and max pools as index max pools
  int64_t batch = 0;           // the batch_size it was planned for
  int64_t budget_bytes = 0;    // the memory.budget_bytes it was planned for (0: none)
  bool operator==(const PlanSpec&) const = default;
};

// What planning a job finds. Peaks named "job" count the training step (the memory model's
// prediction) plus what is held beside it: the data loader's bytes and the trainer's own.
struct TrainingPlan {
  PlanSpec spec;                        // the plan as plain values
  // The per-layer plan and the step's prediction. Its budget_bytes is the step's share:
  // memory.budget_bytes less loader_bytes and trainer_bytes (0 without a budget).
  Plan plan;
  int64_t loader_bytes = 0;             // the loader's epoch permutation and prefetched batches
  int64_t trainer_bytes = 0;            // the trainer's two default-CPU-generator states (job and process)
  int64_t predicted_peak_bytes = 0;     // job: the plan's step peak plus loader_bytes and trainer_bytes
  int64_t exact_peak_bytes = 0;         // job with every convolution exact and no lean layers
  int64_t minimum_budget_bytes = 0;     // the smallest memory.budget_bytes any plan fits at batch_size
  int64_t largest_batch = 0;            // largest batch_size some plan fits memory.budget_bytes (0: no budget)
  int64_t largest_exact_batch = 0;      // the same with every convolution exact (0: no budget)
  // The memory model's self-check (MemoryModel::calibration_error) and whether it is within half
  // the planner's margin; a larger error means the margin may not cover the model's mistakes.
  double calibration_error = 0;
  bool calibration_ok = true;
  std::vector<std::string> unknown_nodes;  // autograd nodes the model could not read (counted fixed)
  // With a budget and automatic probes: the plan itself, then the planner's chain (PlanChain,
  // planner.h) below it down to the cheapest, by decreasing peak (distinct points only); empty
  // otherwise. Each point's peak_bytes is the job's: the step's plus loader_bytes and trainer_bytes.
  // The scheduler packs jobs by these points (a job may be admitted, or shrunk, at any of them).
  std::vector<ChainPoint> chain;
  double seconds = 0;                   // wall time of the planning (mostly the model's calibration)

  // Readable summary: the job's figures, then the per-layer table.
  std::string Table() const;
};

// Every check of `options` that needs no model run and no pass over the data: fields in range,
// the model's name, the task's options, planner and calibration settings, the datasets' shapes
// against the model spec and batch_size. Microseconds. InvalidArgument names the field to change.
absl::Status ValidateTrainOptions(const TrainOptions& options);

// Plans `options` as Trainer::Create would, without training: validates (including the data's
// values), builds the model and its memory model, and plans it into memory.budget_bytes (without a
// budget: the exact job, or fixed_probes on every layer). ResourceExhausted when no plan fits, with
// the smallest budget that does and the largest batch that fits this one. Holds the process's job
// slot while it runs (core/util/job_slot.h): after ValidateTrainOptions passes, FailedPrecondition
// beside a live Trainer or another planning call.
absl::StatusOr<TrainingPlan> PlanTraining(const TrainOptions& options);

}  // namespace xtrain::core
