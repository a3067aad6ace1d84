#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace xtrain::core {

// What a model learns from a dataset's images.
enum class TaskKind {
  kClassification,   // image → class label
  kSegmentation,     // image → per-pixel class mask
  kSuperResolution,  // downsampled image → full-resolution image
  kInpainting,       // image with a hole (+ hole mask channel) → full image
  kGenerative,       // DDPM: noisy image (+ timestep channel) → the noise that was added
};

absl::StatusOr<TaskKind> ParseTaskKind(absl::string_view name);
absl::string_view TaskKindName(TaskKind kind);

// One training step's tensors. mask: inpainting's hole (N, 1, spatial...) as 1.0, else undefined.
struct Batch {
  torch::Tensor input;
  torch::Tensor target;
  torch::Tensor mask;
};

// Settings of the tasks that build their own targets.
struct TaskOptions {
  int64_t scale = 2;            // super-resolution: downsampling factor of every spatial dim
  double hole_fraction = 0.25;  // inpainting: fraction of each image inside the hole
  int64_t timesteps = 1000;     // generative: T of the linear beta schedule 1e-4 .. 0.02
};

// Turns dataset tensors into a task's (input, target) pair. Random parts (holes, timesteps, noise)
// come only from `gen` (a CPU generator), so a seeded generator reproduces a batch exactly.
class TaskAdapter {
 public:
  virtual ~TaskAdapter() = default;

  virtual TaskKind kind() const = 0;

  // `inputs` float (N, C, spatial...) in [0, 1]; `targets` the dataset's labels or masks (may be
  // undefined for tasks that do not use them). InvalidArgument says which shape is wrong.
  virtual absl::StatusOr<Batch> Make(const torch::Tensor& inputs, const torch::Tensor& targets,
                                     torch::Generator& gen) const = 0;
};

// InvalidArgument for options the task cannot use (scale < 1, hole_fraction outside (0, 1),
// timesteps < 1).
absl::StatusOr<std::unique_ptr<TaskAdapter>> MakeTaskAdapter(TaskKind kind,
                                                             const TaskOptions& options = {});

// Channels of the model's input and output for a dataset with `data_channels` channels
// (`classes` is used by classification and segmentation only).
int64_t InputChannels(TaskKind kind, int64_t data_channels);
int64_t OutputChannels(TaskKind kind, int64_t data_channels, int64_t classes);

// DDPM's cumulative product of (1 - beta_t) for the linear schedule, float64 (timesteps).
torch::Tensor DdpmAlphaBar(int64_t timesteps);

}  // namespace xtrain::core
