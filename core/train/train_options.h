#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/data/task.h"
#include "core/data/tensor_dataset.h"
#include "core/memory/memory_model.h"
#include "core/memory/planner.h"
#include "core/models/model_spec.h"
#include "core/util/optimizer.h"

namespace xtrain::core {

// How the learning rate moves after the warm-up.
enum class ScheduleKind {
  kNone,    // constant
  kStep,    // multiplied by gamma every step_size steps
  kCosine,  // cosine decay to zero over the remaining steps of the job
};
absl::StatusOr<ScheduleKind> ParseScheduleKind(absl::string_view name);
absl::string_view ScheduleKindName(ScheduleKind kind);

// Everything one training job needs. ValidateTrainOptions (training_plan.h) checks what it can
// without running anything; Trainer::Create and PlanTraining check the rest. Errors name the field.
struct TrainOptions {
  struct Task {
    TaskKind kind = TaskKind::kClassification;
    TaskOptions options;           // scale, hole fraction, timesteps
    bool psnr_on_hole = true;      // inpainting: PSNR over the hole only (else the whole image)
  };
  struct Data {
    std::shared_ptr<const TensorDataset> train;       // required
    std::shared_ptr<const TensorDataset> validation;  // null: no evaluation at epoch ends
    bool shuffle = true;                              // a seeded permutation per epoch
    int64_t prefetch = 2;                             // batches the loader gathers ahead
    int64_t workers = 1;                              // loader threads
  };
  struct Optimizer {
    OptimizerKind kind = OptimizerKind::kSgdMomentum;
    double lr = 0.05;            // peak learning rate (after warm-up)
    double momentum = 0.9;       // kSgdMomentum only
    double weight_decay = 0.0;
  };
  struct Schedule {
    ScheduleKind kind = ScheduleKind::kNone;
    int64_t warmup_steps = 0;    // linear ramp from lr / warmup_steps up to lr
    int64_t step_size = 1000;    // kStep: steps between decays
    double gamma = 0.1;          // kStep: decay factor
  };
  struct Memory {
    // > 0: plan the job into this (the step and what the loader holds: its permutation and
    // prefetched batches); 0: no plan
    int64_t budget_bytes = 0;
    int64_t fixed_probes = 0;    // > 0 (without a budget): every conv is XConv with this r
    bool predict = false;        // build the memory model without a budget too (predicted peaks)
    PlannerOptions planner;      // margin, probe range, layers kept exact
    MemoryModelOptions model;    // calibration of the memory model
  };
  struct Checkpointing {
    std::string dir;             // where checkpoints go; empty: none
    int64_t every_steps = 0;     // 0: only at the end (and on cancel)
    int64_t keep = 3;            // newest checkpoints kept in dir
    bool on_cancel = true;       // write one when Run is cancelled (a preempted job resumes)
    std::string resume_from;     // a checkpoint of this job to continue from; empty: fresh start
  };
  struct Init {
    std::string path;            // a checkpoint of an earlier job or a torch::save(module) file
    bool strict = true;          // every parameter and buffer must be present with its shape
  };

  ModelSpec model;
  Task task;
  Data data;
  int64_t batch_size = 32;
  int64_t epochs = 1;
  int64_t max_steps = 0;          // > 0: stop (with a checkpoint) after this many steps in all
  uint64_t seed = 0;              // data order, task randomness, probes, dropout
  Optimizer optimizer;
  Schedule schedule;
  double clip_grad_norm = 0.0;    // max global gradient norm; 0 = off
  torch::ScalarType dtype = torch::kFloat;  // kFloat or kBFloat16 (model and inputs)
  Memory memory;
  Checkpointing checkpoint;
  Init init;
  std::vector<std::string> freeze;  // parameter-path prefixes ("features.0") not trained
  // Gradient-fidelity telemetry every this many steps (fidelity_probe.h); 0 = off. At 100 it
  // costs about 2% of the training time (two extra passes per measurement).
  int64_t fidelity_interval = 100;
  int threads = 0;                // intra-op threads, set process-wide by Run; 0 = leave as is

  // Seams for tests of the trainer's closed loop; 0 in real jobs.
  struct TestHooks {
    // Bytes each step allocates before its forward and holds to its end: a real allocation the
    // memory model does not know, so the measured peak exceeds the prediction by this much.
    int64_t unmodelled_step_bytes = 0;
  };
  TestHooks test_hooks;
};

}  // namespace xtrain::core
