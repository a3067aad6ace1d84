#include "core/train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include <torch/script.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/models/network.h"
#include "core/models/torchvision_names.h"
#include "core/train/archive_check.h"
#include "core/util/torch_guard.h"

namespace xtrain::core {
namespace {

constexpr char kFormat[] = "xtrain-checkpoint-v1";
constexpr int64_t kSettingsColumns = 6;  // probes, mode, distribution, route, center, chunk

std::string Join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : absl::StrCat(prefix, ".", name);
}

std::string Shape(const torch::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

// Every parameter and buffer path under `module`, for reporting a missing submodule.
void AllTensorPaths(torch::nn::Module& module, const std::string& prefix, std::vector<std::string>& out) {
  for (const auto& p : module.named_parameters(/*recurse=*/true)) out.push_back(Join(prefix, p.key()));
  for (const auto& b : module.named_buffers(/*recurse=*/true)) out.push_back(Join(prefix, b.key()));
}

// Copies `module`'s parameters and buffers (recursively) from `archive`, laid out as Module::save
// writes it: one nested archive per child. copy_ keeps the model's own tensors (and thus any
// optimizer holding them) and is bit-exact for equal dtypes.
absl::Status CopyModule(torch::serialize::InputArchive& archive, torch::nn::Module& module,
                        const std::string& prefix, bool strict, const std::string& file,
                        WeightsLoadReport& report) {
  torch::NoGradGuard no_grad;
  auto copy_one = [&](const std::string& name, torch::Tensor dest) -> absl::Status {
    if (!dest.defined()) return absl::OkStatus();
    const std::string path = Join(prefix, name);
    torch::Tensor source;
    if (!archive.try_read(name, source)) {
      if (strict) {
        return absl::InvalidArgumentError(absl::StrCat(
            file, " has no '", path, "'; load it with strict off or use a file of this model"));
      }
      report.skipped.push_back(path);
      return absl::OkStatus();
    }
    if (source.sizes() != dest.sizes()) {
      if (strict) {
        return absl::InvalidArgumentError(absl::StrCat("'", path, "' has shape ", Shape(source), " in ",
                                                       file, " but ", Shape(dest),
                                                       " in the model; load with strict off to skip it"));
      }
      report.skipped.push_back(path);
      return absl::OkStatus();
    }
    dest.copy_(source);
    report.loaded.push_back(path);
    return absl::OkStatus();
  };
  for (const auto& p : module.named_parameters(/*recurse=*/false)) {
    if (absl::Status s = copy_one(p.key(), p.value()); !s.ok()) return s;
  }
  for (const auto& b : module.named_buffers(/*recurse=*/false)) {
    if (absl::Status s = copy_one(b.key(), b.value()); !s.ok()) return s;
  }
  for (const auto& child : module.named_children()) {
    const std::string path = Join(prefix, child.key());
    torch::serialize::InputArchive nested;
    if (!archive.try_read(child.key(), nested)) {
      std::vector<std::string> missing;
      AllTensorPaths(*child.value(), path, missing);
      if (missing.empty()) continue;
      if (strict) {
        return absl::InvalidArgumentError(absl::StrCat(
            file, " has no module '", path, "'; load it with strict off or use a file of this model"));
      }
      report.skipped.insert(report.skipped.end(), missing.begin(), missing.end());
      continue;
    }
    if (absl::Status s = CopyModule(nested, *child.value(), path, strict, file, report); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}


// A TorchScript module with torchvision's names (scripts/export_torchvision.py) into the zoo net of the
// same layout. nullopt: the file is not such a module (LoadWeights reads it its own way).
absl::StatusOr<std::optional<WeightsLoadReport>> LoadTorchvisionWeights(const std::string& path, NetworkImpl& net,
                                                                        bool strict) {
  std::optional<torch::jit::Module> script;
  try {
    script = torch::jit::load(path, torch::kCPU);
  } catch (const std::exception&) {
    return std::optional<WeightsLoadReport>();  // not TorchScript: an xtrain file or torch::save's
  }
  std::map<std::string, torch::Tensor> source;
  for (const auto& p : script->named_parameters()) source[p.name] = p.value;
  for (const auto& b : script->named_buffers()) source[b.name] = b.value;
  const ModelSpec& spec = net.spec();
  const std::string probe = spec.name == "resnet18" ? "conv1.weight" : "features.3.squeeze.weight";
  if (!source.count(probe)) return std::optional<WeightsLoadReport>();  // not torchvision's names
  if (std::string why; !HasTorchvisionLayout(spec, &why)) {
    return absl::InvalidArgumentError(absl::StrCat(path, " holds torchvision's ", spec.name, " weights, but ", why));
  }
  return GuardFileRead(absl::StrCat("cannot load torchvision weights from ", path),
                       [&]() -> absl::StatusOr<std::optional<WeightsLoadReport>> {
    torch::NoGradGuard no_grad;
    std::map<std::string, torch::Tensor> dest;
    for (const auto& p : net.named_parameters()) dest[p.key()] = p.value();
    for (const auto& b : net.named_buffers()) dest[b.key()] = b.value();
    WeightsLoadReport report;
    std::set<std::string> filled;
    for (const auto& [name, tensor] : source) {
      std::optional<std::string> zoo = ZooNameOfTorchvision(spec, name);
      auto it = zoo ? dest.find(*zoo) : dest.end();
      if (it == dest.end()) {
        if (strict) {
          return absl::InvalidArgumentError(absl::StrCat(path, " has torchvision's '", name, "', which model ", spec.name,
                                                         " has no place for; load with strict off to skip it"));
        }
        report.skipped.push_back(name);
        continue;
      }
      if (tensor.sizes() != it->second.sizes()) {
        // A head for another class count: finetuning starts it afresh.
        if (IsTorchvisionHead(spec, *zoo)) {
          report.skipped.push_back(*zoo);
          continue;
        }
        if (strict) {
          return absl::InvalidArgumentError(absl::StrCat("torchvision's '", name, "' has shape ", Shape(tensor), " in ",
                                                         path, " but ", Shape(it->second), " in the model ('", *zoo,
                                                         "'); export for the data's channels (--in-channels) or load "
                                                         "with strict off"));
        }
        report.skipped.push_back(*zoo);
        continue;
      }
      it->second.copy_(tensor.to(it->second.dtype()));
      report.loaded.push_back(*zoo);
      filled.insert(*zoo);
    }
    for (const auto& [name, tensor] : dest) {
      if (filled.count(name) || IsTorchvisionHead(spec, name)) continue;
      if (strict) {
        return absl::InvalidArgumentError(absl::StrCat(path, " has no torchvision tensor for the model's '", name,
                                                       "'; load with strict off to leave it as initialised"));
      }
      report.skipped.push_back(name);
    }
    return std::optional<WeightsLoadReport>(std::move(report));
  }, absl::StatusCode::kInvalidArgument);
}

torch::Tensor SettingsTensor(const std::vector<XConvLayerRecord>& layers) {
  torch::Tensor t = torch::zeros({static_cast<int64_t>(layers.size()), kSettingsColumns}, torch::kLong);
  auto a = t.accessor<int64_t, 2>();
  for (size_t i = 0; i < layers.size(); ++i) {
    const XConvSettings& s = layers[i].settings;
    a[i][0] = s.probes;
    a[i][1] = static_cast<int64_t>(s.mode);
    a[i][2] = static_cast<int64_t>(s.distribution);
    a[i][3] = static_cast<int64_t>(s.route);
    a[i][4] = s.center ? 1 : 0;
    a[i][5] = s.reconstruct_batch_chunk;
  }
  return t;
}

absl::StatusOr<std::vector<XConvLayerRecord>> LayersFrom(const std::string& paths, const torch::Tensor& table,
                                                         const std::string& file) {
  std::vector<XConvLayerRecord> layers;
  if (paths.empty()) return layers;
  const std::vector<std::string> names = absl::StrSplit(paths, '\n');
  if (table.dim() != 2 || table.size(0) != static_cast<int64_t>(names.size()) ||
      table.size(1) != kSettingsColumns || table.scalar_type() != torch::kLong) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": the XConv layer table is malformed"));
  }
  auto a = table.accessor<int64_t, 2>();
  for (size_t i = 0; i < names.size(); ++i) {
    if (a[i][1] < 0 || a[i][1] > 2 || a[i][2] < 0 || a[i][2] > 2 || a[i][3] < 0 || a[i][3] > 2) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": layer ", names[i], " has unknown settings"));
    }
    XConvSettings s;
    s.probes = a[i][0];
    s.mode = static_cast<ProbeMode>(a[i][1]);
    s.distribution = static_cast<ProbeDistribution>(a[i][2]);
    s.route = static_cast<GradientRoute>(a[i][3]);
    s.center = a[i][4] != 0;
    s.reconstruct_batch_chunk = a[i][5];
    layers.push_back({names[i], s});
  }
  return layers;
}

// Opens an archive file; NotFound when missing, InvalidArgument when LibTorch cannot read it.
absl::StatusOr<std::unique_ptr<torch::serialize::InputArchive>> OpenArchive(const std::string& path,
                                                                           const std::string& what) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    return absl::NotFoundError(absl::StrCat(what, " ", path, " does not exist"));
  }
  // Damaged bytes are caught here, before LibTorch, which can crash on them (archive_check.h).
  if (absl::Status verified = VerifyArchive(path); !verified.ok()) {
    return absl::Status(verified.code(), absl::StrCat(what, " ", verified.message()));
  }
  return GuardFileRead(
      [&] { return absl::StrCat(what, " ", path, " is not a LibTorch archive"); },
      [&]() -> absl::StatusOr<std::unique_ptr<torch::serialize::InputArchive>> {
        auto archive = std::make_unique<torch::serialize::InputArchive>();
        archive->load_from(path);
        return archive;
      },
      absl::StatusCode::kInvalidArgument);
}

// Whether `archive` carries the checkpoint marker; called inside a guard (a malformed archive throws).
bool IsCheckpoint(torch::serialize::InputArchive& archive) {
  c10::IValue format;
  return archive.try_read("format", format) && format.isString() && format.toStringRef() == kFormat;
}

}  // namespace

absl::Status WriteArchiveAtomically(torch::serialize::OutputArchive& archive, const std::string& path) {
  const std::string temporary = absl::StrCat(path, ".tmp");
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot create checkpoint file ", temporary, ": ", std::strerror(errno)));
  }
  int write_errno = 0;
  // Not the guard: a failed write removes the temporary file and is Unavailable, with errno's reason.
  // After a failed write the writer is told every later chunk was written and the bytes are dropped:
  // LibTorch 1.13's zip writer checks a short count again in its destructor, where the throw
  // terminates the process (found by the full-disk test).
  try {
    archive.save_to([&](const void* data, size_t size) -> size_t {
      const char* bytes = static_cast<const char*>(data);
      size_t done = 0;
      while (write_errno == 0 && done < size) {
        const ssize_t n = ::write(fd, bytes + done, size - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          write_errno = n < 0 ? errno : EIO;
          break;
        }
        done += static_cast<size_t>(n);
      }
      return size;
    });
  } catch (const c10::Error& e) {
    ::close(fd);
    ::unlink(temporary.c_str());
    return absl::UnavailableError(absl::StrCat("cannot write checkpoint ", path, ": ",
                                               write_errno != 0 ? std::strerror(write_errno)
                                                                : e.what_without_backtrace()));
  }
  if (write_errno != 0) {
    ::close(fd);
    ::unlink(temporary.c_str());
    return absl::UnavailableError(absl::StrCat("cannot write checkpoint ", path, ": ", std::strerror(write_errno)));
  }
  const bool synced = ::fsync(fd) == 0;
  const int sync_errno = errno;
  ::close(fd);
  if (!synced) {
    ::unlink(temporary.c_str());
    return absl::UnavailableError(
        absl::StrCat("cannot sync checkpoint ", temporary, ": ", std::strerror(sync_errno)));
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    ::unlink(temporary.c_str());
    return absl::UnavailableError(
        absl::StrCat("cannot rename ", temporary, " to ", path, ": ", error.message()));
  }
  // The rename itself is durable once the directory is synced.
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const int dir_fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
  return absl::OkStatus();
}

absl::Status Checkpoint::Write(const std::string& path, const torch::nn::Module& model,
                               const torch::optim::Optimizer& optimizer, const CheckpointState& state) {
  return GuardTorch(absl::StrCat("cannot serialise checkpoint ", path), [&]() -> absl::Status {
    torch::serialize::OutputArchive archive;
    archive.write("format", c10::IValue(std::string(kFormat)));
    archive.write("model_name", c10::IValue(state.model_name));
    archive.write("step", c10::IValue(state.step));
    archive.write("epoch", c10::IValue(state.position.epoch));
    archive.write("batch", c10::IValue(state.position.batch));
    archive.write("epoch_loss_sum", c10::IValue(state.epoch_loss_sum));
    archive.write("epoch_loss_count", c10::IValue(state.epoch_loss_count));
    archive.write("lr", c10::IValue(state.lr));
    archive.write("global_generator_state", state.global_generator_state);
    archive.write("task_generator_state", state.task_generator_state);
    archive.write("lean_layers", c10::IValue(state.lean_layers));
    std::vector<std::string> paths;
    for (const XConvLayerRecord& layer : state.xconv_layers) paths.push_back(layer.path);
    archive.write("xconv_paths", c10::IValue(absl::StrJoin(paths, "\n")));
    archive.write("xconv_settings", SettingsTensor(state.xconv_layers));
    torch::serialize::OutputArchive model_archive;
    model.save(model_archive);
    archive.write("model", model_archive);
    torch::serialize::OutputArchive optimizer_archive;
    optimizer.save(optimizer_archive);
    archive.write("optimizer", optimizer_archive);
    return WriteArchiveAtomically(archive, path);
  });
}

absl::StatusOr<Checkpoint> Checkpoint::Read(const std::string& path) {
  absl::StatusOr<std::unique_ptr<torch::serialize::InputArchive>> archive = OpenArchive(path, "checkpoint");
  if (!archive.ok()) return archive.status();
  torch::serialize::InputArchive& a = **archive;
  const std::string context = absl::StrCat("checkpoint ", path, " is incomplete");
  return GuardFileRead(context, [&]() -> absl::StatusOr<Checkpoint> {
    if (!IsCheckpoint(a)) {
      return absl::InvalidArgumentError(absl::StrCat(path, " is not an xtrain checkpoint (no '", kFormat,
                                                     "' marker); pass a checkpoint that Trainer wrote"));
    }
    CheckpointState state;
    c10::IValue v;
    a.read("model_name", v);
    state.model_name = v.toStringRef();
    a.read("step", v);
    state.step = v.toInt();
    a.read("epoch", v);
    state.position.epoch = v.toInt();
    a.read("batch", v);
    state.position.batch = v.toInt();
    a.read("epoch_loss_sum", v);
    state.epoch_loss_sum = v.toDouble();
    a.read("epoch_loss_count", v);
    state.epoch_loss_count = v.toInt();
    a.read("lr", v);
    state.lr = v.toDouble();
    a.read("global_generator_state", state.global_generator_state);
    a.read("task_generator_state", state.task_generator_state);
    a.read("lean_layers", v);
    state.lean_layers = v.toBool();
    a.read("xconv_paths", v);
    const std::string paths = v.toStringRef();
    torch::Tensor table;
    a.read("xconv_settings", table);
    absl::StatusOr<std::vector<XConvLayerRecord>> layers = LayersFrom(paths, table, path);
    if (!layers.ok()) return layers.status();
    state.xconv_layers = *std::move(layers);
    return Checkpoint(path, *std::move(archive), std::move(state));
  }, absl::StatusCode::kInvalidArgument);
}

absl::Status Checkpoint::LoadModel(torch::nn::Module& model) const {
  return GuardFileRead(absl::StrCat("cannot load the model from ", path_), [&] {
    torch::serialize::InputArchive model_archive;
    archive_->read("model", model_archive);
    WeightsLoadReport report;
    return CopyModule(model_archive, model, "", /*strict=*/true, path_, report);
  }, absl::StatusCode::kInternal);
}

absl::Status Checkpoint::LoadOptimizer(torch::optim::Optimizer& optimizer) const {
  return GuardFileRead(
      [&] {
        return absl::StrCat("the optimizer state in ", path_,
                            " does not fit this job (another optimizer or other trainable parameters?)");
      },
      [&] {
        torch::serialize::InputArchive optimizer_archive;
        archive_->read("optimizer", optimizer_archive);
        optimizer.load(optimizer_archive);
        return absl::OkStatus();
      },
      absl::StatusCode::kInvalidArgument);
}

absl::StatusOr<WeightsLoadReport> LoadWeights(const std::string& path, torch::nn::Module& model,
                                              bool strict) {
  if (auto* net = dynamic_cast<NetworkImpl*>(&model);
      net != nullptr && (net->spec().name == "resnet18" || net->spec().name == "squeezenet1_1")) {
    absl::StatusOr<std::optional<WeightsLoadReport>> torchvision = LoadTorchvisionWeights(path, *net, strict);
    if (!torchvision.ok()) return torchvision.status();
    if (torchvision->has_value()) return **torchvision;
  }
  absl::StatusOr<std::unique_ptr<torch::serialize::InputArchive>> archive = OpenArchive(path, "weights file");
  if (!archive.ok()) return archive.status();
  const std::string context = absl::StrCat("cannot load weights from ", path);
  return GuardFileRead(context, [&]() -> absl::StatusOr<WeightsLoadReport> {
    torch::serialize::InputArchive model_archive;
    torch::serialize::InputArchive* source = archive->get();
    if (IsCheckpoint(**archive)) {
      (*archive)->read("model", model_archive);
      source = &model_archive;
    }
    WeightsLoadReport report;
    if (absl::Status s = CopyModule(*source, model, "", strict, path, report); !s.ok()) return s;
    if (report.loaded.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, " holds none of the model's parameters; is it a file of another model?"));
    }
    return report;
  }, absl::StatusCode::kInvalidArgument);
}

}  // namespace xtrain::core
