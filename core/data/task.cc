#include "core/data/task.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/util/torch_guard.h"

namespace xtrain::core {
namespace {

absl::Status CheckImages(TaskKind kind, const torch::Tensor& inputs) {
  if (!inputs.defined() || (inputs.dim() != 4 && inputs.dim() != 5) ||
      !inputs.is_floating_point()) {
    return absl::InvalidArgumentError(absl::StrCat(
        TaskKindName(kind), ": inputs must be floating (N, C, H, W) or (N, C, D, H, W)"));
  }
  return absl::OkStatus();
}

// Shape (N, 1, 1, ...) that broadcasts a per-sample value over an (N, C, spatial...) tensor.
std::vector<int64_t> PerSampleShape(const torch::Tensor& inputs) {
  std::vector<int64_t> shape(inputs.dim(), 1);
  shape[0] = inputs.size(0);
  return shape;
}

class ClassificationAdapter : public TaskAdapter {
 public:
  TaskKind kind() const override { return TaskKind::kClassification; }
  absl::StatusOr<Batch> Make(const torch::Tensor& inputs, const torch::Tensor& targets,
                             torch::Generator& gen) const override {
    if (absl::Status s = CheckImages(kind(), inputs); !s.ok()) return s;
    if (!targets.defined() || targets.dim() != 1 || targets.size(0) != inputs.size(0) ||
        targets.is_floating_point()) {
      return absl::InvalidArgumentError(
          "classification: targets must be integer labels (N) for the N inputs");
    }
    return GuardTorch("classification", [&]() -> absl::StatusOr<Batch> {
      return Batch{inputs, targets.to(torch::kLong), {}};
    });
  }
};

class SegmentationAdapter : public TaskAdapter {
 public:
  TaskKind kind() const override { return TaskKind::kSegmentation; }
  absl::StatusOr<Batch> Make(const torch::Tensor& inputs, const torch::Tensor& targets,
                             torch::Generator& gen) const override {
    if (absl::Status s = CheckImages(kind(), inputs); !s.ok()) return s;
    if (!targets.defined() || targets.dim() != inputs.dim() - 1 ||
        targets.size(0) != inputs.size(0) || targets.sizes().slice(1) != inputs.sizes().slice(2) ||
        targets.is_floating_point()) {
      return absl::InvalidArgumentError(
          "segmentation: targets must be integer masks (N, spatial...) matching the inputs");
    }
    return GuardTorch("segmentation", [&]() -> absl::StatusOr<Batch> {
      return Batch{inputs, targets.to(torch::kLong), {}};
    });
  }
};

class SuperResolutionAdapter : public TaskAdapter {
 public:
  explicit SuperResolutionAdapter(int64_t scale) : scale_(scale) {}
  TaskKind kind() const override { return TaskKind::kSuperResolution; }
  absl::StatusOr<Batch> Make(const torch::Tensor& inputs, const torch::Tensor& targets,
                             torch::Generator& gen) const override {
    if (absl::Status s = CheckImages(kind(), inputs); !s.ok()) return s;
    for (int64_t d = 2; d < inputs.dim(); ++d) {
      if (inputs.size(d) % scale_ != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "super-resolution: spatial size ", inputs.size(d), " (dim ", d,
            ") is not divisible by scale ", scale_, "; crop the images or change the scale"));
      }
    }
    return GuardTorch("super-resolution", [&]() -> absl::StatusOr<Batch> {
      // Area downsampling: the mean of each scale^dims block.
      torch::Tensor low = inputs.dim() == 4 ? torch::avg_pool2d(inputs, scale_, scale_)
                                            : torch::avg_pool3d(inputs, scale_, scale_);
      return Batch{low, inputs, {}};
    });
  }

 private:
  int64_t scale_;
};

class InpaintingAdapter : public TaskAdapter {
 public:
  explicit InpaintingAdapter(double hole_fraction) : hole_fraction_(hole_fraction) {}
  TaskKind kind() const override { return TaskKind::kInpainting; }
  absl::StatusOr<Batch> Make(const torch::Tensor& inputs, const torch::Tensor& targets,
                             torch::Generator& gen) const override {
    if (absl::Status s = CheckImages(kind(), inputs); !s.ok()) return s;
    return GuardTorch("inpainting", [&]() -> absl::StatusOr<Batch> {
      const int64_t n = inputs.size(0);
      const int64_t dims = inputs.dim() - 2;
      // One box per image, its sides chosen dim by dim so that the rounded sides still cover
      // about hole_fraction of the image.
      std::vector<int64_t> extent(dims);
      double remaining = hole_fraction_;
      for (int64_t d = 0; d < dims; ++d) {
        const int64_t size = inputs.size(2 + d);
        const double side = std::pow(remaining, 1.0 / static_cast<double>(dims - d));
        extent[d] = std::clamp<int64_t>(std::llround(size * side), 1, size);
        remaining /= static_cast<double>(extent[d]) / static_cast<double>(size);
      }
      const torch::Tensor draws = torch::rand({n, dims}, gen, torch::kDouble);
      const auto u = draws.accessor<double, 2>();
      std::vector<int64_t> mask_shape = inputs.sizes().vec();
      mask_shape[1] = 1;
      torch::Tensor mask = torch::zeros(mask_shape, torch::kFloat);
      for (int64_t i = 0; i < n; ++i) {
        torch::Tensor region = mask[i][0];
        for (int64_t d = 0; d < dims; ++d) {
          const int64_t room = inputs.size(2 + d) - extent[d];
          const int64_t start = std::min<int64_t>(room, static_cast<int64_t>(u[i][d] * (room + 1)));
          region = region.narrow(d, start, extent[d]);
        }
        region.fill_(1.0);
      }
      mask = mask.to(inputs.options());
      return Batch{torch::cat({inputs * (1 - mask), mask}, 1), inputs, mask};
    });
  }

 private:
  double hole_fraction_;
};

class GenerativeAdapter : public TaskAdapter {
 public:
  explicit GenerativeAdapter(int64_t timesteps)
      : timesteps_(timesteps), alpha_bar_(DdpmAlphaBar(timesteps)) {}
  TaskKind kind() const override { return TaskKind::kGenerative; }
  absl::StatusOr<Batch> Make(const torch::Tensor& inputs, const torch::Tensor& targets,
                             torch::Generator& gen) const override {
    if (absl::Status s = CheckImages(kind(), inputs); !s.ok()) return s;
    return GuardTorch("generative", [&]() -> absl::StatusOr<Batch> {
      const torch::Tensor t = torch::randint(0, timesteps_, {inputs.size(0)}, gen, torch::kLong);
      const torch::Tensor noise = torch::randn(inputs.sizes(), gen).to(inputs.options());
      const std::vector<int64_t> per_sample = PerSampleShape(inputs);
      const torch::Tensor a = alpha_bar_.index_select(0, t).view(per_sample).to(inputs.options());
      const torch::Tensor x_t = a.sqrt() * (inputs * 2 - 1) + (1 - a).sqrt() * noise;
      std::vector<int64_t> channel_shape = inputs.sizes().vec();
      channel_shape[1] = 1;
      const torch::Tensor time_channel = t.to(torch::kDouble)
                                             .div(static_cast<double>(timesteps_))
                                             .view(per_sample)
                                             .to(inputs.options())
                                             .expand(channel_shape);
      return Batch{torch::cat({x_t, time_channel}, 1), noise, {}};
    });
  }

 private:
  int64_t timesteps_;
  torch::Tensor alpha_bar_;  // float64 (T), on the CPU
};

}  // namespace

absl::StatusOr<TaskKind> ParseTaskKind(absl::string_view name) {
  std::string key = absl::AsciiStrToLower(name);
  std::replace(key.begin(), key.end(), '_', '-');
  if (key == "classification") return TaskKind::kClassification;
  if (key == "segmentation") return TaskKind::kSegmentation;
  if (key == "super-resolution" || key == "superresolution" || key == "sr") {
    return TaskKind::kSuperResolution;
  }
  if (key == "inpainting") return TaskKind::kInpainting;
  if (key == "generative" || key == "ddpm" || key == "diffusion") return TaskKind::kGenerative;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown task '", name,
                   "': use 'classification', 'segmentation', 'super-resolution', "
                   "'inpainting' or 'generative'"));
}

absl::string_view TaskKindName(TaskKind kind) {
  switch (kind) {
    case TaskKind::kClassification: return "classification";
    case TaskKind::kSegmentation: return "segmentation";
    case TaskKind::kSuperResolution: return "super-resolution";
    case TaskKind::kInpainting: return "inpainting";
    case TaskKind::kGenerative: return "generative";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<TaskAdapter>> MakeTaskAdapter(TaskKind kind,
                                                             const TaskOptions& options) {
  switch (kind) {
    case TaskKind::kClassification: return std::make_unique<ClassificationAdapter>();
    case TaskKind::kSegmentation: return std::make_unique<SegmentationAdapter>();
    case TaskKind::kSuperResolution:
      if (options.scale < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("super-resolution: scale is ", options.scale, "; use 1 or more"));
      }
      return std::make_unique<SuperResolutionAdapter>(options.scale);
    case TaskKind::kInpainting:
      if (!(options.hole_fraction > 0.0 && options.hole_fraction < 1.0)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "inpainting: hole_fraction is ", options.hole_fraction, "; use a value in (0, 1)"));
      }
      return std::make_unique<InpaintingAdapter>(options.hole_fraction);
    case TaskKind::kGenerative:
      if (options.timesteps < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("generative: timesteps is ", options.timesteps, "; use 1 or more"));
      }
      return GuardTorch("generative", [&]() -> absl::StatusOr<std::unique_ptr<TaskAdapter>> {
        return std::make_unique<GenerativeAdapter>(options.timesteps);
      });
  }
  return absl::InvalidArgumentError("unknown task kind");
}

int64_t InputChannels(TaskKind kind, int64_t data_channels) {
  const bool extra = kind == TaskKind::kInpainting || kind == TaskKind::kGenerative;
  return data_channels + (extra ? 1 : 0);
}

int64_t OutputChannels(TaskKind kind, int64_t data_channels, int64_t classes) {
  const bool labels = kind == TaskKind::kClassification || kind == TaskKind::kSegmentation;
  return labels ? classes : data_channels;
}

torch::Tensor DdpmAlphaBar(int64_t timesteps) {
  const torch::Tensor betas = torch::linspace(1e-4, 0.02, timesteps, torch::kDouble);
  return torch::cumprod(1 - betas, 0);
}

}  // namespace xtrain::core
