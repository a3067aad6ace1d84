#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "core/train/checkpoint.h"

namespace xtrain::core {

// A job's checkpoint directory: files checkpoint-<step>.pt, the newest `keep` of them kept.
class CheckpointStore {
 public:
  // Creates `dir` if needed. InvalidArgument for keep < 1, Unavailable when dir cannot be made.
  static absl::StatusOr<CheckpointStore> Open(const std::string& dir, int64_t keep);

  // Writes the checkpoint of `state.step` (atomically) and deletes the oldest beyond `keep`.
  absl::StatusOr<std::string> Save(const torch::nn::Module& model, const torch::optim::Optimizer& optimizer,
                                   const CheckpointState& state);

  // The file name of step `step` in this directory.
  std::string PathFor(int64_t step) const;

  // Checkpoint files in `dir`, oldest step first.
  static std::vector<std::string> List(const std::string& dir);
  // The newest checkpoint in `dir`; NotFound when there is none.
  static absl::StatusOr<std::string> Latest(const std::string& dir);

 private:
  CheckpointStore(std::string dir, int64_t keep) : dir_(std::move(dir)), keep_(keep) {}

  std::string dir_;
  int64_t keep_;
};

}  // namespace xtrain::core
