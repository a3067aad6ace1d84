#include "core/train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <mutex>
#include <set>
#include <unordered_set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/memory/cpu_memory_meter.h"
#include "core/models/model_zoo.h"
#include "core/train/job_setup.h"
#include "core/train/task_metrics.h"
#include "core/util/generator_state.h"
#include "core/util/mix_seed.h"
#include "core/util/status_macros.h"
#include "core/util/torch_guard.h"
#include "core/xconv/convert.h"
#include "core/xconv/modules.h"

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

using train_internal::Invalid;
using train_internal::Prefixed;

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

}  // namespace

Trainer::Trainer(TrainOptions options, JobSlot slot) : slot_(std::move(slot)), options_(std::move(options)) {}

Trainer::~Trainer() = default;

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(TrainOptions options) {
  return CreateImpl(std::move(options), nullptr);
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(TrainOptions options, const PlanSpec& plan) {
  return CreateImpl(std::move(options), &plan);
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::CreateImpl(TrainOptions options, const PlanSpec* spec) {
  // Bad options are refused as such, whether or not another job holds the process.
  if (absl::Status s = ValidateTrainOptions(options); !s.ok()) return s;
  absl::StatusOr<JobSlot> slot = JobSlot::Acquire(absl::StrCat("a Trainer (model ", options.model.name, ")"));
  if (!slot.ok()) return slot.status();
  std::unique_ptr<Trainer> trainer(new Trainer(std::move(options), *std::move(slot)));
  XTRAIN_RETURN_IF_ERROR(GuardExceptions("creating the trainer failed", [&] { return trainer->Initialize(spec); }));
  return trainer;
}

absl::Status Trainer::Initialize(const PlanSpec* spec) {
  // Measured peaks are the meter's readings less what the process held before the job began.
  baseline_bytes_ = CpuMemoryMeter::Install().current_bytes();
  if (options_.threads > 0) at::set_num_threads(options_.threads);
  const TrainOptions& o = options_;
  if (absl::Status s = train_internal::CheckDataValues(o); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<TaskAdapter>> adapter = MakeTaskAdapter(o.task.kind, o.task.options);
  if (!adapter.ok()) return Prefixed(adapter.status(), "task.options: ");
  adapter_ = *std::move(adapter);

  absl::StatusOr<std::shared_ptr<NetworkImpl>> built = BuildModel(o.model);
  if (!built.ok()) return built.status();
  model_ = *std::move(built);
  if (absl::Status s = train_internal::CheckModelFitsTask(o, *adapter_, *model_); !s.ok()) return s;

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

  if (o.memory.budget_bytes > 0 || o.memory.predict || spec != nullptr) {
    absl::StatusOr<MemoryModel> memory;
    {
      JobSlot::Nested nested(slot_);  // the job's own Build runs under its slot
      memory = train_internal::BuildJobMemoryModel(o, *adapter_);
    }
    if (!memory.ok()) return memory.status();
    memory_model_.emplace(*std::move(memory));
    absl::StatusOr<TrainingPlan> plan = train_internal::PlanJob(o, *memory_model_, spec);
    if (!plan.ok()) return plan.status();
    training_plan_.emplace(*std::move(plan));
    planned_ = o.memory.budget_bytes > 0 || spec != nullptr;
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
    if (training_plan_) {
      // A given plan is converted to now (the job takes a new plan as it resumes); without one the
      // checkpoint's layers are the truth (a fresh plan could differ by a calibration byte).
      const TrainingPlan& planned = *training_plan_;
      const std::vector<LayerChoice> current = CurrentChoices();
      bool differs = spec != nullptr && spec->lean_layers != lean_layers_;
      for (size_t l = 0; l < current.size() && spec != nullptr; ++l) {
        const LayerChoice& want = planned.plan.choices[l];
        differs = differs || want.xconv != current[l].xconv || want.probes != current[l].probes ||
                  (want.xconv && want.mode != current[l].mode);
      }
      if (differs) {
        const std::vector<LayerChoice> wanted = planned.plan.choices;
        if (absl::Status s = ApplyChoices(wanted, train_internal::LeanOf(planned.plan),
                                          MixSeed(MixSeed(o.seed, kConvertStream), static_cast<uint64_t>(step_)));
            !s.ok()) {
          return s;
        }
      } else if (spec == nullptr) {
        SetPlan(train_internal::PlanFor(*memory_model_, current, lean_layers_, o.batch_size, planned.plan.budget_bytes,
                                        o.memory.planner));
      }
    }
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

absl::Status Trainer::Freeze() {
  for (const std::string& prefix : options_.freeze) {
    int matched = 0;
    for (auto& p : model_->named_parameters()) {
      if (!MatchesPrefix(p.key(), prefix)) continue;
      p.value().set_requires_grad(false);
      ++matched;
    }
    if (matched == 0) {
      return Invalid(absl::StrCat("freeze prefix '", prefix, "' matches no parameter of ", options_.model.name,
                                  "; parameter paths look like '", model_->named_parameters().keys().front(),
                                  "'"));
    }
  }
  return absl::OkStatus();
}

absl::Status Trainer::PrepareParameters() {
  const TrainOptions& o = options_;
  // Freezing comes after conversion: XConv re-registers the adopted weights as trainable.
  if (absl::Status s = Freeze(); !s.ok()) return s;
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
  fidelity_micro_batch_ = 0;
  if (o.fidelity_interval > 0 && !fidelity_->empty() && o.batch_size >= 4) {
    // The largest micro-batch whose exact step the memory model fits into the budget (at least 2).
    int64_t micro = o.batch_size / 2;
    if (const Plan* p = plan(); p != nullptr && p->usable_bytes > 0) {
      while (micro > 2 && memory_model_->PredictPeak(memory_model_->ExactChoices(), micro) > p->usable_bytes) {
        micro = std::max<int64_t>(2, micro * 3 / 4);
      }
    }
    fidelity_micro_batch_ = micro;
  }
}

absl::Status Trainer::ConvertModel(const std::optional<Checkpoint>& resume) {
  const TrainOptions& o = options_;
  const uint64_t seed = MixSeed(o.seed, kConvertStream);
  std::optional<ConvertOptions> convert;
  if (resume) {
    // The model as the checkpoint ran it, so its parameters and buffers load.
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
  } else if (training_plan_ && (planned_ || o.memory.fixed_probes > 0)) {
    const Plan& p = training_plan_->plan;
    if (train_internal::LeanOf(p)) convert = PlanConvertOptions(p, *memory_model_, seed);
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
  RecordLayers();
  if (training_plan_) predicted_peak_bytes_ = training_plan_->predicted_peak_bytes;
  return absl::OkStatus();
}

void Trainer::RecordLayers() {
  probes_.clear();
  xconv_layers_.clear();
  lean_layers_ = false;
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
}

std::vector<LayerChoice> Trainer::CurrentChoices() const {
  std::vector<LayerChoice> choices = memory_model_->ExactChoices();
  for (size_t l = 0; l < choices.size(); ++l) {
    for (const XConvLayerRecord& layer : xconv_layers_) {
      if (layer.path == memory_model_->layers()[l].path && layer.settings.probes > 0) {
        choices[l] = LayerChoice{true, layer.settings.probes, layer.settings.mode};
      }
    }
  }
  return choices;
}

void Trainer::SetPlan(Plan plan) {
  TrainingPlan& t = *training_plan_;
  t.plan = std::move(plan);
  t.predicted_peak_bytes = t.plan.predicted_peak_bytes() + t.loader_bytes + t.trainer_bytes;
  t.spec = train_internal::SpecOf(*memory_model_, t.plan.choices, train_internal::LeanOf(t.plan), options_.batch_size,
                                  options_.memory.budget_bytes);
  predicted_peak_bytes_ = t.predicted_peak_bytes;
}

absl::Status Trainer::ApplyChoices(const std::vector<LayerChoice>& choices, bool lean_layers, uint64_t seed) {
  const Plan target = train_internal::PlanFor(*memory_model_, choices, lean_layers, options_.batch_size,
                                              training_plan_->plan.budget_bytes, options_.memory.planner);
  const bool lean = train_internal::LeanOf(target);
  const ConvertOptions convert = PlanConvertOptions(target, *memory_model_, seed);
  // Layers already XConv take their new settings; the rest are converted below.
  XConvSettings exact;
  exact.probes = 0;
  bool torch_convs = false;
  for (const auto& item : model_->named_modules("", false)) {
    auto it = convert.per_layer.find(item.key());
    if (auto* x = dynamic_cast<XConv2dImpl*>(item.value().get())) {
      x->set_settings(it != convert.per_layer.end() ? it->second : exact);
    } else if (auto* x = dynamic_cast<XConv3dImpl*>(item.value().get())) {
      x->set_settings(it != convert.per_layer.end() ? it->second : exact);
    } else if (IsTorchConv(*item.value()) && it != convert.per_layer.end()) {
      torch_convs = true;
    }
  }
  if (lean && (torch_convs || !lean_layers_)) {
    absl::StatusOr<ConvertResult> converted = Convert(model_, convert);
    if (!converted.ok()) return Prefixed(converted.status(), "converting the model to the new plan: ");
    if (converted->module != model_) return absl::InternalError("conversion replaced the model's root");
  }
  if (absl::Status s = Freeze(); !s.ok()) return s;
  RecordLayers();
  SetPlan(target);
  SetUpTelemetry();
  return absl::OkStatus();
}

absl::Status Trainer::Replan(const PlanSpec& spec) {
  return GuardTorch("re-planning failed", [&] { return ReplanUnguarded(spec); });
}

absl::Status Trainer::ReplanUnguarded(const PlanSpec& spec) {
  if (!memory_model_ || !training_plan_) {
    return absl::FailedPreconditionError(
        "this job has no memory model to re-plan with; give it a memory.budget_bytes or a plan at Create");
  }
  TrainOptions o = options_;
  o.memory.budget_bytes = spec.budget_bytes;
  absl::StatusOr<std::vector<LayerChoice>> choices = train_internal::ChoicesOf(spec, o, *memory_model_);
  if (!choices.ok()) return choices.status();
  const TrainingPlan& current = *training_plan_;
  const int64_t beside = current.loader_bytes + current.trainer_bytes + unmodelled_bytes_;
  const int64_t step_budget = spec.budget_bytes > 0 ? spec.budget_bytes - beside : 0;
  if (spec.budget_bytes > 0) {
    const Plan target = train_internal::PlanFor(*memory_model_, *choices, spec.lean_layers, o.batch_size,
                                                std::max<int64_t>(step_budget, 0),
                                                o.memory.planner);
    if (step_budget <= 0 || target.predicted_peak_bytes() > target.usable_bytes) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the new plan's job peak is ", target.predicted_peak_bytes() + beside, " bytes, more than its budget of ",
          spec.budget_bytes, " bytes holds after the planner's ", o.memory.planner.margin * 100, "% margin"));
    }
  }
  const int64_t old_step_budget = training_plan_->plan.budget_bytes;
  const int64_t old_budget = options_.memory.budget_bytes;
  options_.memory.budget_bytes = spec.budget_bytes;
  training_plan_->plan.budget_bytes = std::max<int64_t>(step_budget, 0);
  const uint64_t seed = MixSeed(MixSeed(options_.seed, kConvertStream), static_cast<uint64_t>(step_) + (1ull << 40));
  if (absl::Status s = ApplyChoices(*choices, spec.lean_layers, seed); !s.ok()) {
    options_.memory.budget_bytes = old_budget;
    training_plan_->plan.budget_bytes = old_step_budget;
    return s;
  }
  planned_ = true;
  ++replans_;
  return absl::OkStatus();
}

int64_t Trainer::steps_per_epoch() const { return loader_ ? loader_->num_batches() : 0; }

int64_t Trainer::total_steps() const { return steps_per_epoch() * options_.epochs; }

absl::Status Trainer::Run(const EventCallback& callback, const std::atomic<bool>* cancel) {
  return GuardExceptions(
      [&] {
        return absl::StrCat("training failed at step ", step_ + 1, " (epoch ", position_.epoch, ", batch ",
                            position_.batch, ")");
      },
      [&] { return RunLoop(callback, cancel); });
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
        if (absl::Status s = FollowMeasurement(event, emit); !s.ok()) return s;
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
  // Measured: the meter's peak over the step less what the process held before the job began, so
  // everything the job holds (model and optimizer state, the loader's permutation and batches) and
  // allocates counts, and nothing is computed into the figure.
  meter.ResetPeak();
  torch::Tensor unmodelled;
  if (options_.test_hooks.unmodelled_step_bytes > 0) {
    unmodelled = torch::empty({options_.test_hooks.unmodelled_step_bytes}, torch::kByte);
  }
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
  int64_t peak = meter.peak_bytes() - baseline_bytes_;
  if (!std::isfinite(loss_value)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "training diverged: the loss is ", loss_value, " at step ", step_ + 1,
        "; lower optimizer.lr, add warm-up steps or set clip_grad_norm"));
  }
  double telemetry_seconds = 0;
  if (fidelity_micro_batch_ > 0 && (step_ + 1) % options_.fidelity_interval == 0) {
    // Measured on its own: the telemetry's passes are not part of the step the model predicts.
    meter.ResetPeak();
    absl::StatusOr<FidelityReport> report =
        fidelity_->Measure(batch, fidelity_micro_batch_, static_cast<uint64_t>(step_));
    if (!report.ok()) return Prefixed(report.status(), absl::StrCat("step ", step_ + 1, ": "));
    event.telemetry_peak_bytes = meter.peak_bytes() - baseline_bytes_;
    telemetry_seconds = report->seconds;
    event.fidelity = *std::move(report);
    meter.ResetPeak();
  }
  if (options_.clip_grad_norm > 0) torch::nn::utils::clip_grad_norm_(trainable_, options_.clip_grad_norm);
  optimizer_->step();
  peak = std::max(peak, meter.peak_bytes() - baseline_bytes_);

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

absl::Status Trainer::FollowMeasurement(const TrainEvent& step, const EventCallback& emit) {
  if (!planned_ || options_.memory.budget_bytes <= 0) return absl::OkStatus();
  const int64_t budget = options_.memory.budget_bytes;
  const double margin = options_.memory.planner.margin;
  const auto tolerance = static_cast<int64_t>(std::floor(margin / 2 * static_cast<double>(budget)));
  if (step.measured_peak_bytes <= predicted_peak_bytes_ + unmodelled_bytes_ + tolerance) return absl::OkStatus();

  // Re-plan at the same budget with what the model missed set aside: what the measurement showed
  // above the prediction is taken to stay (a conservative reading whether it is fixed or scales
  // with the activations, which the new plan has fewer of).
  const int64_t excess = step.measured_peak_bytes - predicted_peak_bytes_;
  const TrainingPlan& current = *training_plan_;
  const int64_t step_budget = budget - current.loader_bytes - current.trainer_bytes - excess;
  const int64_t previous = predicted_peak_bytes_;
  const std::string measured = absl::StrCat(
      "step ", step.step, " measured ", step.measured_peak_bytes, " bytes, ", excess, " above the predicted ",
      previous, " (more than half the planner's ", margin * 100, "% margin of memory.budget_bytes ", budget,
      "; the memory model's calibration error is ", memory_model_->calibration_error() * 100, "%)");
  absl::StatusOr<Plan> plan = absl::ResourceExhaustedError("nothing is left of the budget for the step");
  if (step_budget > 0) plan = MakePlan(*memory_model_, step_budget, options_.batch_size, options_.memory.planner);
  if (!plan.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        measured, ", and no plan fits the budget with those bytes set aside: ", plan.status().message(),
        "; raise memory.budget_bytes by at least ", excess, " bytes"));
  }
  const uint64_t seed = MixSeed(MixSeed(options_.seed, kConvertStream), static_cast<uint64_t>(step_));
  if (absl::Status s = ApplyChoices(plan->choices, train_internal::LeanOf(*plan), seed); !s.ok()) return s;
  SetPlan(*std::move(plan));  // its budget_bytes: the step's share less the bytes set aside
  unmodelled_bytes_ = excess;
  ++replans_;
  SetUpTelemetry();  // the telemetry's micro-batch fits what is left

  TrainEvent event = BaseEvent(TrainEventKind::kReplan);
  event.measured_peak_bytes = step.measured_peak_bytes;
  event.previous_predicted_peak_bytes = previous;
  event.unmodelled_bytes = excess;
  event.reason = absl::StrCat(measured, "; re-planned into the budget less those bytes: predicted peak ",
                              predicted_peak_bytes_, " plus ", excess, " = ", predicted_peak_bytes_ + excess,
                              " bytes, fidelity ", training_plan_->plan.fidelity);
  emit(event);
  return absl::OkStatus();
}

Batch Trainer::ToModelDtype(Batch batch) const {
  const torch::ScalarType dtype = options_.dtype;
  if (batch.input.scalar_type() != dtype) batch.input = batch.input.to(dtype);
  if (batch.target.is_floating_point() && batch.target.scalar_type() != dtype) {
    batch.target = batch.target.to(dtype);
  }
  if (batch.mask.defined() && batch.mask.scalar_type() != dtype) batch.mask = batch.mask.to(dtype);
  return batch;
}

absl::StatusOr<std::map<std::string, double>> Trainer::Evaluate() {
  return GuardTorch("evaluation failed", [&] { return EvaluateUnguarded(); });
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
  // A budgeted job evaluates in quarter batches: an inference forward frees nothing early, so at the
  // full batch two of its widest activations at once can pass the budget the training step was
  // planned into; at a quarter they stay within the step's activation memory. Metrics do not depend
  // on the chunking.
  const int64_t chunk =
      options_.memory.budget_bytes > 0 ? std::max<int64_t>(1, (options_.batch_size + 3) / 4) : options_.batch_size;
  for (int64_t start = 0; start < data.size(); start += chunk) {
    const int64_t n = std::min(chunk, data.size() - start);
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
  return GuardTorch("writing a checkpoint failed", [&] { return WriteCheckpoint(); });
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
