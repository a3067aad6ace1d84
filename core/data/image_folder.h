#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/data/tensor_dataset.h"

namespace xtrain::core {

// How image folders are read. Every image must have the same width and height (no resizing).
struct ImageFolderOptions {
  int channels = 3;  // 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA: stb converts each image to this
  // Lower-case file extensions that count as images; other files are ignored.
  std::vector<std::string> extensions = {".png", ".jpg", ".jpeg", ".bmp"};
};

// Classification from root/<class>/<image>: class indices follow the sorted folder names (copied to
// `class_names` if non-null). Inputs (N, channels, H, W) / 255. InvalidArgument names the file that
// cannot be decoded (with stb's reason) or whose size differs from the first image's.
absl::StatusOr<TensorDataset> LoadImageFolder(const std::string& root,
                                              const ImageFolderOptions& options,
                                              std::vector<std::string>* class_names = nullptr);

// Segmentation from root/images/<name>.* and root/masks/<name>.*: a mask is a single-channel image
// whose pixel value is the class id → targets (N, H, W) int64. InvalidArgument for an unpaired
// file, a multi-channel mask, or a mask whose size differs from its image.
absl::StatusOr<TensorDataset> LoadSegmentationFolder(const std::string& root,
                                                     const ImageFolderOptions& options);

}  // namespace xtrain::core
