#include "core/train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <mutex>
#include <set>
#include <unordered_set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/memory/cpu_memory_meter.h"
#include "core/models/model_zoo.h"
#include "core/train/task_metrics.h"
#include "core/util/generator_state.h"
#include "core/xconv/convert.h"
#include "core/xconv/modules.h"
#include "core/xconv/probes.h"

namespace xtrain::core {
namespace {

// Streams derived from TrainOptions::seed, one per consumer of randomness.
constexpr uint64_t kLoaderStream = 1;
constexpr uint64_t kTaskStream = 2;
constexpr uint64_t kGlobalStream = 3;
constexpr uint64_t kConvertStream = 4;
constexpr uint64_t kEvalStream = 5;

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

std::string ShapeText(torch::IntArrayRef sizes) { return absl::StrCat("[", absl::StrJoin(sizes, ", "), "]"); }

absl::Status Invalid(absl::string_view sentence) { return absl::InvalidArgumentError(sentence); }

// `status` with `context` in front of its message, same code.
absl::Status Prefixed(const absl::Status& status, absl::string_view context) {
  return absl::Status(status.code(), absl::StrCat(context, status.message()));
}

absl::Status CheckOptions(const TrainOptions& o) {
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
  if (o.memory.budget_bytes < 0) {
    return Invalid(absl::StrCat("memory.budget_bytes is ", o.memory.budget_bytes,
                                "; use 0 (no plan) or a positive byte count"));
  }
  if (o.memory.fixed_probes < 0) {
    return Invalid(absl::StrCat("memory.fixed_probes is ", o.memory.fixed_probes,
                                "; use 0 (exact) or a positive probe count"));
  }
  if (o.memory.budget_bytes > 0 && o.memory.fixed_probes > 0) {
    return Invalid(
        "memory.budget_bytes and memory.fixed_probes are both set; set the budget (the planner picks "
        "the probes) or fixed_probes, not both");
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
  if (o.data.train == nullptr) return Invalid("data.train is not set; give the training examples");
  return absl::OkStatus();
}

// The dataset's shapes and labels, against the task and model spec.
absl::Status CheckDataset(const std::string& field, const TensorDataset& data, const TrainOptions& o) {
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
  if (labels) {
    if (!data.targets.defined()) {
      return Invalid(absl::StrCat("the ", TaskKindName(o.task.kind), " task needs targets but ", field,
                                  " has none; give labels or masks"));
    }
    const int64_t low = data.targets.min().item<int64_t>();
    if (low < 0) {
      return Invalid(absl::StrCat(field, " has label ", low, "; labels must be 0 or more"));
    }
  }
  if (!torch::isfinite(data.inputs).all().item<bool>()) {
    return Invalid(absl::StrCat(field, " has NaN or infinite inputs; clean the data"));
  }
  return absl::OkStatus();
}

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

const XConvSettings* XConvSettingsOf(torch::nn::Module& module) {
  if (auto* x = dynamic_cast<XConv2dImpl*>(&module)) return &x->settings();
  if (auto* x = dynamic_cast<XConv3dImpl*>(&module)) return &x->settings();
  return nullptr;
}

bool IsTorchConv(torch::nn::Module& module) {
  return dynamic_cast<torch::nn::Conv2dImpl*>(&module) != nullptr ||
         dynamic_cast<torch::nn::Conv3dImpl*>(&module) != nullptr;
}

bool MatchesPrefix(const std::string& name, const std::string& prefix) {
  return name == prefix || absl::StartsWith(name, absl::StrCat(prefix, "."));
}

// Swaps the job's own state into LibTorch's default CPU generator (which dropout draws from) for
// the duration of Run, and the process's state back afterwards, keeping the job's.
class GlobalGeneratorSwap {
 public:
  explicit GlobalGeneratorSwap(torch::Tensor& job_state)
      : generator_(at::detail::getDefaultCPUGenerator()), job_state_(job_state) {
    process_state_ = GeneratorState(generator_);
    SetGeneratorState(generator_, job_state_);
  }
  ~GlobalGeneratorSwap() {
    job_state_ = GeneratorState(generator_);
    SetGeneratorState(generator_, process_state_);
  }
  GlobalGeneratorSwap(const GlobalGeneratorSwap&) = delete;
  GlobalGeneratorSwap& operator=(const GlobalGeneratorSwap&) = delete;

 private:
  at::Generator generator_;
  torch::Tensor& job_state_;
  torch::Tensor process_state_;
};

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

// Sums storage bytes once per storage.
class StorageBytes {
 public:
  void Add(const torch::Tensor& t) {
    if (!t.defined() || !t.has_storage()) return;
    if (seen_.insert(t.storage().data()).second) bytes_ += static_cast<int64_t>(t.storage().nbytes());
  }
  int64_t bytes() const { return bytes_; }

 private:
  std::unordered_set<const void*> seen_;
  int64_t bytes_ = 0;
};

}  // namespace

Trainer::Trainer(TrainOptions options) : options_(std::move(options)) {}

Trainer::~Trainer() = default;

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(TrainOptions options) {
  std::unique_ptr<Trainer> trainer(new Trainer(std::move(options)));
  absl::Status status;
  try {
    status = trainer->Initialize();
  } catch (const c10::Error& e) {
    status = absl::InternalError(absl::StrCat("creating the trainer failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    status = absl::InternalError(absl::StrCat("creating the trainer failed: ", e.what()));
  }
  if (!status.ok()) return status;
  return trainer;
}

absl::Status Trainer::Initialize() {
  CpuMemoryMeter::Install();
  if (absl::Status s = CheckOptions(options_); !s.ok()) return s;
  if (options_.threads > 0) at::set_num_threads(options_.threads);
  const TrainOptions& o = options_;
  if (absl::Status s = CheckDataset("data.train", *o.data.train, o); !s.ok()) return s;
  if (o.data.validation) {
    if (absl::Status s = CheckDataset("data.validation", *o.data.validation, o); !s.ok()) return s;
  }
  if (o.data.train->size() < o.batch_size) {
    return Invalid(absl::StrCat("data.train has ", o.data.train->size(), " examples, fewer than batch_size ",
                                o.batch_size, "; lower batch_size or add examples"));
  }
  absl::StatusOr<std::unique_ptr<TaskAdapter>> adapter = MakeTaskAdapter(o.task.kind, o.task.options);
  if (!adapter.ok()) return Prefixed(adapter.status(), "task.options: ");
  adapter_ = *std::move(adapter);

  absl::StatusOr<std::shared_ptr<NetworkImpl>> built = BuildModel(o.model);
  if (!built.ok()) return built.status();
  model_ = *std::move(built);
  if (absl::Status s = CheckModelFitsTask(*model_); !s.ok()) return s;

  if (!o.init.path.empty()) {
    absl::StatusOr<WeightsLoadReport> loaded = LoadWeights(o.init.path, *model_, o.init.strict);
    if (!loaded.ok()) return Prefixed(loaded.status(), "init.path: ");
  }
  std::optional<Checkpoint> resume;
  if (!o.checkpoint.resume_from.empty()) {
    absl::StatusOr<Checkpoint> read = Checkpoint::Read(o.checkpoint.resume_from);
    if (!read.ok()) return Prefixed(read.status(), "checkpoint.resume_from: ");
    if (read->state().model_name != o.model.name) {
      return Invalid(absl::StrCat("checkpoint.resume_from holds a ", read->state().model_name,
                                  " model but model.name is ", o.model.name, "; resume with the same model"));
    }
    resume.emplace(*std::move(read));
  }

  if (o.memory.budget_bytes > 0 || o.memory.predict) {
    if (absl::Status s = BuildMemoryModel(); !s.ok()) return s;
  }
  if (o.memory.budget_bytes > 0) {
    // The loader's prefetched batches live beside the step the memory model predicts.
    const int64_t model_budget = o.memory.budget_bytes - LoaderBytes();
    const std::string context =
        absl::StrCat("memory.budget_bytes ", o.memory.budget_bytes, " less ", LoaderBytes(),
                     " bytes for the loader's ", o.data.prefetch, " prefetched batches leaves ", model_budget,
                     " for the model's step; ");
    if (model_budget <= 0) {
      return absl::ResourceExhaustedError(absl::StrCat(context, "raise the budget or lower data.prefetch"));
    }
    absl::StatusOr<Plan> plan = MakePlan(*memory_model_, model_budget, o.batch_size, o.memory.planner);
    if (!plan.ok()) return Prefixed(plan.status(), context);
    plan_.emplace(*std::move(plan));
  }
  if (absl::Status s = ConvertModel(resume); !s.ok()) return s;

  if (absl::Status s = PrepareParameters(); !s.ok()) return s;
  if (resume) {
    const CheckpointState& state = resume->state();
    if (absl::Status s = resume->LoadModel(*model_); !s.ok()) return Prefixed(s, "checkpoint.resume_from: ");
    if (absl::Status s = resume->LoadOptimizer(*optimizer_); !s.ok()) {
      return Prefixed(s, "checkpoint.resume_from: ");
    }
    task_generator_ = at::make_generator<at::CPUGeneratorImpl>(0);
    task_generator_.set_state(state.task_generator_state);
    global_generator_state_ = state.global_generator_state;
    step_ = state.step;
    position_ = state.position;
    epoch_loss_sum_ = state.epoch_loss_sum;
    epoch_loss_count_ = state.epoch_loss_count;
    last_lr_ = state.lr;
  } else {
    task_generator_ = at::make_generator<at::CPUGeneratorImpl>(MixSeed(o.seed, kTaskStream));
    at::Generator global = at::make_generator<at::CPUGeneratorImpl>(MixSeed(o.seed, kGlobalStream));
    global_generator_state_ = global.get_state();
  }

  LoaderOptions loader;
  loader.batch_size = o.batch_size;
  loader.shuffle = o.data.shuffle;
  loader.drop_last = true;
  loader.seed = MixSeed(o.seed, kLoaderStream);
  loader.prefetch = o.data.prefetch;
  loader.workers = o.data.workers;
  absl::StatusOr<std::unique_ptr<DataLoader>> created = DataLoader::Create(o.data.train, loader);
  if (!created.ok()) return Prefixed(created.status(), "data.train: ");
  loader_ = *std::move(created);
  if (position_.batch > loader_->num_batches()) {
    return Invalid(absl::StrCat("checkpoint.resume_from stopped at batch ", position_.batch, " of epoch ",
                                position_.epoch, " but an epoch now has ", loader_->num_batches(),
                                " batches; resume with the same data and batch_size"));
  }
  schedule_.emplace(o.schedule, o.optimizer.lr, total_steps());

  SetUpTelemetry();
  if (!o.checkpoint.dir.empty()) {
    absl::StatusOr<CheckpointStore> store = CheckpointStore::Open(o.checkpoint.dir, o.checkpoint.keep);
    if (!store.ok()) return Prefixed(store.status(), "checkpoint.dir: ");
    store_.emplace(*std::move(store));
  }
  return absl::OkStatus();
}

absl::Status Trainer::BuildMemoryModel() {
  const TrainOptions& o = options_;
  // The memory model sees the task's real input and loss, at the job's batch and dtype.
  torch::Generator scratch = at::make_generator<at::CPUGeneratorImpl>(0);
  absl::StatusOr<Batch> sample = adapter_->Make(
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
  if (!memory.ok()) return Prefixed(memory.status(), "memory model: ");
  memory_model_.emplace(*std::move(memory));
  return absl::OkStatus();
}

absl::Status Trainer::PrepareParameters() {
  const TrainOptions& o = options_;
  // Freezing comes after conversion: XConv re-registers the adopted weights as trainable.
  for (const std::string& prefix : o.freeze) {
    int matched = 0;
    for (auto& p : model_->named_parameters()) {
      if (!MatchesPrefix(p.key(), prefix)) continue;
      p.value().set_requires_grad(false);
      ++matched;
    }
    if (matched == 0) {
      return Invalid(absl::StrCat("freeze prefix '", prefix, "' matches no parameter of ", o.model.name,
                                  "; parameter paths look like '", model_->named_parameters().keys().front(),
                                  "'"));
    }
  }
  {
    // Floating tensors only: XConv seed streams and BatchNorm counters stay int64.
    torch::NoGradGuard no_grad;
    for (torch::Tensor& p : model_->parameters()) {
      if (p.is_floating_point() && p.scalar_type() != o.dtype) p.set_data(p.to(o.dtype));
    }
    for (torch::Tensor& b : model_->buffers()) {
      if (b.is_floating_point() && b.scalar_type() != o.dtype) b.set_data(b.to(o.dtype));
    }
  }
  for (const torch::Tensor& p : model_->parameters()) {
    if (p.requires_grad()) trainable_.push_back(p);
  }
  if (trainable_.empty()) return Invalid("freeze covers every parameter; leave something to train");
  optimizer_ = MakeOptimizer(o.optimizer.kind, trainable_, o.optimizer.lr, o.optimizer.weight_decay);
  if (o.optimizer.kind == OptimizerKind::kSgdMomentum) {
    for (auto& group : optimizer_->param_groups()) {
      static_cast<torch::optim::SGDOptions&>(group.options()).momentum(o.optimizer.momentum);
    }
  }

  return absl::OkStatus();
}

void Trainer::SetUpTelemetry() {
  const TrainOptions& o = options_;
  const TaskKind kind = o.task.kind;
  auto loss = [this, kind](const Batch& batch) { return TaskLoss(kind, model_->forward(batch.input), batch.target); };
  fidelity_ = std::make_unique<FidelityProbe>(model_, loss);
  if (o.fidelity_interval > 0 && !fidelity_->empty() && o.batch_size >= 4) {
    // The largest micro-batch whose exact step the memory model fits into the budget (at least 2).
    int64_t micro = o.batch_size / 2;
    if (plan_) {
      while (micro > 2 && memory_model_->PredictPeak(memory_model_->ExactChoices(), micro) > plan_->usable_bytes) {
        micro = std::max<int64_t>(2, micro * 3 / 4);
      }
    }
    fidelity_micro_batch_ = micro;
  }
}

absl::Status Trainer::CheckModelFitsTask(NetworkImpl& model) {
  const TrainOptions& o = options_;
  const TensorDataset& data = *o.data.train;
  const int64_t n = std::min<int64_t>(2, data.size());
  torch::Generator scratch = at::make_generator<at::CPUGeneratorImpl>(0);
  absl::StatusOr<Batch> batch = adapter_->Make(
      data.inputs.narrow(0, 0, n), data.targets.defined() ? data.targets.narrow(0, 0, n) : torch::Tensor(),
      scratch);
  if (!batch.ok()) return Prefixed(batch.status(), "data.train: ");
  torch::Tensor output;
  try {
    torch::NoGradGuard no_grad;
    EvalMode eval(model);
    output = model.forward(batch->input);
  } catch (const c10::Error& e) {
    return Invalid(absl::StrCat("model ", o.model.name, " cannot run on the ", TaskKindName(o.task.kind),
                                " inputs of shape ", ShapeText(batch->input.sizes().slice(1)), ": ",
                                e.what_without_backtrace(),
                                "; change the model (depth, scale) or the data's spatial size"));
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
      if (absl::Status s = CheckLabels(o, output.size(1), "the data has labels", "model.classes"); !s.ok()) {
        return s;
      }
      break;
    }
    case TaskKind::kSegmentation: {
      if (output.dim() != batch->input.dim() || output.sizes().slice(2) != batch->input.sizes().slice(2)) {
        return Invalid(absl::StrCat("the segmentation task needs a dense model whose output keeps the "
                                    "input's spatial size, such as unet; model ",
                                    o.model.name, " outputs ", got, " per sample"));
      }
      if (absl::Status s = CheckLabels(o, output.size(1), "the masks have classes", "model.out_channels");
          !s.ok()) {
        return s;
      }
      break;
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
      break;
    }
  }
  return absl::OkStatus();
}

absl::Status Trainer::ConvertModel(const std::optional<Checkpoint>& resume) {
  const TrainOptions& o = options_;
  const uint64_t seed = MixSeed(o.seed, kConvertStream);
  std::optional<ConvertOptions> convert;
  if (resume) {
    // The checkpoint's layers are the truth: a fresh plan could differ by a calibration byte.
    const CheckpointState& state = resume->state();
    if (!state.xconv_layers.empty()) {
      convert.emplace();
      convert->seed = seed;
      convert->lean_layers = state.lean_layers;
      std::set<std::string> listed;
      for (const XConvLayerRecord& layer : state.xconv_layers) {
        convert->per_layer[layer.path] = layer.settings;
        listed.insert(layer.path);
      }
      for (const auto& item : model_->named_modules("", false)) {
        if (IsTorchConv(*item.value()) && !listed.count(item.key())) convert->keep_exact.insert(item.key());
      }
    }
    if (plan_) {
      // Report the plan as applied (the planner's fidelity and variance fields stay its own).
      plan_->choices = ChoicesOf(state.xconv_layers);
      for (size_t l = 0; l < plan_->layers.size() && l < plan_->choices.size(); ++l) {
        plan_->layers[l].choice = plan_->choices[l];
      }
      plan_->prediction = memory_model_->Predict(plan_->choices, o.batch_size);
    }
  } else if (plan_) {
    if (plan_->converted_layers() > 0) convert = PlanConvertOptions(*plan_, *memory_model_, seed);
  } else if (o.memory.fixed_probes > 0) {
    convert.emplace();
    convert->seed = seed;
    convert->settings.probes = o.memory.fixed_probes;
    // The route the memory model calibrates (planner.h), so predicted peaks apply.
    convert->settings.route = GradientRoute::kTap;
  }
  if (convert) {
    absl::StatusOr<ConvertResult> converted = Convert(model_, *convert);
    if (!converted.ok()) return Prefixed(converted.status(), "converting the model: ");
    auto root = std::dynamic_pointer_cast<NetworkImpl>(converted->module);
    if (root == nullptr) return absl::InternalError("conversion replaced the model's root");
    model_ = std::move(root);
  }
  for (const auto& item : model_->named_modules("", false)) {
    if (IsTorchConv(*item.value())) {
      probes_.emplace_back(item.key(), 0);
    } else if (const XConvSettings* settings = XConvSettingsOf(*item.value())) {
      probes_.emplace_back(item.key(), settings->probes);
      xconv_layers_.push_back({item.key(), *settings});
    } else if (dynamic_cast<MaskReLUImpl*>(item.value().get()) != nullptr ||
               dynamic_cast<IndexMaxPoolImpl*>(item.value().get()) != nullptr) {
      lean_layers_ = true;
    }
  }
  if (memory_model_) {
    const int64_t step_peak = plan_ ? plan_->predicted_peak_bytes()
                                    : memory_model_->PredictPeak(ChoicesOf(xconv_layers_), o.batch_size);
    predicted_peak_bytes_ = step_peak + LoaderBytes();
  }
  return absl::OkStatus();
}

std::vector<LayerChoice> Trainer::ChoicesOf(const std::vector<XConvLayerRecord>& layers) const {
  std::vector<LayerChoice> choices = memory_model_->ExactChoices();
  for (size_t l = 0; l < choices.size(); ++l) {
    for (const XConvLayerRecord& layer : layers) {
      if (layer.path == memory_model_->layers()[l].path && layer.settings.probes > 0) {
        choices[l] = LayerChoice{true, layer.settings.probes, layer.settings.mode};
      }
    }
  }
  return choices;
}

int64_t Trainer::steps_per_epoch() const { return loader_ ? loader_->num_batches() : 0; }

int64_t Trainer::total_steps() const { return steps_per_epoch() * options_.epochs; }

absl::Status Trainer::Run(const EventCallback& callback, const std::atomic<bool>* cancel) {
  try {
    return RunLoop(callback, cancel);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("training failed at step ", step_ + 1, " (epoch ", position_.epoch,
                                            ", batch ", position_.batch, "): ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("training failed at step ", step_ + 1, ": ", e.what()));
  }
}

absl::Status Trainer::RunLoop(const EventCallback& callback, const std::atomic<bool>* cancel) {
  if (options_.threads > 0) at::set_num_threads(options_.threads);
  const EventCallback emit = callback ? callback : [](const TrainEvent&) {};
  GlobalGeneratorSwap swap(global_generator_state_);
  running_ = true;
  struct Stopped {
    bool& running;
    ~Stopped() { running = false; }
  } stopped{running_};
  auto limit_reached = [this] { return options_.max_steps > 0 && step_ >= options_.max_steps; };
  while (position_.epoch < options_.epochs && !limit_reached()) {
    if (position_.batch < loader_->num_batches()) {
      if (absl::Status s = loader_->StartEpoch(position_.epoch, position_.batch); !s.ok()) return s;
      for (;;) {
        if (cancel != nullptr && cancel->load()) {
          if (store_ && options_.checkpoint.on_cancel && last_checkpoint_ != store_->PathFor(step_)) {
            if (absl::Status s = EmitCheckpoint(emit); !s.ok()) return s;
          }
          return absl::CancelledError(absl::StrCat("training cancelled after step ", step_, " (epoch ",
                                                   position_.epoch, ", batch ", position_.batch, ")"));
        }
        if (limit_reached()) break;
        std::optional<ExampleBatch> example = loader_->Next();
        if (!example) break;
        TrainEvent event = BaseEvent(TrainEventKind::kStep);
        if (absl::Status s = Step(*std::move(example), event); !s.ok()) return s;
        emit(event);
        if (store_ && options_.checkpoint.every_steps > 0 && step_ % options_.checkpoint.every_steps == 0) {
          if (absl::Status s = EmitCheckpoint(emit); !s.ok()) return s;
        }
      }
      if (absl::Status s = loader_->status(); !s.ok()) return Prefixed(s, "loading data.train: ");
      if (position_.batch < loader_->num_batches()) break;  // stopped by max_steps
    }
    TrainEvent event = BaseEvent(TrainEventKind::kEpoch);
    event.loss = epoch_loss_count_ > 0 ? epoch_loss_sum_ / static_cast<double>(epoch_loss_count_) : TrainEvent::kNaN;
    if (options_.data.validation) {
      absl::StatusOr<std::map<std::string, double>> metrics = EvaluateUnguarded();
      if (!metrics.ok()) return metrics.status();
      TaskMetrics names(options_.task.kind, options_.task.psnr_on_hole);
      event.metrics = *metrics;
      event.metric_name = names.primary();
      event.metric_value = event.metrics[event.metric_name];
    }
    emit(event);
    last_metrics_ = event.metrics;
    last_epoch_loss_ = event.loss;
    position_ = {position_.epoch + 1, 0};
    epoch_loss_sum_ = 0;
    epoch_loss_count_ = 0;
  }
  if (store_ && last_checkpoint_ != store_->PathFor(step_)) {
    if (absl::Status s = EmitCheckpoint(emit); !s.ok()) return s;
  }
  TrainEvent done = BaseEvent(TrainEventKind::kDone);
  done.loss = last_epoch_loss_;
  done.metrics = last_metrics_;
  if (options_.data.validation && !last_metrics_.empty()) {
    done.metric_name = TaskMetrics(options_.task.kind, options_.task.psnr_on_hole).primary();
    done.metric_value = last_metrics_[done.metric_name];
  }
  emit(done);
  return absl::OkStatus();
}

absl::Status Trainer::Step(ExampleBatch example, TrainEvent& event) {
  const auto start_time = Clock::now();
  CpuMemoryMeter& meter = CpuMemoryMeter::Install();
  // Job-relative bytes: what the job holds now (model, gradients, optimizer state, this batch, the
  // loader's prefetched batches) plus the growth during the step; unrelated memory elsewhere in
  // the process is left out. (indices is a view of the loader's permutation: not the batch's.)
  StorageBytes held;
  held.Add(example.inputs);
  held.Add(example.targets);
  const int64_t queued = loader_->buffered() * BatchBytes();
  const int64_t base = meter.current_bytes() - ResidentBytes() - held.bytes() - queued;
  meter.ResetPeak();
  optimizer_->zero_grad();
  absl::StatusOr<Batch> made = adapter_->Make(example.inputs, example.targets, task_generator_);
  if (!made.ok()) {
    return Prefixed(made.status(), absl::StrCat("step ", step_ + 1, " (epoch ", example.epoch, ", batch ",
                                                example.index, "): "));
  }
  const LoaderPosition next{example.epoch, example.index + 1};
  example = ExampleBatch();
  const Batch batch = ToModelDtype(*std::move(made));
  const double lr = schedule_->At(step_);
  for (auto& group : optimizer_->param_groups()) group.options().set_lr(lr);
  double loss_value = 0;
  {
    torch::Tensor output = model_->forward(batch.input);
    torch::Tensor loss = TaskLoss(options_.task.kind, output, batch.target);
    loss.backward();  // the output is held through backward, as the memory model assumes
    loss_value = loss.item<double>();
  }
  int64_t peak = meter.peak_bytes() - base;
  if (!std::isfinite(loss_value)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "training diverged: the loss is ", loss_value, " at step ", step_ + 1,
        "; lower optimizer.lr, add warm-up steps or set clip_grad_norm"));
  }
  double telemetry_seconds = 0;
  if (fidelity_micro_batch_ > 0 && (step_ + 1) % options_.fidelity_interval == 0) {
    absl::StatusOr<FidelityReport> report =
        fidelity_->Measure(batch, fidelity_micro_batch_, static_cast<uint64_t>(step_));
    if (!report.ok()) return Prefixed(report.status(), absl::StrCat("step ", step_ + 1, ": "));
    telemetry_seconds = report->seconds;
    event.fidelity = *std::move(report);
    meter.ResetPeak();
  }
  if (options_.clip_grad_norm > 0) torch::nn::utils::clip_grad_norm_(trainable_, options_.clip_grad_norm);
  optimizer_->step();
  peak = std::max(peak, meter.peak_bytes() - base);

  ++step_;
  position_ = next;
  epoch_loss_sum_ += loss_value;
  ++epoch_loss_count_;
  last_lr_ = lr;
  event.step = step_;
  event.epoch = next.epoch;
  event.loss = loss_value;
  event.lr = lr;
  event.step_seconds = std::max(1e-9, Seconds(start_time) - telemetry_seconds);
  event.samples_per_second = static_cast<double>(options_.batch_size) / event.step_seconds;
  event.measured_peak_bytes = peak;
  return absl::OkStatus();
}

int64_t Trainer::BatchBytes() const {
  const TensorDataset& data = *options_.data.train;
  int64_t bytes = static_cast<int64_t>(data.inputs[0].nbytes());
  if (data.targets.defined()) bytes += static_cast<int64_t>(data.targets[0].nbytes());
  return bytes * options_.batch_size;
}

int64_t Trainer::LoaderBytes() const { return BatchBytes() * options_.data.prefetch; }

Batch Trainer::ToModelDtype(Batch batch) const {
  const torch::ScalarType dtype = options_.dtype;
  if (batch.input.scalar_type() != dtype) batch.input = batch.input.to(dtype);
  if (batch.target.is_floating_point() && batch.target.scalar_type() != dtype) {
    batch.target = batch.target.to(dtype);
  }
  if (batch.mask.defined() && batch.mask.scalar_type() != dtype) batch.mask = batch.mask.to(dtype);
  return batch;
}

int64_t Trainer::ResidentBytes() const {
  StorageBytes bytes;
  for (const torch::Tensor& p : model_->parameters()) {
    bytes.Add(p);
    bytes.Add(p.grad());
  }
  for (const torch::Tensor& b : model_->buffers()) bytes.Add(b);
  for (const auto& [key, state] : optimizer_->state()) {
    if (auto* sgd = dynamic_cast<torch::optim::SGDParamState*>(state.get())) {
      bytes.Add(sgd->momentum_buffer());
    } else if (auto* adam = dynamic_cast<torch::optim::AdamParamState*>(state.get())) {
      bytes.Add(adam->exp_avg());
      bytes.Add(adam->exp_avg_sq());
      bytes.Add(adam->max_exp_avg_sq());
    } else if (auto* adamw = dynamic_cast<torch::optim::AdamWParamState*>(state.get())) {
      bytes.Add(adamw->exp_avg());
      bytes.Add(adamw->exp_avg_sq());
      bytes.Add(adamw->max_exp_avg_sq());
    }
  }
  return bytes.bytes();
}

absl::StatusOr<std::map<std::string, double>> Trainer::Evaluate() {
  try {
    return EvaluateUnguarded();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("evaluation failed: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<std::map<std::string, double>> Trainer::EvaluateUnguarded() {
  if (!options_.data.validation) {
    return absl::FailedPreconditionError("no data.validation to evaluate on");
  }
  const TensorDataset& data = *options_.data.validation;
  // The same holes, timesteps and noise at every evaluation, so epochs compare.
  torch::Generator generator = at::make_generator<at::CPUGeneratorImpl>(MixSeed(options_.seed, kEvalStream));
  TaskMetrics metrics(options_.task.kind, options_.task.psnr_on_hole);
  torch::NoGradGuard no_grad;
  EvalMode eval(*model_);
  for (int64_t start = 0; start < data.size(); start += options_.batch_size) {
    const int64_t n = std::min(options_.batch_size, data.size() - start);
    absl::StatusOr<Batch> batch =
        adapter_->Make(data.inputs.narrow(0, start, n),
                       data.targets.defined() ? data.targets.narrow(0, start, n) : torch::Tensor(), generator);
    if (!batch.ok()) return Prefixed(batch.status(), "data.validation: ");
    const Batch converted = ToModelDtype(*std::move(batch));
    metrics.Add(converted, model_->forward(converted.input));
  }
  return metrics.Result();
}

absl::StatusOr<std::string> Trainer::SaveCheckpoint() {
  if (!store_) return absl::FailedPreconditionError("no checkpoint.dir to write a checkpoint to");
  try {
    return WriteCheckpoint();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("writing a checkpoint failed: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<std::string> Trainer::WriteCheckpoint() {
  CheckpointState state;
  state.model_name = options_.model.name;
  state.step = step_;
  state.position = position_;
  state.epoch_loss_sum = epoch_loss_sum_;
  state.epoch_loss_count = epoch_loss_count_;
  state.lr = last_lr_;
  // Inside Run the job's stream is installed in the default generator (GlobalGeneratorSwap).
  if (running_) {
    at::Generator global = at::detail::getDefaultCPUGenerator();
    state.global_generator_state = GeneratorState(global);
  } else {
    state.global_generator_state = global_generator_state_;
  }
  state.task_generator_state = GeneratorState(task_generator_);
  state.lean_layers = lean_layers_;
  state.xconv_layers = xconv_layers_;
  absl::StatusOr<std::string> path = store_->Save(*model_, *optimizer_, state);
  if (path.ok()) last_checkpoint_ = *path;
  return path;
}

absl::Status Trainer::EmitCheckpoint(const EventCallback& emit) {
  absl::StatusOr<std::string> path = WriteCheckpoint();
  if (!path.ok()) return path.status();
  TrainEvent event = BaseEvent(TrainEventKind::kCheckpoint);
  event.checkpoint_path = *path;
  emit(event);
  return absl::OkStatus();
}

TrainEvent Trainer::BaseEvent(TrainEventKind kind) const {
  TrainEvent event;
  event.kind = kind;
  event.step = step_;
  event.epoch = position_.epoch;
  event.lr = last_lr_;
  event.predicted_peak_bytes = predicted_peak_bytes_;
  event.probes = probes_;
  return event;
}

}  // namespace xtrain::core
