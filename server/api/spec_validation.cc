#include "server/api/spec_validation.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace xtrain::server {
namespace v1 = ::xtrain::v1;
namespace {

absl::Status Invalid(const std::string& field, const std::string& value, const std::string& change) {
  return absl::InvalidArgumentError(absl::StrCat("spec.", field, " is ", value, "; ", change));
}

template <typename T>
std::string Text(T value) {
  return absl::StrCat(value);
}

bool OneOf(const std::string& value, std::initializer_list<const char*> allowed) {
  for (const char* a : allowed) {
    if (value == a) return true;
  }
  return false;
}

std::string Quoted(const std::string& value) { return absl::StrCat("'", value, "'"); }

absl::Status CheckModel(const v1::ModelSpec& m) {
  if (m.name().empty()) {
    return absl::InvalidArgumentError(
        "spec.model.name is empty; name a zoo model such as small_cnn, resnet18, squeezenet1_1 or unet");
  }
  if (m.dims() != 0 && m.dims() != 2 && m.dims() != 3) {
    return Invalid("model.dims", Text(m.dims()), "use 2 (images) or 3 (volumes)");
  }
  const std::pair<const char*, int64_t> counts[] = {{"model.in_channels", m.in_channels()},
                                                    {"model.out_channels", m.out_channels()},
                                                    {"model.classes", m.classes()},
                                                    {"model.width", m.width()},
                                                    {"model.depth", m.depth()},
                                                    {"model.scale", m.scale()}};
  for (const auto& [field, value] : counts) {
    if (value < 0) return Invalid(field, Text(value), "use 0 (the default) or a positive count");
    if (value > 100000) return Invalid(field, Text(value), "use a value up to 100000");
  }
  if (m.name() == "torchscript" && m.init_artifact_id().empty() && m.init_path().empty()) {
    return absl::InvalidArgumentError(
        "spec.model.name is torchscript but no module is given; upload the torch.jit.save'd file (xtrainctl "
        "upload) and set spec.model.init_artifact_id, or set spec.model.init_path to it under a data root");
  }
  if (!m.init_artifact_id().empty() && !m.init_path().empty()) {
    return absl::InvalidArgumentError(
        "spec.model.init_artifact_id and spec.model.init_path are both set; give the initial weights one way");
  }
  for (const std::string& prefix : m.freeze()) {
    if (prefix.empty()) return absl::InvalidArgumentError("spec.model.freeze has an empty prefix; remove it");
  }
  return absl::OkStatus();
}

absl::Status CheckDataset(const v1::DatasetSpec& d) {
  if (d.kind() == v1::DatasetSpec::KIND_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        "spec.dataset.kind is not set; use MNIST, CIFAR10, IMAGE_FOLDER, NPY or SYNTHETIC");
  }
  if (!v1::DatasetSpec::Kind_IsValid(d.kind())) return Invalid("dataset.kind", Text(d.kind()), "use a known kind");
  if (d.kind() != v1::DatasetSpec::SYNTHETIC && d.path().empty()) {
    return absl::InvalidArgumentError("spec.dataset.path is empty; give the data's path under a data root");
  }
  if (d.kind() == v1::DatasetSpec::NPY && d.targets_path().empty()) {
    // Targets are optional for tasks that make their own; nothing to check here.
  }
  if (d.limit() < 0) return Invalid("dataset.limit", Text(d.limit()), "use 0 (all) or a positive count");
  if (d.validation_limit() < 0) {
    return Invalid("dataset.validation_limit", Text(d.validation_limit()), "use 0 (all) or a positive count");
  }
  if (!(d.validation_fraction() >= 0 && d.validation_fraction() < 1)) {
    return Invalid("dataset.validation_fraction", Text(d.validation_fraction()), "use a fraction in [0, 1)");
  }
  if (d.image_size() < 0 || d.image_size() > 4096) {
    return Invalid("dataset.image_size", Text(d.image_size()), "use 0 (keep) or a side up to 4096");
  }
  if (d.kind() == v1::DatasetSpec::SYNTHETIC) {
    if (d.synthetic_examples() < 0 || d.synthetic_examples() > 10000000) {
      return Invalid("dataset.synthetic_examples", Text(d.synthetic_examples()), "use 1 to 10000000 (0 = 1024)");
    }
    if (d.synthetic_channels() < 0 || d.synthetic_channels() > 1024) {
      return Invalid("dataset.synthetic_channels", Text(d.synthetic_channels()), "use 1 to 1024 (0 = 1)");
    }
    if (d.synthetic_size() < 0 || d.synthetic_size() > 4096) {
      return Invalid("dataset.synthetic_size", Text(d.synthetic_size()), "use 1 to 4096 (0 = 28)");
    }
    if (d.synthetic_classes() < 0 || d.synthetic_classes() > 100000) {
      return Invalid("dataset.synthetic_classes", Text(d.synthetic_classes()), "use 2 or more (0 = 10)");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckTask(const v1::TaskSpec& t) {
  if (!t.kind().empty() &&
      !OneOf(t.kind(), {"classification", "segmentation", "super_resolution", "inpainting", "generative"})) {
    return Invalid("task.kind", Quoted(t.kind()),
                   "use classification, segmentation, super_resolution, inpainting or generative");
  }
  if (t.scale() < 0 || t.scale() > 16) return Invalid("task.scale", Text(t.scale()), "use 0 (= 2) up to 16");
  if (!(t.hole_fraction() >= 0 && t.hole_fraction() < 1)) {
    return Invalid("task.hole_fraction", Text(t.hole_fraction()), "use a fraction in [0, 1)");
  }
  if (t.timesteps() < 0 || t.timesteps() > 100000) {
    return Invalid("task.timesteps", Text(t.timesteps()), "use 0 (= 1000) up to 100000");
  }
  return absl::OkStatus();
}

absl::Status CheckTraining(const v1::TrainingSpec& t) {
  if (t.batch_size() < 0 || t.batch_size() > 65536) {
    return Invalid("training.batch_size", Text(t.batch_size()), "use 1 to 65536 (0 = 32)");
  }
  if (t.epochs() < 0 || t.epochs() > 100000) return Invalid("training.epochs", Text(t.epochs()), "use 1 to 100000 (0 = 1)");
  if (t.max_steps() < 0) return Invalid("training.max_steps", Text(t.max_steps()), "use 0 (all epochs) or a positive count");
  if (!OneOf(t.optimizer(), {"", "sgd", "sgd_momentum", "adam", "adamw"})) {
    return Invalid("training.optimizer", Quoted(t.optimizer()), "use sgd, sgd_momentum, adam or adamw");
  }
  if (!std::isfinite(t.lr()) || t.lr() < 0 || t.lr() > 100) {
    return Invalid("training.lr", Text(t.lr()), "use a positive learning rate such as 0.05 (0 = the optimizer's default)");
  }
  if (!(t.momentum() >= 0 && t.momentum() < 1)) return Invalid("training.momentum", Text(t.momentum()), "use a value in [0, 1)");
  if (!std::isfinite(t.weight_decay()) || t.weight_decay() < 0) {
    return Invalid("training.weight_decay", Text(t.weight_decay()), "use 0 or more");
  }
  if (!OneOf(t.schedule(), {"", "none", "step", "cosine"})) {
    return Invalid("training.schedule", Quoted(t.schedule()), "use none, step or cosine");
  }
  if (t.warmup_steps() < 0) return Invalid("training.warmup_steps", Text(t.warmup_steps()), "use 0 or more");
  if (t.step_size() < 0) return Invalid("training.step_size", Text(t.step_size()), "use 0 (= 1000) or more");
  if (!(t.gamma() >= 0 && t.gamma() <= 1)) return Invalid("training.gamma", Text(t.gamma()), "use a factor in (0, 1] (0 = 0.1)");
  if (!std::isfinite(t.clip_grad_norm()) || t.clip_grad_norm() < 0) {
    return Invalid("training.clip_grad_norm", Text(t.clip_grad_norm()), "use 0 (off) or a positive norm");
  }
  if (!OneOf(t.dtype(), {"", "float32", "bfloat16"})) {
    return Invalid("training.dtype", Quoted(t.dtype()), "use float32 or bfloat16");
  }
  return absl::OkStatus();
}

absl::Status CheckMemory(const v1::MemorySpec& m) {
  if (m.budget_bytes() < 0) return Invalid("memory.budget_bytes", Text(m.budget_bytes()), "use 0 (the device's share) or a byte count");
  if (!(m.device_share() >= 0 && m.device_share() <= 1)) {
    return Invalid("memory.device_share", Text(m.device_share()), "use a share in (0, 1]");
  }
  if (m.budget_bytes() > 0 && m.device_share() > 0) {
    return absl::InvalidArgumentError(
        "spec.memory.budget_bytes and spec.memory.device_share are both set; give the budget one way");
  }
  if (!v1::MemorySpec::Probes_IsValid(m.probes())) return Invalid("memory.probes", Text(m.probes()), "use AUTO, FIXED or EXACT");
  if (m.probes() == v1::MemorySpec::PROBES_FIXED && m.fixed_probes() <= 0) {
    return Invalid("memory.fixed_probes", Text(m.fixed_probes()), "PROBES_FIXED needs a positive probe count");
  }
  if (m.probes() != v1::MemorySpec::PROBES_FIXED && m.fixed_probes() != 0) {
    return Invalid("memory.fixed_probes", Text(m.fixed_probes()), "set it only with probes: PROBES_FIXED");
  }
  if (m.fixed_probes() > 4096) return Invalid("memory.fixed_probes", Text(m.fixed_probes()), "use up to 4096");
  if (m.min_probes() < 0 || m.max_probes() < 0 || m.max_probes() > 4096) {
    return absl::InvalidArgumentError("spec.memory.min_probes and max_probes must be 0 (default) to 4096");
  }
  if (m.max_probes() > 0 && m.min_probes() > m.max_probes()) {
    return absl::InvalidArgumentError(absl::StrCat("spec.memory.min_probes (", m.min_probes(),
                                                   ") is above max_probes (", m.max_probes(), "); lower it"));
  }
  if (!(m.min_fidelity() >= 0 && m.min_fidelity() <= 1)) {
    return Invalid("memory.min_fidelity", Text(m.min_fidelity()), "use a value in [0, 1]");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateJobSpec(const v1::JobSpec& spec) {
  if (spec.display_name().size() > 256) {
    return absl::InvalidArgumentError("spec.display_name is longer than 256 characters; shorten it");
  }
  if (absl::Status s = CheckModel(spec.model()); !s.ok()) return s;
  if (absl::Status s = CheckDataset(spec.dataset()); !s.ok()) return s;
  if (absl::Status s = CheckTask(spec.task()); !s.ok()) return s;
  if (absl::Status s = CheckTraining(spec.training()); !s.ok()) return s;
  if (absl::Status s = CheckMemory(spec.memory()); !s.ok()) return s;
  const v1::CheckpointSpec& c = spec.checkpoint();
  if (c.every_steps() < 0) return Invalid("checkpoint.every_steps", Text(c.every_steps()), "use 0 (by time) or more");
  if (!std::isfinite(c.every_seconds())) return Invalid("checkpoint.every_seconds", "not finite", "use seconds, 0 or -1");
  if (c.keep() < 0 || c.keep() > 100) return Invalid("checkpoint.keep", Text(c.keep()), "use 1 to 100 (0 = 3)");
  if (spec.priority() < -100 || spec.priority() > 100) {
    return Invalid("priority", Text(spec.priority()), "use -100 to 100");
  }
  if (spec.labels_size() > 64) return absl::InvalidArgumentError("spec.labels has more than 64 labels; keep fewer");
  for (const auto& [key, value] : spec.labels()) {
    if (key.empty() || key.size() > 63) {
      return absl::InvalidArgumentError(absl::StrCat("spec.labels key '", key, "' must be 1 to 63 characters"));
    }
    if (value.size() > 256) {
      return absl::InvalidArgumentError(absl::StrCat("spec.labels['", key, "'] is longer than 256 characters"));
    }
  }
  return absl::OkStatus();
}

}  // namespace xtrain::server
