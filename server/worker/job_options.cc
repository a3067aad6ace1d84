#include "server/worker/job_options.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/data/cifar10.h"
#include "core/data/idx_reader.h"
#include "core/data/image_folder.h"
#include "core/data/npy.h"
#include "core/data/synthetic.h"
#include "core/data/task.h"
#include "core/data/tensor_dataset.h"
#include "core/models/model_zoo.h"
#include "core/util/optimizer.h"
#include "server/common/util.h"

namespace xtrain::server {
namespace v1 = ::xtrain::v1;
namespace wv1 = ::xtrain::worker::v1;
using core::TensorDataset;

namespace {

// `status` with `context` in front of its message, same code.
absl::Status Prefixed(const absl::Status& status, const std::string& context) {
  return absl::Status(status.code(), absl::StrCat(context, status.message()));
}

absl::StatusOr<std::string> Confined(const wv1::JobContext& context, const std::string& path, const std::string& field) {
  std::vector<std::string> roots(context.data_roots().begin(), context.data_roots().end());
  return ResolveUnderRoots(roots, path, field);
}

// Every image resized to side x side (bilinear for inputs, nearest for masks).
TensorDataset Resized(TensorDataset data, int64_t side) {
  if (side <= 0 || data.inputs.dim() != 4) return data;
  if (data.inputs.size(2) == side && data.inputs.size(3) == side) return data;
  namespace F = torch::nn::functional;
  data.inputs = F::interpolate(data.inputs, F::InterpolateFuncOptions()
                                                .size(std::vector<int64_t>{side, side})
                                                .mode(torch::kBilinear)
                                                .align_corners(false))
                    .clamp(0, 1)
                    .contiguous();
  if (data.targets.defined() && data.targets.dim() == 3) {
    data.targets = F::interpolate(data.targets.unsqueeze(1).to(torch::kFloat),
                                  F::InterpolateFuncOptions().size(std::vector<int64_t>{side, side}).mode(torch::kNearest))
                       .squeeze(1)
                       .to(torch::kLong)
                       .contiguous();
  }
  return data;
}

absl::StatusOr<TensorDataset> Limited(TensorDataset data, int64_t limit, const std::string& field) {
  if (limit <= 0 || limit >= data.size()) return data;
  absl::StatusOr<TensorDataset> subset = core::Subset(data, limit);
  if (!subset.ok()) return Prefixed(subset.status(), absl::StrCat(field, ": "));
  subset->inputs = subset->inputs.contiguous();
  if (subset->targets.defined()) subset->targets = subset->targets.contiguous();
  return subset;
}

struct Datasets {
  TensorDataset train;
  std::optional<TensorDataset> validation;
};

absl::StatusOr<Datasets> LoadDatasets(const wv1::JobContext& context, core::TaskKind task, uint64_t seed) {
  const v1::DatasetSpec& d = context.spec().dataset();
  Datasets out;
  bool has_test_split = false;
  absl::StatusOr<TensorDataset> train = absl::InvalidArgumentError("spec.dataset.kind is not set");
  absl::StatusOr<TensorDataset> test = absl::InvalidArgumentError("no test split");
  std::string path;
  if (d.kind() != v1::DatasetSpec::SYNTHETIC) {
    absl::StatusOr<std::string> resolved = Confined(context, d.path(), "spec.dataset.path");
    if (!resolved.ok()) return resolved.status();
    path = *resolved;
  }
  switch (d.kind()) {
    case v1::DatasetSpec::MNIST:
      train = core::LoadMnistFolder(path, true);
      if (!d.no_validation() && d.validation_fraction() == 0) {
        test = core::LoadMnistFolder(path, false);
        has_test_split = true;
      }
      break;
    case v1::DatasetSpec::CIFAR10:
      train = core::LoadCifar10Folder(path, true);
      if (!d.no_validation() && d.validation_fraction() == 0) {
        test = core::LoadCifar10Folder(path, false);
        has_test_split = true;
      }
      break;
    case v1::DatasetSpec::IMAGE_FOLDER: {
      core::ImageFolderOptions options;
      if (context.spec().model().in_channels() > 0 && task != core::TaskKind::kInpainting &&
          task != core::TaskKind::kGenerative) {
        options.channels = static_cast<int>(context.spec().model().in_channels());
      }
      train = task == core::TaskKind::kSegmentation ? core::LoadSegmentationFolder(path, options)
                                                    : core::LoadImageFolder(path, options);
      break;
    }
    case v1::DatasetSpec::NPY: {
      std::string targets;
      if (!d.targets_path().empty()) {
        absl::StatusOr<std::string> resolved = Confined(context, d.targets_path(), "spec.dataset.targets_path");
        if (!resolved.ok()) return resolved.status();
        targets = *resolved;
      }
      train = core::LoadNpyDataset(path, targets);
      break;
    }
    case v1::DatasetSpec::SYNTHETIC: {
      const int64_t n = d.synthetic_examples() > 0 ? d.synthetic_examples() : 1024;
      const int64_t channels = d.synthetic_channels() > 0 ? d.synthetic_channels() : 1;
      const int64_t side = d.synthetic_size() > 0 ? d.synthetic_size() : 28;
      const int64_t classes = d.synthetic_classes() > 0 ? d.synthetic_classes() : 10;
      std::vector<int64_t> spatial(context.spec().model().dims() == 3 ? 3 : 2, side);
      auto make = [&](int64_t count, uint64_t s) {
        return task == core::TaskKind::kSegmentation
                   ? core::MakeSyntheticSegmentation(count, channels, spatial, classes, s)
                   : core::MakeSyntheticClassification(count, channels, spatial, classes, s);
      };
      train = make(n, seed);
      if (!d.no_validation() && d.validation_fraction() == 0) {
        test = make(std::max<int64_t>(1, n / 5), seed + 1);
        has_test_split = true;
      }
      break;
    }
    default:
      return absl::InvalidArgumentError("spec.dataset.kind is not set; use MNIST, CIFAR10, IMAGE_FOLDER, NPY or SYNTHETIC");
  }
  if (!train.ok()) return Prefixed(train.status(), "spec.dataset: ");
  if (has_test_split && !test.ok()) return Prefixed(test.status(), "spec.dataset (its test split): ");

  TensorDataset full = *std::move(train);
  if (!d.no_validation() && d.validation_fraction() > 0) {
    absl::StatusOr<std::pair<TensorDataset, TensorDataset>> split =
        core::SplitTrainValidation(full, d.validation_fraction(), seed);
    if (!split.ok()) return Prefixed(split.status(), "spec.dataset.validation_fraction: ");
    full = std::move(split->first);
    out.validation = std::move(split->second);
  } else if (has_test_split) {
    out.validation = *std::move(test);
  }
  absl::StatusOr<TensorDataset> limited = Limited(std::move(full), d.limit(), "spec.dataset.limit");
  if (!limited.ok()) return limited.status();
  out.train = Resized(*std::move(limited), d.image_size());
  if (out.validation) {
    absl::StatusOr<TensorDataset> v = Limited(*std::move(out.validation), d.validation_limit(), "spec.dataset.validation_limit");
    if (!v.ok()) return v.status();
    out.validation = Resized(*std::move(v), d.image_size());
  }
  return out;
}

absl::StatusOr<core::ScheduleKind> Schedule(const std::string& name) {
  if (name.empty()) return core::ScheduleKind::kNone;
  return core::ParseScheduleKind(name);
}

}  // namespace

absl::StatusOr<core::TrainOptions> TrainOptionsFor(const wv1::JobContext& context) {
  const v1::JobSpec& spec = context.spec();
  if (!context.device().empty() && context.device() != "cpu") {
    // The trainer runs on the CPU; a job placed on a GPU must not silently train on the CPU instead.
    return absl::FailedPreconditionError(absl::StrCat(
        "the job was placed on device ", context.device(), " but this xtrain-worker trains on the CPU only; "
        "configure the server with --device cpu until a CUDA worker is deployed"));
  }
  core::TrainOptions o;
  absl::StatusOr<core::TaskKind> task = core::ParseTaskKind(spec.task().kind().empty() ? "classification" : spec.task().kind());
  if (!task.ok()) return Prefixed(task.status(), "spec.task.kind: ");
  o.task.kind = *task;
  if (spec.task().scale() > 0) o.task.options.scale = spec.task().scale();
  if (spec.task().hole_fraction() > 0) o.task.options.hole_fraction = spec.task().hole_fraction();
  if (spec.task().timesteps() > 0) o.task.options.timesteps = spec.task().timesteps();

  const v1::TrainingSpec& t = spec.training();
  o.seed = t.seed();
  absl::StatusOr<Datasets> data = LoadDatasets(context, o.task.kind, o.seed);
  if (!data.ok()) return data.status();
  const int64_t data_channels = data->train.inputs.size(1);
  o.data.train = std::make_shared<const TensorDataset>(data->train);
  if (data->validation) o.data.validation = std::make_shared<const TensorDataset>(*data->validation);

  const v1::ModelSpec& m = spec.model();
  o.model.name = m.name();
  o.model.dims = m.dims() > 0 ? m.dims() : data->train.inputs.dim() - 2;
  o.model.in_channels = m.in_channels() > 0 ? m.in_channels() : core::InputChannels(o.task.kind, data_channels);
  int64_t classes = m.classes();
  if (classes == 0 && data->train.targets.defined() &&
      (o.task.kind == core::TaskKind::kClassification || o.task.kind == core::TaskKind::kSegmentation)) {
    classes = data->train.targets.max().item<int64_t>() + 1;
    if (data->validation && data->validation->targets.defined()) {
      classes = std::max(classes, data->validation->targets.max().item<int64_t>() + 1);
    }
  }
  o.model.classes = classes > 0 ? classes : 10;
  o.model.out_channels = m.out_channels() > 0 ? m.out_channels()
                                              : core::OutputChannels(o.task.kind, data_channels, o.model.classes);
  o.model.width = m.width();
  o.model.depth = m.depth();
  o.model.scale = m.scale() > 0 ? m.scale() : o.task.options.scale;
  o.model.batch_norm = !m.no_batch_norm();
  o.model.imagenet_stem = m.imagenet_stem();
  o.model.seed = m.init_seed();
  o.init.path = context.init_weights_path();
  o.init.strict = !m.init_non_strict();
  if (o.model.name == core::kTorchScriptModel) {
    // The module file is the model and its initial weights. A classifier's head follows the data's
    // classes (replaced when the module has another count); dense modules keep their outputs.
    o.model.script_path = o.init.path;
    o.model.script_name = m.init_artifact_id().empty() ? m.init_path() : absl::StrCat("artifact ", m.init_artifact_id());
    o.init.path.clear();
    o.model.classes = o.task.kind == core::TaskKind::kClassification ? o.model.classes : 0;
  }
  o.freeze.assign(m.freeze().begin(), m.freeze().end());

  o.batch_size = t.batch_size() > 0 ? t.batch_size() : 32;
  o.epochs = t.epochs() > 0 ? t.epochs() : 1;
  o.max_steps = t.max_steps();
  absl::StatusOr<core::OptimizerKind> optimizer = core::ParseOptimizerKind(t.optimizer().empty() ? "sgd_momentum" : t.optimizer());
  if (!optimizer.ok()) return Prefixed(optimizer.status(), "spec.training.optimizer: ");
  o.optimizer.kind = *optimizer;
  const bool adam = o.optimizer.kind == core::OptimizerKind::kAdam || o.optimizer.kind == core::OptimizerKind::kAdamW;
  o.optimizer.lr = t.lr() > 0 ? t.lr() : (adam ? 0.001 : 0.05);
  o.optimizer.momentum = t.momentum() > 0 ? t.momentum() : 0.9;
  o.optimizer.weight_decay = t.weight_decay();
  absl::StatusOr<core::ScheduleKind> schedule = Schedule(t.schedule());
  if (!schedule.ok()) return Prefixed(schedule.status(), "spec.training.schedule: ");
  o.schedule.kind = *schedule;
  o.schedule.warmup_steps = t.warmup_steps();
  if (t.step_size() > 0) o.schedule.step_size = t.step_size();
  if (t.gamma() > 0) o.schedule.gamma = t.gamma();
  o.clip_grad_norm = t.clip_grad_norm();
  o.dtype = t.dtype() == "bfloat16" ? torch::kBFloat16 : torch::kFloat;
  o.fidelity_interval = t.fidelity_interval() > 0 ? t.fidelity_interval() : (t.fidelity_interval() < 0 ? 0 : 100);
  o.threads = context.threads();

  const v1::MemorySpec& memory = spec.memory();
  if (memory.probes() == v1::MemorySpec::PROBES_FIXED) {
    o.memory.fixed_probes = memory.fixed_probes();
    o.memory.predict = true;
  } else {
    o.memory.budget_bytes = context.budget_bytes();
  }
  if (memory.min_probes() > 0) o.memory.planner.min_probes = memory.min_probes();
  if (memory.max_probes() > 0) o.memory.planner.max_probes = memory.max_probes();
  for (const std::string& path : memory.keep_exact()) o.memory.planner.keep_exact.insert(path);

  o.checkpoint.every_steps = spec.checkpoint().every_steps();
  o.checkpoint.keep = spec.checkpoint().keep() > 0 ? spec.checkpoint().keep() : 3;
  o.checkpoint.on_cancel = false;  // the worker writes the checkpoints a stop needs itself
  return o;
}

}  // namespace xtrain::server
