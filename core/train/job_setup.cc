#include "core/train/job_setup.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "core/models/model_zoo.h"
#include "core/train/task_metrics.h"
#include "core/util/generator_state.h"

namespace xtrain::core::train_internal {
namespace {

std::string ShapeText(torch::IntArrayRef sizes) { return absl::StrCat("[", absl::StrJoin(sizes, ", "), "]"); }

// Largest label of the train and validation targets (classification, segmentation).
int64_t MaxLabel(const TrainOptions& o) {
  int64_t high = o.data.train->targets.max().item<int64_t>();
  if (o.data.validation && o.data.validation->targets.defined()) {
    high = std::max(high, o.data.validation->targets.max().item<int64_t>());
  }
  return high;
}

// InvalidArgument unless `outputs` channels cover every label; `what` and `field` name them.
absl::Status CheckLabels(const TrainOptions& o, int64_t outputs, absl::string_view what, absl::string_view field) {
  const int64_t needed = MaxLabel(o) + 1;
  if (outputs >= needed) return absl::OkStatus();
  return Invalid(absl::StrCat(what, " up to ", needed - 1, " but ", field, " is ", outputs, "; set ", field,
                              " to at least ", needed));
}

absl::Status CheckValues(const std::string& field, const TensorDataset& data, const TrainOptions& o) {
  const bool labels = o.task.kind == TaskKind::kClassification || o.task.kind == TaskKind::kSegmentation;
  if (labels) {
    const int64_t low = data.targets.min().item<int64_t>();
    if (low < 0) return Invalid(absl::StrCat(field, " has label ", low, "; labels must be 0 or more"));
  }
  if (!torch::isfinite(data.inputs).all().item<bool>()) {
    return Invalid(absl::StrCat(field, " has NaN or infinite inputs; clean the data"));
  }
  return absl::OkStatus();
}

// Puts the model back into training mode on scope exit.
class EvalMode {
 public:
  explicit EvalMode(torch::nn::Module& model) : model_(model) { model_.eval(); }
  ~EvalMode() { model_.train(); }
  EvalMode(const EvalMode&) = delete;
  EvalMode& operator=(const EvalMode&) = delete;

 private:
  torch::nn::Module& model_;
};

int64_t Usable(int64_t budget, const PlannerOptions& planner) {
  return static_cast<int64_t>(std::floor(static_cast<double>(budget) * (1.0 - planner.margin)));
}

// Whether some plan (or, exact_only, the unconverted model) fits the job at `batch` into `budget`.
bool JobFits(const TrainOptions& o, const MemoryModel& model, int64_t budget, int64_t batch, bool exact_only) {
  const int64_t step_budget = budget - BesideStepBytes(o, batch);
  if (step_budget <= 0) return false;
  if (exact_only) return model.PredictPeak(model.ExactChoices(), batch) <= Usable(step_budget, o.memory.planner);
  return MinimumBudget(model, batch, o.memory.planner) <= step_budget;
}

// The largest batch_size the job fits `budget` with, up to the training set's size; 0 if none.
int64_t LargestJobBatch(const TrainOptions& o, const MemoryModel& model, int64_t budget, bool exact_only) {
  const int64_t cap = o.data.train->size();
  if (!JobFits(o, model, budget, 1, exact_only)) return 0;
  int64_t low = 1, high = 2;
  while (high <= cap && JobFits(o, model, budget, high, exact_only)) {
    low = high;
    high *= 2;
  }
  high = std::min(high, cap + 1);
  while (high - low > 1) {
    const int64_t mid = low + (high - low) / 2;
    (JobFits(o, model, budget, mid, exact_only) ? low : high) = mid;
  }
  return low;
}

// The planner's variance per probe of one layer (planner.cc's proxy): C_in/groups for independent
// probes, times C_in for probes over all channels.
double VariancePerProbe(const ConvLayer& layer, ProbeMode mode) {
  const double per_group = static_cast<double>(layer.in_channels()) / static_cast<double>(layer.groups);
  return mode == ProbeMode::kIndependent ? per_group : per_group * static_cast<double>(layer.in_channels());
}

// ResourceExhausted for a budget below every plan of the job, saying what would fit.
absl::Status Refusal(const TrainOptions& o, const MemoryModel& model, int64_t minimum, int64_t beside) {
  const int64_t budget = o.memory.budget_bytes;
  const int64_t largest = LargestJobBatch(o, model, budget, false);
  return absl::ResourceExhaustedError(absl::StrCat(
      "memory.budget_bytes ", budget, " is below the smallest budget any plan fits at batch_size ", o.batch_size,
      ": ", minimum, " bytes (the cheapest plan's step, the planner's ", o.memory.planner.margin * 100,
      "% margin and ", beside, " bytes held beside the step: the data loader's epoch permutation and ",
      o.data.prefetch, " prefetched batches, and the trainer's generator states); raise memory.budget_bytes to at "
      "least ", minimum, ", or ",
      largest > 0 ? absl::StrCat("lower batch_size to ", largest, " or less (the largest that fits)")
                  : std::string("no batch_size fits this budget (the model alone does not)")));
}

}  // namespace

absl::Status Invalid(absl::string_view sentence) { return absl::InvalidArgumentError(sentence); }

absl::Status Prefixed(const absl::Status& status, absl::string_view context) {
  return absl::Status(status.code(), absl::StrCat(context, status.message()));
}

absl::Status CheckDataValues(const TrainOptions& o) {
  if (absl::Status s = CheckValues("data.train", *o.data.train, o); !s.ok()) return s;
  if (o.data.validation) return CheckValues("data.validation", *o.data.validation, o);
  return absl::OkStatus();
}

absl::Status CheckModelFitsTask(const TrainOptions& o, const TaskAdapter& adapter, NetworkImpl& model) {
  const TensorDataset& data = *o.data.train;
  const int64_t n = std::min<int64_t>(2, data.size());
  torch::Generator scratch = at::make_generator<at::CPUGeneratorImpl>(0);
  absl::StatusOr<Batch> batch = adapter.Make(
      data.inputs.narrow(0, 0, n), data.targets.defined() ? data.targets.narrow(0, 0, n) : torch::Tensor(),
      scratch);
  if (!batch.ok()) return Prefixed(batch.status(), "data.train: ");
  torch::Tensor output;
  // Not the guard: a model that cannot run on the data is the user's mistake, InvalidArgument with
  // what to change after LibTorch's message.
  try {
    torch::NoGradGuard no_grad;
    EvalMode eval(model);
    output = model.forward(batch->input);
  } catch (const c10::Error& e) {
    const bool script = o.model.name == kTorchScriptModel;
    return Invalid(absl::StrCat("model ", o.model.name, " cannot run on the ", TaskKindName(o.task.kind),
                                " inputs of shape ", ShapeText(batch->input.sizes().slice(1)), ": ",
                                e.what_without_backtrace(),
                                script ? "; export a module whose forward takes a batch of inputs of this shape "
                                         "(N first), or resize the data (dataset.image_size)"
                                       : "; change the model (depth, scale) or the data's spatial size"));
  }
  const std::string task(TaskKindName(o.task.kind));
  const std::string got = ShapeText(output.sizes().slice(1));
  switch (o.task.kind) {
    case TaskKind::kClassification: {
      if (output.dim() != 2) {
        return Invalid(absl::StrCat("the classification task needs a model that outputs (N, classes) "
                                    "logits, such as small_cnn or resnet18; model ",
                                    o.model.name, " outputs ", got, " per sample"));
      }
      return CheckLabels(o, output.size(1), "the data has labels", "model.classes");
    }
    case TaskKind::kSegmentation: {
      if (output.dim() != batch->input.dim() || output.sizes().slice(2) != batch->input.sizes().slice(2)) {
        return Invalid(absl::StrCat("the segmentation task needs a dense model whose output keeps the "
                                    "input's spatial size, such as unet; model ",
                                    o.model.name, " outputs ", got, " per sample"));
      }
      return CheckLabels(o, output.size(1), "the masks have classes", "model.out_channels");
    }
    case TaskKind::kSuperResolution:
    case TaskKind::kInpainting:
    case TaskKind::kGenerative: {
      const torch::Tensor& target = batch->target;
      if (output.dim() != target.dim()) {
        return Invalid(absl::StrCat("the ", task, " task needs a dense model (unet, srnet, dncnn, ddpm_unet); ",
                                    "model ", o.model.name, " outputs ", got, " per sample"));
      }
      if (output.size(1) != target.size(1)) {
        return Invalid(absl::StrCat("the ", task, " target has ", target.size(1),
                                    " channel(s) but the model outputs ", output.size(1),
                                    "; set model.out_channels to ", target.size(1)));
      }
      if (output.sizes() != target.sizes()) {
        std::string advice = "change the model so its output matches the target";
        if (o.task.kind == TaskKind::kSuperResolution) {
          advice = absl::StrCat("set model.scale to task.options.scale (", o.task.options.scale,
                                "), the factor the task downsamples by");
        }
        return Invalid(absl::StrCat("the model outputs ", got, " per sample but the ", task, " target is ",
                                    ShapeText(target.sizes().slice(1)), "; ", advice));
      }
      return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<MemoryModel> BuildJobMemoryModel(const TrainOptions& o, const TaskAdapter& adapter) {
  // The memory model sees the task's real input and loss, at the job's batch and dtype.
  torch::Generator scratch = at::make_generator<at::CPUGeneratorImpl>(0);
  absl::StatusOr<Batch> sample = adapter.Make(
      o.data.train->inputs.narrow(0, 0, 1),
      o.data.train->targets.defined() ? o.data.train->targets.narrow(0, 0, 1) : torch::Tensor(), scratch);
  if (!sample.ok()) return Prefixed(sample.status(), "data.train: ");
  const ModelSpec spec = o.model;
  ModelFactory factory = [spec]() -> absl::StatusOr<std::shared_ptr<torch::nn::Module>> {
    absl::StatusOr<std::shared_ptr<NetworkImpl>> model = BuildModel(spec);
    if (!model.ok()) return model.status();
    return std::shared_ptr<torch::nn::Module>(*std::move(model));
  };
  ForwardFn forward = [](torch::nn::Module& model, const torch::Tensor& input) {
    return dynamic_cast<NetworkImpl&>(model).forward(input);
  };
  TrainingStep step;
  step.sample_sizes = sample->input.sizes().slice(1).vec();
  step.batch = o.batch_size;
  step.dtype = o.dtype;
  step.loss = TaskLossKind(o.task.kind);
  step.optimizer = o.optimizer.kind;
  absl::StatusOr<MemoryModel> memory = MemoryModel::Build(factory, forward, step, o.memory.model);
  if (memory.ok()) return memory;
  const absl::StatusCode code = memory.status().code();
  absl::string_view message = memory.status().message();
  const bool calibration = absl::ConsumePrefix(&message, "memory model: ");  // not the job slot's refusal
  if (o.model.name == kTorchScriptModel &&
      (code == absl::StatusCode::kInternal || (code == absl::StatusCode::kFailedPrecondition && calibration))) {
    // For a zoo net an inconsistent calibration is xtrain's bug; for a user's module, a graph the
    // memory model cannot follow.
    return absl::FailedPreconditionError(absl::StrCat(
        "memory model: the module cannot be calibrated (", message,
        "); its forward must run the same ops on batches of every size, so export it without branches or "
        "shapes that depend on the batch"));
  }
  return absl::Status(code, absl::StrCat("memory model: ", message));
}

int64_t BatchBytes(const TrainOptions& o, int64_t batch) {
  const TensorDataset& data = *o.data.train;
  int64_t bytes = static_cast<int64_t>(data.inputs[0].nbytes());
  if (data.targets.defined()) bytes += static_cast<int64_t>(data.targets[0].nbytes());
  return bytes * batch;
}

int64_t LoaderBytes(const TrainOptions& o, int64_t batch) {
  const int64_t permutation = o.data.train->size() * static_cast<int64_t>(sizeof(int64_t));
  return permutation + BatchBytes(o, batch) * o.data.prefetch;
}

int64_t TrainerBytes() {
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  return 2 * static_cast<int64_t>(GeneratorState(generator).nbytes());
}

int64_t BesideStepBytes(const TrainOptions& o, int64_t batch) { return LoaderBytes(o, batch) + TrainerBytes(); }

bool LeanOf(const Plan& plan) { return plan.lean_layers || plan.converted_layers() > 0; }

Plan PlanFor(const MemoryModel& model, const std::vector<LayerChoice>& choices, bool lean_layers, int64_t batch,
             int64_t budget_bytes, const PlannerOptions& planner) {
  Plan plan;
  plan.batch = batch;
  plan.budget_bytes = budget_bytes;
  plan.usable_bytes = budget_bytes > 0 ? Usable(budget_bytes, planner) : 0;
  plan.choices = choices;
  plan.lean_layers = lean_layers || plan.converted_layers() > 0;
  plan.prediction = model.Predict(choices, batch, plan.lean_layers);
  plan.exact_peak_bytes = model.PredictPeak(model.ExactChoices(), batch);
  double total = 0;
  for (const ConvLayer& layer : model.layers()) total += static_cast<double>(layer.parameters());
  double weight_total = 0, fidelity = 0;
  for (size_t l = 0; l < model.layers().size(); ++l) {
    const ConvLayer& layer = model.layers()[l];
    const LayerChoice& c = choices[l];
    LayerPlan row;
    row.path = layer.path;
    row.choice = c;
    row.exact_kept_bytes = model.InputBytes(l, batch);
    row.kept_bytes = c.xconv ? model.SketchBytes(l, c, batch) : row.exact_kept_bytes;
    auto measured = planner.layer_weight.find(layer.path);
    row.weight = measured != planner.layer_weight.end() ? measured->second
                                                        : static_cast<double>(layer.parameters()) / std::max(total, 1.0);
    if (c.xconv) {
      const double per_probe = VariancePerProbe(layer, c.mode);
      row.fidelity = static_cast<double>(c.probes) / (static_cast<double>(c.probes) + per_probe);
      plan.variance += row.weight * per_probe / static_cast<double>(c.probes);
    }
    weight_total += row.weight;
    fidelity += row.weight * row.fidelity;
    plan.layers.push_back(row);
  }
  plan.fidelity = weight_total > 0 ? fidelity / weight_total : 1.0;
  return plan;
}

PlanSpec SpecOf(const MemoryModel& model, const std::vector<LayerChoice>& choices, bool lean_layers,
                int64_t batch, int64_t budget_bytes) {
  PlanSpec spec;
  for (size_t l = 0; l < model.layers().size(); ++l) {
    const LayerChoice& c = choices[l];
    spec.layers.push_back({model.layers()[l].path, c.xconv ? c.probes : 0, c.mode});
  }
  spec.lean_layers = lean_layers;
  spec.batch = batch;
  spec.budget_bytes = budget_bytes;
  return spec;
}

absl::StatusOr<std::vector<LayerChoice>> ChoicesOf(const PlanSpec& spec, const TrainOptions& o,
                                                   const MemoryModel& model) {
  if (o.memory.fixed_probes > 0) {
    return Invalid(
        "memory.fixed_probes is set but a plan was given; the plan sets every layer's probes, so set "
        "memory.fixed_probes to 0");
  }
  if (spec.batch != o.batch_size) {
    return Invalid(absl::StrCat("the plan is for batch ", spec.batch, " but batch_size is ", o.batch_size,
                                "; set batch_size to ", spec.batch, " or plan again (PlanTraining)"));
  }
  std::vector<std::string> planned, present;
  for (const PlanSpec::Layer& layer : spec.layers) planned.push_back(layer.path);
  for (const ConvLayer& layer : model.layers()) present.push_back(layer.path);
  if (planned != present) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the plan lists the convolutions [", absl::StrJoin(planned, ", "), "] but model ", o.model.name,
        " has [", absl::StrJoin(present, ", "), "]; plan again for this model (PlanTraining)"));
  }
  std::vector<LayerChoice> choices = model.ExactChoices();
  const std::vector<ProbeMode>& modes = model.options().modes;
  for (size_t l = 0; l < spec.layers.size(); ++l) {
    const PlanSpec::Layer& layer = spec.layers[l];
    if (layer.probes < 0) {
      return Invalid(absl::StrCat("the plan gives layer ", layer.path, " ", layer.probes,
                                  " probes; use 0 (exact) or a positive count"));
    }
    if (layer.probes == 0) continue;
    if (!model.layers()[l].convertible()) {
      return Invalid(absl::StrCat("the plan converts layer ", layer.path, ", which XConv cannot run (",
                                  model.layers()[l].exact_reason, "); plan again (PlanTraining)"));
    }
    if (o.memory.planner.keep_exact.count(layer.path)) {
      return Invalid(absl::StrCat("the plan converts layer ", layer.path,
                                  " but memory.planner.keep_exact lists it; plan again or drop it from keep_exact"));
    }
    if (std::find(modes.begin(), modes.end(), layer.mode) == modes.end()) {
      return Invalid(absl::StrCat("the plan runs layer ", layer.path, " in probe mode ",
                                  std::string(ProbeModeName(layer.mode)),
                                  ", which memory.model.modes does not calibrate; add it there"));
    }
    choices[l] = LayerChoice{true, layer.probes, layer.mode};
  }
  Plan check;
  check.choices = choices;
  if (!spec.lean_layers && check.converted_layers() > 0) {
    return Invalid(
        "the plan converts layers without lean layers, which the memory model does not calibrate; set "
        "lean_layers to true");
  }
  return choices;
}

std::vector<ChainPoint> PlanChain(const MemoryModel& model, const TrainingPlan& planned, int64_t batch,
                                  const PlannerOptions& planner) {
  const int64_t beside = planned.loader_bytes + planned.trainer_bytes;
  ChainPoint own;
  own.choices = planned.plan.choices;
  own.lean_layers = LeanOf(planned.plan);
  own.peak_bytes = planned.plan.predicted_peak_bytes() + beside;
  own.fidelity = planned.plan.fidelity;
  std::vector<ChainPoint> chain = {std::move(own)};
  absl::StatusOr<std::vector<ChainPoint>> steps = core::PlanChain(model, batch, planner);
  if (!steps.ok()) return chain;
  // The planner's chain runs cheapest first; the job's runs from its own plan down.
  for (auto it = steps->rbegin(); it != steps->rend(); ++it) {
    if (it->peak_bytes + beside >= chain.back().peak_bytes) continue;
    ChainPoint point = *it;
    point.peak_bytes += beside;
    chain.push_back(std::move(point));
  }
  return chain;
}

absl::StatusOr<TrainingPlan> PlanJob(const TrainOptions& o, const MemoryModel& model, const PlanSpec* spec) {
  TrainingPlan out;
  const int64_t batch = o.batch_size;
  const int64_t budget = o.memory.budget_bytes;
  const PlannerOptions& planner = o.memory.planner;
  out.loader_bytes = LoaderBytes(o, batch);
  out.trainer_bytes = TrainerBytes();
  const int64_t beside = out.loader_bytes + out.trainer_bytes;
  out.exact_peak_bytes = model.PredictPeak(model.ExactChoices(), batch) + beside;
  out.minimum_budget_bytes = MinimumBudget(model, batch, planner) + beside;
  out.calibration_error = model.calibration_error();
  out.calibration_ok = out.calibration_error <= planner.margin / 2;
  out.unknown_nodes = model.unknown_nodes();
  if (budget > 0) {
    out.largest_batch = LargestJobBatch(o, model, budget, false);
    out.largest_exact_batch = LargestJobBatch(o, model, budget, true);
  }
  const int64_t step_budget = budget > 0 ? budget - beside : 0;
  if (spec != nullptr) {
    absl::StatusOr<std::vector<LayerChoice>> choices = ChoicesOf(*spec, o, model);
    if (!choices.ok()) return choices.status();
    out.plan = PlanFor(model, *choices, spec->lean_layers, batch, std::max<int64_t>(step_budget, 0), planner);
    if (budget > 0 && (step_budget <= 0 || out.plan.predicted_peak_bytes() > out.plan.usable_bytes)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the plan's job peak on this machine is ", out.plan.predicted_peak_bytes() + beside,
          " bytes, more than memory.budget_bytes ", budget, " holds after the planner's ", planner.margin * 100,
          "% margin; plan again here (PlanTraining) or raise memory.budget_bytes to at least ",
          static_cast<int64_t>(std::ceil(static_cast<double>(out.plan.predicted_peak_bytes()) / (1.0 - planner.margin))) +
              beside));
    }
  } else if (budget > 0) {
    if (out.minimum_budget_bytes > budget) return Refusal(o, model, out.minimum_budget_bytes, beside);
    absl::StatusOr<Plan> plan = MakePlan(model, step_budget, batch, planner);
    if (!plan.ok()) {
      if (plan.status().code() == absl::StatusCode::kResourceExhausted) {
        return Refusal(o, model, out.minimum_budget_bytes, beside);
      }
      return Prefixed(plan.status(), "memory.planner: ");
    }
    out.plan = *std::move(plan);
  } else {
    std::vector<LayerChoice> choices = model.ExactChoices();
    if (o.memory.fixed_probes > 0) {
      for (size_t l = 0; l < choices.size(); ++l) {
        // Convolutions XConv cannot run stay exact (Convert leaves them so too).
        if (model.layers()[l].convertible()) choices[l] = LayerChoice{true, o.memory.fixed_probes, ProbeMode::kIndependent};
      }
    }
    out.plan = PlanFor(model, choices, false, batch, 0, planner);
  }
  out.predicted_peak_bytes = out.plan.predicted_peak_bytes() + beside;
  out.spec = SpecOf(model, out.plan.choices, LeanOf(out.plan), batch, budget);
  if (spec == nullptr && budget > 0 && o.memory.fixed_probes == 0) out.chain = PlanChain(model, out, batch, planner);
  return out;
}

}  // namespace xtrain::core::train_internal
