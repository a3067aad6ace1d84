#include "core/train/training_plan.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/memory/cpu_memory_meter.h"
#include "core/models/model_zoo.h"
#include "core/train/job_setup.h"
#include "core/util/job_slot.h"
#include "core/util/torch_guard.h"

namespace xtrain::core {
namespace {

using train_internal::Invalid;
using train_internal::Prefixed;

std::string ShapeText(torch::IntArrayRef sizes) { return absl::StrCat("[", absl::StrJoin(sizes, ", "), "]"); }

absl::Status CheckFields(const TrainOptions& o) {
  if (o.batch_size < 1) {
    return Invalid(absl::StrCat("batch_size is ", o.batch_size, "; set batch_size to 1 or more"));
  }
  if (o.epochs < 1) return Invalid(absl::StrCat("epochs is ", o.epochs, "; set epochs to 1 or more"));
  if (o.max_steps < 0) {
    return Invalid(absl::StrCat("max_steps is ", o.max_steps, "; use 0 (all epochs) or a positive count"));
  }
  if (!std::isfinite(o.optimizer.lr) || o.optimizer.lr <= 0) {
    return Invalid(absl::StrCat("optimizer.lr is ", o.optimizer.lr,
                                "; set a positive, finite learning rate such as 0.05"));
  }
  if (!(o.optimizer.momentum >= 0 && o.optimizer.momentum < 1)) {
    return Invalid(absl::StrCat("optimizer.momentum is ", o.optimizer.momentum, "; use a value in [0, 1)"));
  }
  if (!std::isfinite(o.optimizer.weight_decay) || o.optimizer.weight_decay < 0) {
    return Invalid(absl::StrCat("optimizer.weight_decay is ", o.optimizer.weight_decay, "; use 0 or more"));
  }
  if (o.schedule.warmup_steps < 0) {
    return Invalid(absl::StrCat("schedule.warmup_steps is ", o.schedule.warmup_steps, "; use 0 or more"));
  }
  if (o.schedule.kind == ScheduleKind::kStep) {
    if (o.schedule.step_size < 1) {
      return Invalid(absl::StrCat("schedule.step_size is ", o.schedule.step_size, "; use 1 or more steps"));
    }
    if (!(o.schedule.gamma > 0 && o.schedule.gamma <= 1)) {
      return Invalid(absl::StrCat("schedule.gamma is ", o.schedule.gamma, "; use a factor in (0, 1]"));
    }
  }
  if (!std::isfinite(o.clip_grad_norm) || o.clip_grad_norm < 0) {
    return Invalid(absl::StrCat("clip_grad_norm is ", o.clip_grad_norm, "; use 0 (off) or a positive norm"));
  }
  if (o.dtype == torch::kHalf) {
    return Invalid(
        "dtype float16 is not supported on the CPU (LibTorch has no half-precision CPU convolution "
        "kernels); use float32 or bfloat16");
  }
  if (o.dtype != torch::kFloat && o.dtype != torch::kBFloat16) {
    return Invalid(absl::StrCat("dtype ", c10::toString(o.dtype),
                                " is not a training dtype; use float32 or bfloat16"));
  }
  if (o.checkpoint.every_steps < 0) {
    return Invalid(absl::StrCat("checkpoint.every_steps is ", o.checkpoint.every_steps, "; use 0 or more"));
  }
  if (o.checkpoint.every_steps > 0 && o.checkpoint.dir.empty()) {
    return Invalid("checkpoint.every_steps is set but checkpoint.dir is empty; set checkpoint.dir");
  }
  if (o.checkpoint.keep < 1) {
    return Invalid(absl::StrCat("checkpoint.keep is ", o.checkpoint.keep, "; keep at least 1 checkpoint"));
  }
  if (o.fidelity_interval < 0) {
    return Invalid(absl::StrCat("fidelity_interval is ", o.fidelity_interval, "; use 0 (off) or a step count"));
  }
  if (o.threads < 0) return Invalid(absl::StrCat("threads is ", o.threads, "; use 0 or more"));
  if (o.data.prefetch < 1 || o.data.workers < 1) {
    return Invalid("data.prefetch and data.workers must be 1 or more");
  }
  for (const std::string& prefix : o.freeze) {
    if (prefix.empty()) return Invalid("freeze has an empty prefix; name parameter paths such as 'features.0'");
  }
  if (o.test_hooks.unmodelled_step_bytes < 0) {
    return Invalid("test_hooks.unmodelled_step_bytes must be 0 or more");
  }
  return absl::OkStatus();
}

absl::Status CheckMemoryFields(const TrainOptions& o) {
  const TrainOptions::Memory& m = o.memory;
  if (m.budget_bytes < 0) {
    return Invalid(absl::StrCat("memory.budget_bytes is ", m.budget_bytes,
                                "; use 0 (no plan) or a positive byte count"));
  }
  if (m.fixed_probes < 0) {
    return Invalid(absl::StrCat("memory.fixed_probes is ", m.fixed_probes,
                                "; use 0 (exact) or a positive probe count"));
  }
  if (m.budget_bytes > 0 && m.fixed_probes > 0) {
    return Invalid(
        "memory.budget_bytes and memory.fixed_probes are both set; set the budget (the planner picks "
        "the probes) or fixed_probes, not both");
  }
  const PlannerOptions& p = m.planner;
  if (!(p.margin >= 0 && p.margin < 1)) {
    return Invalid(absl::StrCat("memory.planner.margin is ", p.margin, "; use a fraction of the budget in [0, 1)"));
  }
  if (p.min_probes < 1 || p.max_probes < p.min_probes) {
    return Invalid(absl::StrCat("memory.planner.min_probes is ", p.min_probes, " and max_probes ", p.max_probes,
                                "; need 1 <= min_probes <= max_probes"));
  }
  if (p.modes.empty()) return Invalid("memory.planner.modes is empty; allow at least one probe mode");
  for (ProbeMode mode : p.modes) {
    if (std::find(m.model.modes.begin(), m.model.modes.end(), mode) == m.model.modes.end()) {
      return Invalid(absl::StrCat("memory.planner.modes has ", std::string(ProbeModeName(mode)),
                                  ", which memory.model.modes does not calibrate; add it there"));
    }
  }
  const MemoryModelOptions& c = m.model;
  if (c.calibration_batch < 1) {
    return Invalid(absl::StrCat("memory.model.calibration_batch is ", c.calibration_batch, "; use 1 or more"));
  }
  const std::vector<int64_t>& points = c.calibration_probes;
  if (points.size() < 2 || points[0] < 1 || !std::is_sorted(points.begin(), points.end()) ||
      std::adjacent_find(points.begin(), points.end()) != points.end()) {
    return Invalid("memory.model.calibration_probes needs at least two increasing probe counts of 1 or more");
  }
  if (c.modes.empty()) return Invalid("memory.model.modes is empty; calibrate at least one probe mode");
  return absl::OkStatus();
}

absl::Status CheckModelFields(const TrainOptions& o) {
  const std::vector<std::string> names = ModelNames();
  if (o.model.name == kTorchScriptModel) {
    if (o.model.script_path.empty()) {
      return Invalid("model.name is torchscript but model.script_path is empty; give the torch.jit.save'd module");
    }
  } else if (std::find(names.begin(), names.end(), o.model.name) == names.end()) {
    return Invalid(absl::StrCat("model.name '", o.model.name, "' is not in the zoo; use one of ",
                                absl::StrJoin(names, ", "), ", or torchscript for your own module"));
  }
  if (o.model.dims != 2 && o.model.dims != 3) {
    return Invalid(absl::StrCat("model.dims is ", o.model.dims, "; set model.dims to 2 (images) or 3 (volumes)"));
  }
  return absl::OkStatus();
}

// A dataset's shapes against the task, the model spec and batch_size (nothing reads its values).
absl::Status CheckDatasetShapes(const std::string& field, const TensorDataset& data, const TrainOptions& o) {
  if (absl::Status s = ValidateDataset(data); !s.ok()) return Prefixed(s, absl::StrCat(field, ": "));
  if (data.size() == 0) return Invalid(absl::StrCat(field, " is empty; give it examples"));
  const int64_t dims = data.inputs.dim() - 2;
  if (dims != o.model.dims) {
    return Invalid(absl::StrCat("model.dims is ", o.model.dims, " but ", field, " holds ", dims,
                                "-D samples of shape ", ShapeText(data.inputs.sizes().slice(1)),
                                "; set model.dims to ", dims));
  }
  const int64_t channels = InputChannels(o.task.kind, data.inputs.size(1));
  if (o.model.in_channels != channels) {
    return Invalid(absl::StrCat("model.in_channels is ", o.model.in_channels, " but the ",
                                TaskKindName(o.task.kind), " task feeds ", channels, " channel(s) from ",
                                field, "; set model.in_channels to ", channels));
  }
  const bool labels = o.task.kind == TaskKind::kClassification || o.task.kind == TaskKind::kSegmentation;
  if (labels && !data.targets.defined()) {
    return Invalid(absl::StrCat("the ", TaskKindName(o.task.kind), " task needs targets but ", field,
                                " has none; give labels or masks"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateTrainOptions(const TrainOptions& o) {
  if (absl::Status s = CheckFields(o); !s.ok()) return s;
  if (absl::Status s = CheckMemoryFields(o); !s.ok()) return s;
  if (absl::Status s = CheckModelFields(o); !s.ok()) return s;
  if (absl::StatusOr<std::unique_ptr<TaskAdapter>> adapter = MakeTaskAdapter(o.task.kind, o.task.options);
      !adapter.ok()) {
    return Prefixed(adapter.status(), "task.options: ");
  }
  if (o.data.train == nullptr) return Invalid("data.train is not set; give the training examples");
  if (absl::Status s = CheckDatasetShapes("data.train", *o.data.train, o); !s.ok()) return s;
  if (o.data.validation) {
    if (absl::Status s = CheckDatasetShapes("data.validation", *o.data.validation, o); !s.ok()) return s;
  }
  if (o.data.train->size() < o.batch_size) {
    return Invalid(absl::StrCat("data.train has ", o.data.train->size(), " examples, fewer than batch_size ",
                                o.batch_size, "; lower batch_size or add examples"));
  }
  return absl::OkStatus();
}

absl::StatusOr<TrainingPlan> PlanTraining(const TrainOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (absl::Status s = ValidateTrainOptions(options); !s.ok()) return s;
  absl::StatusOr<JobSlot> slot = JobSlot::Acquire(absl::StrCat("a PlanTraining call (model ", options.model.name, ")"));
  if (!slot.ok()) return slot.status();
  return GuardExceptions("planning the job failed", [&]() -> absl::StatusOr<TrainingPlan> {
    CpuMemoryMeter::Install();
    if (absl::Status s = train_internal::CheckDataValues(options); !s.ok()) return s;
    absl::StatusOr<std::unique_ptr<TaskAdapter>> adapter = MakeTaskAdapter(options.task.kind, options.task.options);
    if (!adapter.ok()) return Prefixed(adapter.status(), "task.options: ");
    {
      absl::StatusOr<std::shared_ptr<NetworkImpl>> model = BuildModel(options.model);
      if (!model.ok()) return model.status();
      if (absl::Status s = train_internal::CheckModelFitsTask(options, **adapter, **model); !s.ok()) return s;
    }
    absl::StatusOr<MemoryModel> memory;
    {
      JobSlot::Nested nested(*slot);
      memory = train_internal::BuildJobMemoryModel(options, **adapter);
    }
    if (!memory.ok()) return memory.status();
    absl::StatusOr<TrainingPlan> plan = train_internal::PlanJob(options, *memory, nullptr);
    if (plan.ok()) plan->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return plan;
  });
}

std::string TrainingPlan::Table() const {
  std::string out = absl::StrFormat(
      "job at batch %d: predicted peak %d bytes (step %d + loader %d + trainer %d), exact %d; budget %d, smallest "
      "budget %d\n",
      spec.batch, predicted_peak_bytes, plan.predicted_peak_bytes(), loader_bytes, trainer_bytes, exact_peak_bytes,
      spec.budget_bytes, minimum_budget_bytes);
  if (spec.budget_bytes > 0) {
    absl::StrAppendFormat(&out, "largest batch at this budget: %d with a plan, %d exact\n", largest_batch,
                          largest_exact_batch);
  }
  absl::StrAppendFormat(&out, "lean layers: %s; memory model calibration error %.4f%% (%s)\n",
                        spec.lean_layers ? "yes" : "no", calibration_error * 100,
                        calibration_ok ? "within half the margin" : "MORE than half the margin");
  return out + plan.Table();
}

}  // namespace xtrain::core
