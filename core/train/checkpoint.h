#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/data/data_loader.h"
#include "core/xconv/xconv_options.h"

namespace xtrain::core {

// One converted layer of a job's model: where it is and how it runs.
struct XConvLayerRecord {
  std::string path;
  XConvSettings settings;
};

// What a checkpoint records besides the model's and the optimizer's tensors: enough for a fresh
// process to continue the job bit for bit.
struct CheckpointState {
  std::string model_name;
  int64_t step = 0;              // optimizer steps done
  LoaderPosition position;       // the batch the loader hands out next
  double epoch_loss_sum = 0;     // training loss of the current epoch so far (for its mean)
  int64_t epoch_loss_count = 0;
  double lr = 0;                 // the last step's rate (the schedule itself is a function of step)
  torch::Tensor global_generator_state;  // LibTorch's default CPU generator (dropout)
  torch::Tensor task_generator_state;    // the task adapter's generator (holes, noise, timesteps)
  bool lean_layers = false;              // ReLUs are mask ReLUs, max pools index max pools
  std::vector<XConvLayerRecord> xconv_layers;  // the plan as applied; empty for an exact model
};

// A training checkpoint: one file, a LibTorch archive (torch::serialize) holding "model" (every
// parameter and buffer: XConv seed streams, BatchNorm statistics), "optimizer" (its own archive),
// the generator states, and the CheckpointState fields. Written to a temporary file, synced and
// renamed, so a reader never sees half a checkpoint.
class Checkpoint {
 public:
  static absl::Status Write(const std::string& path, const torch::nn::Module& model,
                            const torch::optim::Optimizer& optimizer, const CheckpointState& state);

  // NotFound when the file is missing; InvalidArgument when it is not an xtrain checkpoint.
  static absl::StatusOr<Checkpoint> Read(const std::string& path);

  const CheckpointState& state() const { return state_; }
  const std::string& path() const { return path_; }

  // Copies every parameter and buffer into `model` (same structure as the writer's), bit for bit.
  absl::Status LoadModel(torch::nn::Module& model) const;
  // Restores the optimizer's per-parameter state (parameters in the writer's order).
  absl::Status LoadOptimizer(torch::optim::Optimizer& optimizer) const;

 private:
  Checkpoint(std::string path, std::unique_ptr<torch::serialize::InputArchive> archive,
             CheckpointState state)
      : path_(std::move(path)), archive_(std::move(archive)), state_(std::move(state)) {}

  std::string path_;
  std::unique_ptr<torch::serialize::InputArchive> archive_;
  CheckpointState state_;
};

// Writes `archive` to `path` through a temporary file (path + ".tmp") that is synced and renamed into
// place, then syncs the folder. A failed write (a full disk) removes the temporary file, leaves what was
// at `path` as it was, and is Unavailable with the system's reason.
absl::Status WriteArchiveAtomically(torch::serialize::OutputArchive& archive, const std::string& path);

// What LoadWeights copied and what it left alone.
struct WeightsLoadReport {
  std::vector<std::string> loaded;   // parameter and buffer paths copied
  std::vector<std::string> skipped;  // missing from the file or of another shape (non-strict)
};

// Initialises `model` from `path`: an xtrain checkpoint (its model part) or a file written with
// torch::save(module). Parameters and buffers are matched by path. Strict: every one must be in
// the file with the same shape (InvalidArgument names the first that is not); otherwise those
// are skipped and reported. Extra entries in the file are ignored (XConv seeds, another head).
absl::StatusOr<WeightsLoadReport> LoadWeights(const std::string& path, torch::nn::Module& model,
                                              bool strict);

}  // namespace xtrain::core
