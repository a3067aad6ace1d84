// libFuzzer target: image decoding (stb: PNG, JPEG, BMP, ...) through the image-folder loader, as the
// worker opens root/<class>/<image>. A file is refused with a status naming it, or decoded to one
// (1, 3, H, W) sample in [0, 1].
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/data/image_folder.h"
#include "fuzz/core/fuzz_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = xtrain::fuzz::WriteFuzzFile("images/class/input.png", data, size);
  const std::string root = (xtrain::fuzz::FuzzDir() / "images").string();
  absl::StatusOr<xtrain::core::TensorDataset> dataset =
      xtrain::core::LoadImageFolder(root, xtrain::core::ImageFolderOptions{});
  if (!dataset.ok()) {
    if (dataset.status().message().find(path) == std::string::npos) std::abort();
    return 0;
  }
  const torch::Tensor& inputs = dataset->inputs;
  if (inputs.dim() != 4 || inputs.size(0) != 1 || inputs.size(1) != 3) std::abort();
  if (inputs.numel() > 0 && (inputs.min().item<float>() < 0 || inputs.max().item<float>() > 1)) std::abort();
  return 0;
}
