#include "server/worker/job_runner.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <utility>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "core/memory/cpu_memory_meter.h"
#include "core/models/model_zoo.h"
#include "core/models/script_network.h"
#include "core/train/checkpoint.h"
#include "core/train/checkpoint_store.h"
#include "server/common/util.h"
#include "server/protocol/frame.h"
#include "server/worker/job_options.h"

namespace xtrain::server {
namespace v1 = ::xtrain::v1;
namespace wv1 = ::xtrain::worker::v1;

namespace {

// Convolution module paths of a zoo model, in module order.
std::vector<std::string> ConvPaths(const core::ModelSpec& spec) {
  std::vector<std::string> paths;
  absl::StatusOr<std::shared_ptr<core::NetworkImpl>> model = core::BuildModel(spec);
  if (!model.ok()) return paths;
  for (const auto& item : (*model)->named_modules("", false)) {
    if (dynamic_cast<torch::nn::Conv2dImpl*>(item.value().get()) != nullptr ||
        dynamic_cast<torch::nn::Conv3dImpl*>(item.value().get()) != nullptr) {
      paths.push_back(item.key());
    }
  }
  return paths;
}

// What the rewrite of a TorchScript module left as it was (empty for zoo models).
std::vector<std::string> ScriptNotes(const core::ModelSpec& spec) {
  if (spec.name != core::kTorchScriptModel) return {};
  absl::StatusOr<std::shared_ptr<core::NetworkImpl>> model = core::BuildModel(spec);
  if (!model.ok()) return {};
  auto* script = dynamic_cast<core::ScriptNetworkImpl*>(model->get());
  return script != nullptr ? script->notes() : std::vector<std::string>{};
}

// Steps the whole job takes: its epochs over the batches of the training set, or max_steps.
int64_t TotalSteps(const core::TrainOptions& o) {
  const int64_t per_epoch = o.data.train ? o.data.train->size() / std::max<int64_t>(1, o.batch_size) : 0;
  const int64_t all = per_epoch * o.epochs;
  return o.max_steps > 0 ? std::min(all, o.max_steps) : all;
}

// Saves the trained parameters and buffers into a fresh, unconverted model of the same spec, so the
// file loads as initial weights of a later job (and in plain LibTorch) without XConv's state.
absl::Status SaveWeights(const core::TrainOptions& options, core::NetworkImpl& trained, const std::string& path) {
  // A TorchScript module goes back as TorchScript: the user's module with the trained tensors.
  if (auto* script = dynamic_cast<core::ScriptNetworkImpl*>(&trained)) return script->Save(path);
  try {
    absl::StatusOr<std::shared_ptr<core::NetworkImpl>> fresh = core::BuildModel(options.model);
    if (!fresh.ok()) return fresh.status();
    torch::NoGradGuard no_grad;
    auto source_parameters = trained.named_parameters();
    auto source_buffers = trained.named_buffers();
    for (auto& p : (*fresh)->named_parameters()) {
      if (const torch::Tensor* src = source_parameters.find(p.key())) p.value().copy_(src->to(p.value().dtype()));
    }
    for (auto& b : (*fresh)->named_buffers()) {
      if (const torch::Tensor* src = source_buffers.find(b.key())) {
        if (src->sizes() == b.value().sizes()) b.value().copy_(src->to(b.value().dtype()));
      }
    }
    torch::serialize::OutputArchive archive;
    (*fresh)->save(archive);
    return core::WriteArchiveAtomically(archive, path);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("saving the trained weights failed: ", e.what_without_backtrace()));
  }
}

}  // namespace

v1::Plan PlanMessage(const core::TrainingPlan& tp) {
  v1::Plan out;
  const core::Plan& plan = tp.plan;
  out.set_batch_size(tp.spec.batch);
  out.set_budget_bytes(tp.spec.budget_bytes);
  out.set_usable_bytes(plan.usable_bytes > 0 ? plan.usable_bytes + tp.loader_bytes + tp.trainer_bytes : 0);
  out.set_predicted_peak_bytes(tp.predicted_peak_bytes);
  out.set_exact_peak_bytes(tp.exact_peak_bytes);
  out.set_loader_bytes(tp.loader_bytes + tp.trainer_bytes);
  out.set_lean_layers(tp.spec.lean_layers);
  out.set_fidelity(plan.fidelity);
  for (const core::LayerPlan& layer : plan.layers) {
    v1::LayerPlan& row = *out.add_layers();
    row.set_path(layer.path);
    if (layer.choice.xconv && layer.choice.probes > 0) {
      row.set_kind(v1::LayerPlan::XCONV);
      row.set_probes(layer.choice.probes);
      row.set_mode(std::string(core::ProbeModeName(layer.choice.mode)));
    } else {
      row.set_kind(tp.spec.lean_layers ? v1::LayerPlan::LEAN : v1::LayerPlan::EXACT);
    }
    row.set_kept_bytes(layer.kept_bytes);
    row.set_exact_kept_bytes(layer.exact_kept_bytes);
    row.set_fidelity(layer.fidelity);
    row.set_note(layer.note);
  }
  out.set_peak_at(plan.prediction.at.empty() ? plan.prediction.phase
                                              : absl::StrCat(plan.prediction.phase, " at ", plan.prediction.at));
  out.set_largest_batch(tp.largest_batch);
  out.set_minimum_budget_bytes(tp.minimum_budget_bytes);
  out.set_calibration_error(tp.calibration_error);
  out.set_table(tp.Table());
  return out;
}

absl::StatusOr<core::PlanSpec> PlanSpecFrom(const wv1::PlanChoice& choice) {
  core::PlanSpec spec;
  for (const wv1::LayerChoice& layer : choice.layers()) {
    core::PlanSpec::Layer& l = spec.layers.emplace_back();
    l.path = layer.path();
    l.probes = layer.probes();
    if (!layer.mode().empty()) {
      absl::StatusOr<core::ProbeMode> mode = core::ParseProbeMode(layer.mode());
      if (!mode.ok()) return mode.status();
      l.mode = *mode;
    }
  }
  spec.lean_layers = choice.lean_layers();
  spec.batch = choice.batch_size();
  spec.budget_bytes = choice.budget_bytes();
  return spec;
}

absl::Status JobRunner::Send(const wv1::WorkerMessage& message) {
  std::lock_guard<std::mutex> lock(write_mutex_);
  return WriteFrame(fd_, message);
}

int JobRunner::Finish(const absl::Status& status, wv1::Finished finished) {
  finished.set_code(static_cast<int>(status.code()));
  finished.set_message(std::string(status.message()));
  wv1::WorkerMessage message;
  *message.mutable_finished() = std::move(finished);
  if (status.code() == absl::StatusCode::kCancelled) {
    spdlog::info("{}", std::string(status.message()));
  } else if (!status.ok()) {
    spdlog::error("{}", status.ToString());
  }
  return Send(message).ok() ? 0 : 1;
}

int JobRunner::Plan(const wv1::PlanCall& call) {
  const wv1::JobContext& context = call.job();
  absl::StatusOr<core::TrainOptions> options = TrainOptionsFor(context);
  if (!options.ok()) return Finish(options.status());
  options->checkpoint.every_steps = 0;  // a dry run writes nothing
  if (context.spec().memory().probes() == v1::MemorySpec::PROBES_EXACT) {
    for (const std::string& path : ConvPaths(options->model)) options->memory.planner.keep_exact.insert(path);
  }
  if (absl::Status s = core::ValidateTrainOptions(*options); !s.ok()) return Finish(s);
  absl::StatusOr<core::TrainingPlan> planned = core::PlanTraining(*options);
  if (!planned.ok()) return Finish(planned.status());
  wv1::WorkerMessage message;
  wv1::PlanResult& result = *message.mutable_plan_result();
  *result.mutable_plan() = PlanMessage(*planned);
  for (const std::string& note : ScriptNotes(options->model)) result.mutable_plan()->add_notes(note);
  result.set_total_steps(TotalSteps(*options));
  result.set_mode(std::string(core::ProbeModeName(options->memory.planner.modes.front())));
  // The scheduler reads the chain cheapest first; the planner's runs from the plan itself down.
  for (auto it = planned->chain.rbegin(); it != planned->chain.rend(); ++it) {
    const core::ChainPoint& point = *it;
    wv1::ChainPoint& p = *result.add_chain();
    p.set_peak_bytes(point.peak_bytes);
    p.set_fidelity(point.fidelity);
    p.set_lean_layers(point.lean_layers);
    for (const core::LayerChoice& choice : point.choices) p.add_probes(choice.xconv ? choice.probes : 0);
  }
  if (result.chain().empty()) {
    // No planner chain (fixed probes, or no budget): the plan is the only point.
    wv1::ChainPoint& p = *result.add_chain();
    p.set_peak_bytes(planned->predicted_peak_bytes);
    p.set_fidelity(planned->plan.fidelity);
    p.set_lean_layers(planned->spec.lean_layers);
    for (const core::PlanSpec::Layer& layer : planned->spec.layers) p.add_probes(layer.probes);
  }
  spdlog::info("planned {} in {} s: predicted peak {} of {}", options->model.name, planned->seconds,
               HumanBytes(planned->predicted_peak_bytes), HumanBytes(context.budget_bytes()));
  if (absl::Status s = Send(message); !s.ok()) return 1;
  return 0;
}

void JobRunner::ReadControls() {
  for (;;) {
    absl::StatusOr<std::optional<std::string>> frame = ReadFrame(fd_);
    wv1::WorkerRequest request;
    if (!frame.ok() || !frame->has_value() || !ParseFrame(**frame, request).ok() || !request.has_control()) {
      // The server is gone or broke the protocol: stop with a checkpoint so the job can resume.
      {
        std::lock_guard<std::mutex> lock(control_mutex_);
        stop_reason_ = "the server closed the worker's channel";
      }
      stop_ = true;
      cancel_ = true;
      return;
    }
    const wv1::Control& control = request.control();
    std::lock_guard<std::mutex> lock(control_mutex_);
    switch (control.action()) {
      case wv1::Control::CANCEL:
        user_cancel_ = true;
        cancel_ = true;
        break;
      case wv1::Control::STOP:
        stop_reason_ = control.reason();
        stop_ = true;
        cancel_ = true;
        break;
      case wv1::Control::CHECKPOINT:
        checkpoint_reason_ = control.reason().empty() ? "requested" : control.reason();
        checkpoint_ = true;
        break;
      case wv1::Control::REPLAN:
        replan_ = control.plan();
        break;
      default:
        break;
    }
  }
}

absl::Status JobRunner::Checkpoint(core::Trainer& trainer, const std::string& reason) {
  absl::StatusOr<std::string> path = trainer.SaveCheckpoint();
  if (!path.ok()) return path.status();
  wv1::WorkerMessage message;
  wv1::CheckpointDone& done = *message.mutable_checkpoint();
  done.set_step(trainer.step());
  done.set_path(*path);
  done.set_reason(reason);
  return Send(message);
}

absl::Status JobRunner::ServeControls(core::Trainer& trainer) {
  std::optional<wv1::PlanChoice> replan;
  std::string checkpoint_reason;
  {
    std::lock_guard<std::mutex> lock(control_mutex_);
    replan = std::exchange(replan_, std::nullopt);
    if (checkpoint_.exchange(false)) checkpoint_reason = checkpoint_reason_;
  }
  if (!checkpoint_reason.empty()) {
    if (absl::Status s = Checkpoint(trainer, checkpoint_reason); !s.ok()) return s;
  }
  if (replan) {
    // The scheduler shrinks the job: checkpoint first (a failed switch resumes from it), then take
    // the smaller plan in place and cap memory at its budget.
    if (absl::Status s = Checkpoint(trainer, "shrink"); !s.ok()) return s;
    absl::StatusOr<core::PlanSpec> spec = PlanSpecFrom(*replan);
    if (!spec.ok()) return spec.status();
    const int64_t old_budget = trainer.options().memory.budget_bytes;
    const int64_t old_peak = trainer.predicted_peak_bytes();
    if (absl::Status s = trainer.Replan(*spec); !s.ok()) return s;
    core::CpuMemoryMeter::Install().SetLimit(trainer.baseline_bytes() + spec->budget_bytes);
    wv1::WorkerMessage message;
    v1::Replanned& replanned = *message.mutable_replanned();
    replanned.set_reason("the scheduler shrank the job to make room for another");
    replanned.set_old_budget_bytes(old_budget);
    replanned.set_new_budget_bytes(spec->budget_bytes);
    replanned.set_old_predicted_peak_bytes(old_peak);
    replanned.set_new_predicted_peak_bytes(trainer.predicted_peak_bytes());
    if (trainer.training_plan() != nullptr) *replanned.mutable_plan() = PlanMessage(*trainer.training_plan());
    return Send(message);
  }
  return absl::OkStatus();
}

int JobRunner::Train(const wv1::TrainCall& call) {
  const wv1::JobContext& context = call.job();
  absl::StatusOr<core::TrainOptions> options = TrainOptionsFor(context);
  if (!options.ok()) return Finish(options.status());
  options->checkpoint.dir = call.checkpoint_dir();
  // Resume from the newest checkpoint that loads; a damaged newest one falls back to the one before.
  std::vector<std::string> checkpoints = core::CheckpointStore::List(call.checkpoint_dir());
  for (auto it = checkpoints.rbegin(); it != checkpoints.rend(); ++it) {
    absl::StatusOr<core::Checkpoint> read = core::Checkpoint::Read(*it);
    if (read.ok()) {
      options->checkpoint.resume_from = *it;
      break;
    }
    spdlog::warn("skipping checkpoint {}: {}", *it, std::string(read.status().message()));
  }
  absl::StatusOr<std::unique_ptr<core::Trainer>> created = absl::UnknownError("not created");
  if (call.plan().layers_size() > 0 || call.plan().lean_layers()) {
    absl::StatusOr<core::PlanSpec> spec = PlanSpecFrom(call.plan());
    if (!spec.ok()) return Finish(spec.status());
    options->memory.budget_bytes = spec->budget_bytes;
    created = core::Trainer::Create(*options, *spec);
  } else {
    created = core::Trainer::Create(*options);
  }
  if (!created.ok()) return Finish(created.status());
  core::Trainer& trainer = **created;
  spdlog::info("training {} on {} with a budget of {}{}", options->model.name, context.device(),
               HumanBytes(context.budget_bytes()),
               options->checkpoint.resume_from.empty() ? "" : absl::StrCat("; resuming from ", options->checkpoint.resume_from));
  if (trainer.training_plan() != nullptr) {
    wv1::WorkerMessage message;
    *message.mutable_plan() = PlanMessage(*trainer.training_plan());
    if (!Send(message).ok()) return 1;
  }
  // The job never takes more than its budget: past it, allocations fail and the job ends cleanly.
  core::CpuMemoryMeter& meter = core::CpuMemoryMeter::Install();
  const int64_t budget = context.budget_bytes();
  if (budget > 0) meter.SetLimit(trainer.baseline_bytes() + budget);

  std::thread reader([this] { ReadControls(); });
  reader.detach();  // blocked in read(2) until the server closes the channel or the process exits

  const int64_t total_steps = TotalSteps(*options);
  absl::Status served = absl::OkStatus();
  std::map<std::string, double> final_metrics;
  auto on_event = [&](const core::TrainEvent& event) {
    wv1::WorkerMessage message;
    switch (event.kind) {
      case core::TrainEventKind::kDone:
        final_metrics = event.metrics;
        return;
      case core::TrainEventKind::kStep: {
        v1::StepMetrics& step = *message.mutable_step();
        step.set_step(event.step);
        step.set_epoch(event.epoch);
        step.set_loss(event.loss);
        step.set_lr(event.lr);
        step.set_samples_per_second(event.samples_per_second);
        step.set_step_seconds(event.step_seconds);
        step.set_measured_peak_bytes(event.measured_peak_bytes);
        step.set_predicted_peak_bytes(event.predicted_peak_bytes);
        step.set_total_steps(total_steps);
        for (const auto& [path, probes] : event.probes) step.add_probes(probes);
        if (event.fidelity) step.set_fidelity_ratio(event.fidelity->ratio);
        break;
      }
      case core::TrainEventKind::kEpoch: {
        v1::ValidationMetrics& validation = *message.mutable_validation();
        validation.set_epoch(event.epoch);
        validation.set_step(event.step);
        validation.set_train_loss(event.loss);
        validation.set_metric_name(event.metric_name);
        validation.set_metric_value(event.metric_value);
        for (const auto& [name, value] : event.metrics) (*validation.mutable_metrics())[name] = value;
        break;
      }
      case core::TrainEventKind::kCheckpoint: {
        wv1::CheckpointDone& done = *message.mutable_checkpoint();
        done.set_step(event.step);
        done.set_path(event.checkpoint_path);
        done.set_reason("interval");
        break;
      }
      case core::TrainEventKind::kReplan: {
        v1::Replanned& replanned = *message.mutable_replanned();
        replanned.set_reason(event.reason);
        replanned.set_old_budget_bytes(budget);
        replanned.set_new_budget_bytes(budget);
        replanned.set_old_predicted_peak_bytes(event.previous_predicted_peak_bytes);
        replanned.set_new_predicted_peak_bytes(event.predicted_peak_bytes);
        if (trainer.training_plan() != nullptr) *replanned.mutable_plan() = PlanMessage(*trainer.training_plan());
        break;
      }
      default:
        return;
    }
    if (!Send(message).ok()) cancel_ = true;
    if (event.kind == core::TrainEventKind::kStep && served.ok()) {
      served = ServeControls(trainer);
      if (!served.ok()) cancel_ = true;
    }
  };
  absl::Status run = trainer.Run(on_event, &cancel_);
  if (!served.ok()) return Finish(served);
  wv1::Finished finished;
  finished.set_step(trainer.step());
  if (stop_) {
    if (absl::Status s = Checkpoint(trainer, "stop"); !s.ok()) return Finish(s);
    finished.set_stopped(true);
    std::lock_guard<std::mutex> lock(control_mutex_);
    spdlog::info("stopped after step {} ({})", trainer.step(), stop_reason_);
    return Finish(absl::OkStatus(), finished);
  }
  if (user_cancel_) return Finish(absl::CancelledError(absl::StrCat("cancelled after step ", trainer.step())), finished);
  if (!run.ok()) {
    if (meter.refusals() > 0) {
      return Finish(absl::ResourceExhaustedError(absl::StrCat(
                        "the job went over its memory budget of ", HumanBytes(budget), " at step ", trainer.step() + 1,
                        " (an allocation of ", HumanBytes(meter.last_refused_bytes()), " was refused; predicted peak ",
                        HumanBytes(trainer.predicted_peak_bytes()), "): ", run.message())),
                    finished);
    }
    return Finish(run, finished);
  }
  if (!call.final_weights_path().empty()) {
    if (absl::Status s = SaveWeights(*options, *trainer.model(), call.final_weights_path()); !s.ok()) return Finish(s, finished);
    finished.set_weights_path(call.final_weights_path());
  }
  if (final_metrics.empty() && options->data.validation) {
    // Stopped by max_steps inside an epoch: no epoch-end evaluation ran yet.
    absl::StatusOr<std::map<std::string, double>> metrics = trainer.Evaluate();
    if (metrics.ok()) final_metrics = *metrics;
  }
  for (const auto& [name, value] : final_metrics) (*finished.mutable_final_metrics())[name] = value;
  return Finish(absl::OkStatus(), finished);
}

}  // namespace xtrain::server
