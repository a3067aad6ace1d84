#include "core/data/image_folder.h"

#include <stb/stb_image.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/util/torch_guard.h"

namespace xtrain::core {
namespace {

namespace fs = std::filesystem;

// Images above 4096 x 4096 pixels are refused before decoding (far above any training input; one such
// image already takes 250 MB as uint8 and float32).
constexpr int64_t kMaxImagePixels = int64_t{1} << 24;

// Entries of `dir` (sorted by name) that are directories, or image files when `want_dirs` is false.
absl::StatusOr<std::vector<fs::path>> ListSorted(const fs::path& dir, bool want_dirs,
                                                 const ImageFolderOptions& options) {
  std::error_code error;
  fs::directory_iterator it(dir, error);
  if (error) {
    return absl::NotFoundError(absl::StrCat(dir.string(), ": cannot list (", error.message(), ")"));
  }
  std::vector<fs::path> out;
  for (const fs::directory_entry& entry : it) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name[0] == '.') continue;
    if (want_dirs) {
      if (entry.is_directory(error)) out.push_back(entry.path());
      continue;
    }
    const std::string ext = absl::AsciiStrToLower(entry.path().extension().string());
    if (entry.is_regular_file(error) &&
        std::find(options.extensions.begin(), options.extensions.end(), ext) !=
            options.extensions.end()) {
      out.push_back(entry.path());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Decodes `path` with stb to uint8 (H, W, C); `channels` 0 keeps the file's own channel count,
// which is written to `file_channels`.
absl::StatusOr<torch::Tensor> DecodeImage(const fs::path& path, int channels, int* file_channels) {
  int width = 0, height = 0, own = 0;
  auto too_large = [&] {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": image of ", width, "x", height,
                                                   " pixels is larger than the limit of ", kMaxImagePixels,
                                                   " pixels; resize it first"));
  };
  // Decoded from memory: stb reading from a FILE past its end makes a read(2) call per pixel, so a
  // 70-byte BMP claiming millions of pixels took seconds (found by fuzz_image); from memory it is cheap.
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      return absl::NotFoundError(absl::StrCat(path.string(), ": cannot open image: ", std::strerror(errno)));
    }
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (in.bad()) return absl::DataLossError(absl::StrCat(path.string(), ": cannot read image"));
  }
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": image file of ", bytes.size(),
                                                   " bytes is larger than the 2 GiB limit"));
  }
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int size = static_cast<int>(bytes.size());
  // The header's size first: a few bytes can claim an image of gigabytes, which stb would allocate.
  // A header stb cannot read is refused too (its decoder would guess the size differently).
  if (!stbi_info_from_memory(data, size, &width, &height, &own)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), ": cannot decode image (", stbi_failure_reason(), ")"));
  }
  // stb's info gives a top-down BMP's height as it is stored, negative; its decoder uses the magnitude.
  width = std::abs(width);
  height = std::abs(height);
  if (static_cast<int64_t>(width) * height > kMaxImagePixels) return too_large();
  unsigned char* pixels = stbi_load_from_memory(data, size, &width, &height, &own, channels);
  if (pixels == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), ": cannot decode image (", stbi_failure_reason(), ")"));
  }
  const std::unique_ptr<unsigned char, void (*)(void*)> owned(pixels, stbi_image_free);
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), ": image decodes to ", width, "x", height, " pixels (empty)"));
  }
  if (static_cast<int64_t>(width) * height > kMaxImagePixels) return too_large();
  const int kept = channels == 0 ? own : channels;
  if (file_channels != nullptr) *file_channels = own;
  return GuardTorch(path.string(), [&]() -> absl::StatusOr<torch::Tensor> {
    torch::Tensor out = torch::empty({height, width, kept}, torch::kByte);
    std::memcpy(out.data_ptr<uint8_t>(), owned.get(), static_cast<size_t>(out.numel()));
    return out;
  });
}

// Checks that `image` (H, W, C) has the size of the first image, `first` (named `first_path`).
absl::Status CheckSameSize(const torch::Tensor& image, const fs::path& path,
                           const torch::Tensor& first, const fs::path& first_path) {
  if (image.size(0) == first.size(0) && image.size(1) == first.size(1)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(path.string(), ": image is ", image.size(1), "x", image.size(0), " but ",
                   first_path.string(), " is ", first.size(1), "x", first.size(0),
                   "; all images must have the same size (resize them beforehand)"));
}

// Stacks uint8 (H, W, C) images into float32 (N, C, H, W) / 255.
torch::Tensor StackImages(const std::vector<torch::Tensor>& images) {
  return torch::stack(images).permute({0, 3, 1, 2}).to(torch::kFloat).div_(255.0).contiguous();
}

absl::Status CheckOptions(const ImageFolderOptions& options) {
  if (options.channels < 1 || options.channels > 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("image folder: channels is ", options.channels, "; use 1, 2, 3 or 4"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TensorDataset> LoadImageFolder(const std::string& root,
                                              const ImageFolderOptions& options,
                                              std::vector<std::string>* class_names) {
  if (absl::Status status = CheckOptions(options); !status.ok()) return status;
  absl::StatusOr<std::vector<fs::path>> classes = ListSorted(root, /*want_dirs=*/true, options);
  if (!classes.ok()) return classes.status();
  std::vector<torch::Tensor> images;
  std::vector<int64_t> labels;
  fs::path first_path;
  for (size_t c = 0; c < classes->size(); ++c) {
    absl::StatusOr<std::vector<fs::path>> files = ListSorted((*classes)[c], false, options);
    if (!files.ok()) return files.status();
    for (const fs::path& file : *files) {
      absl::StatusOr<torch::Tensor> image = DecodeImage(file, options.channels, nullptr);
      if (!image.ok()) return image.status();
      if (images.empty()) first_path = file;
      absl::Status same =
          CheckSameSize(*image, file, images.empty() ? *image : images[0], first_path);
      if (!same.ok()) return same;
      images.push_back(*std::move(image));
      labels.push_back(static_cast<int64_t>(c));
    }
  }
  if (images.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        root, ": no images found; expected root/<class>/<image> with extensions .png, .jpg, ..."));
  }
  if (class_names != nullptr) {
    class_names->clear();
    for (const fs::path& c : *classes) class_names->push_back(c.filename().string());
  }
  return GuardTorch(root, [&]() -> absl::StatusOr<TensorDataset> {
    TensorDataset dataset;
    dataset.inputs = StackImages(images);
    dataset.targets = torch::tensor(labels, torch::kLong);
    return dataset;
  });
}

absl::StatusOr<TensorDataset> LoadSegmentationFolder(const std::string& root,
                                                     const ImageFolderOptions& options) {
  if (absl::Status status = CheckOptions(options); !status.ok()) return status;
  const fs::path image_dir = fs::path(root) / "images";
  const fs::path mask_dir = fs::path(root) / "masks";
  absl::StatusOr<std::vector<fs::path>> image_files = ListSorted(image_dir, false, options);
  if (!image_files.ok()) return image_files.status();
  absl::StatusOr<std::vector<fs::path>> mask_files = ListSorted(mask_dir, false, options);
  if (!mask_files.ok()) return mask_files.status();
  std::map<std::string, fs::path> masks_by_stem;
  for (const fs::path& mask : *mask_files) {
    auto [it, inserted] = masks_by_stem.emplace(mask.stem().string(), mask);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(mask.string(), " and ", it->second.string(),
                                                     " are masks for the same image name"));
    }
  }
  std::vector<torch::Tensor> images;
  std::vector<torch::Tensor> masks;
  for (const fs::path& file : *image_files) {
    auto it = masks_by_stem.find(file.stem().string());
    if (it == masks_by_stem.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.string(), ": no mask named '", file.stem().string(), ".*' in ", mask_dir.string()));
    }
    const fs::path mask_path = it->second;
    masks_by_stem.erase(it);
    absl::StatusOr<torch::Tensor> image = DecodeImage(file, options.channels, nullptr);
    if (!image.ok()) return image.status();
    absl::Status same =
        CheckSameSize(*image, file, images.empty() ? *image : images[0], image_files->front());
    if (!same.ok()) return same;
    int mask_channels = 0;
    absl::StatusOr<torch::Tensor> mask = DecodeImage(mask_path, 0, &mask_channels);
    if (!mask.ok()) return mask.status();
    if (mask_channels != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(mask_path.string(), ": mask has ", mask_channels,
                       " channels; save masks as "
                       "single-channel (grey) images whose pixel value is the class id"));
    }
    if (absl::Status s = CheckSameSize(*mask, mask_path, *image, file); !s.ok()) return s;
    images.push_back(*std::move(image));
    masks.push_back(*std::move(mask));
  }
  if (!masks_by_stem.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(masks_by_stem.begin()->second.string(),
                                                   ": mask has no image of the same name in ",
                                                   image_dir.string()));
  }
  if (images.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(image_dir.string(), ": no images found"));
  }
  return GuardTorch(root, [&]() -> absl::StatusOr<TensorDataset> {
    TensorDataset dataset;
    dataset.inputs = StackImages(images);
    dataset.targets = torch::stack(masks).squeeze(-1).to(torch::kLong);
    return dataset;
  });
}

}  // namespace xtrain::core
