#include "core/data/cifar10.h"

#include <cstdint>
#include <cstring>
#include <filesystem>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/data/file_bytes.h"
#include "core/util/torch_guard.h"

namespace xtrain::core {
namespace {

constexpr int64_t kPixels = 3 * 32 * 32;
constexpr int64_t kRecord = 1 + kPixels;
constexpr int64_t kClasses = 10;

}  // namespace

absl::StatusOr<TensorDataset> LoadCifar10(const std::vector<std::string>& paths) {
  if (paths.empty()) return absl::InvalidArgumentError("cifar10: no batch files given");
  std::vector<std::string> files;
  int64_t total = 0;
  for (const std::string& path : paths) {
    absl::StatusOr<std::string> bytes = ReadFileBytes(path);
    if (!bytes.ok()) return bytes.status();
    const auto size = static_cast<int64_t>(bytes->size());
    if (size == 0 || size % kRecord != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": size ", size,
                       " bytes is not a positive multiple of the 3073-byte CIFAR-10 "
                       "record (1 label byte + 3072 pixel bytes)"));
    }
    for (int64_t r = 0; r < size / kRecord; ++r) {
      const auto label = static_cast<unsigned char>((*bytes)[r * kRecord]);
      if (label >= kClasses) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": record ", r, " has label ", label, "; CIFAR-10 labels are 0..9"));
      }
    }
    total += size / kRecord;
    files.push_back(*std::move(bytes));
  }
  return GuardTorch("cifar10", [&]() -> absl::StatusOr<TensorDataset> {
    torch::Tensor pixels = torch::empty({total, 3, 32, 32}, torch::kByte);
    torch::Tensor labels = torch::empty({total}, torch::kLong);
    auto* pixel_out = pixels.data_ptr<uint8_t>();
    auto* label_out = labels.data_ptr<int64_t>();
    int64_t n = 0;
    for (const std::string& bytes : files) {
      for (size_t offset = 0; offset < bytes.size(); offset += kRecord, ++n) {
        label_out[n] = static_cast<unsigned char>(bytes[offset]);
        std::memcpy(pixel_out + n * kPixels, bytes.data() + offset + 1, kPixels);
      }
    }
    TensorDataset dataset;
    dataset.inputs = pixels.to(torch::kFloat).div_(255.0);
    dataset.targets = labels;
    return dataset;
  });
}

absl::StatusOr<TensorDataset> LoadCifar10Folder(const std::string& directory, bool train) {
  const std::filesystem::path root(directory);
  std::vector<std::string> paths;
  if (train) {
    for (int i = 1; i <= 5; ++i)
      paths.push_back((root / absl::StrCat("data_batch_", i, ".bin")).string());
  } else {
    paths.push_back((root / "test_batch.bin").string());
  }
  return LoadCifar10(paths);
}

}  // namespace xtrain::core
