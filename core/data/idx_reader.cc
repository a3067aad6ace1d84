#include "core/data/idx_reader.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/data/file_bytes.h"
#include "core/util/torch_guard.h"

namespace xtrain::core {
namespace {

struct IdxType {
  torch::ScalarType dtype;
  int64_t bytes;
};

bool IdxTypeFor(uint8_t code, IdxType* type) {
  switch (code) {
    case 0x08: *type = {torch::kByte, 1}; return true;
    case 0x09: *type = {torch::kChar, 1}; return true;
    case 0x0B: *type = {torch::kShort, 2}; return true;
    case 0x0C: *type = {torch::kInt, 4}; return true;
    case 0x0D: *type = {torch::kFloat, 4}; return true;
    case 0x0E: *type = {torch::kDouble, 8}; return true;
    default: return false;
  }
}

uint32_t BigEndian32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// Reverses each `width`-byte element in place (big-endian file to the little-endian host).
void SwapElements(char* data, int64_t count, int64_t width) {
  if (width == 1) return;
  for (int64_t i = 0; i < count; ++i) std::reverse(data + i * width, data + (i + 1) * width);
}

}  // namespace

absl::StatusOr<torch::Tensor> ReadIdx(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFileBytes(path);
  if (!bytes.ok()) return bytes.status();
  const auto* data = reinterpret_cast<const unsigned char*>(bytes->data());
  const auto size = static_cast<int64_t>(bytes->size());
  if (size < 4) {
    return absl::DataLossError(
        absl::StrCat(path, ": IDX header truncated: expected at least 4 ", "bytes, got ", size));
  }
  if (data[0] != 0 || data[1] != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: wrong magic %02x %02x; an IDX file starts with 00 00 <type> <dims>",
                        path, data[0], data[1]));
  }
  IdxType type;
  if (!IdxTypeFor(data[2], &type)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: unknown IDX type code 0x%02X; expected 08, 09, 0B, 0C, 0D or 0E", path, data[2]));
  }
  const int64_t dims = data[3];
  if (dims == 0) return absl::InvalidArgumentError(absl::StrCat(path, ": IDX file has 0 dims"));
  const int64_t header = 4 + 4 * dims;
  if (size < header) {
    return absl::DataLossError(
        absl::StrCat(path, ": IDX header truncated: expected ", header, " bytes, got ", size));
  }
  std::vector<int64_t> shape(dims);
  int64_t count = 1;
  for (int64_t d = 0; d < dims; ++d) {
    shape[d] = BigEndian32(data + 4 + 4 * d);
    if (shape[d] != 0 && count > (int64_t{1} << 40) / shape[d]) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": IDX dimensions are implausibly large"));
    }
    count *= shape[d];
  }
  const int64_t expected = count * type.bytes;
  const int64_t got = size - header;
  if (got < expected) {
    return absl::DataLossError(
        absl::StrCat(path, ": truncated IDX data: expected ", expected, " bytes, got ", got));
  }
  if (got > expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": ", got - expected, " bytes after the IDX data (expected ", expected, " bytes)"));
  }
  return GuardTorch(path, [&]() -> absl::StatusOr<torch::Tensor> {
    torch::Tensor tensor = torch::empty(shape, torch::TensorOptions().dtype(type.dtype));
    char* out = static_cast<char*>(tensor.data_ptr());
    if (expected > 0) std::memcpy(out, bytes->data() + header, expected);
    SwapElements(out, count, type.bytes);
    return tensor;
  });
}

absl::StatusOr<TensorDataset> LoadIdxClassification(const std::string& images_path,
                                                    const std::string& labels_path) {
  absl::StatusOr<torch::Tensor> images = ReadIdx(images_path);
  if (!images.ok()) return images.status();
  absl::StatusOr<torch::Tensor> labels = ReadIdx(labels_path);
  if (!labels.ok()) return labels.status();
  if (images->dim() != 3 || images->scalar_type() != torch::kByte) {
    return absl::InvalidArgumentError(
        absl::StrCat(images_path, ": expected uint8 images (N, H, W), got ", images->dim(), "-D ",
                     c10::toString(images->scalar_type())));
  }
  if (labels->dim() != 1 || labels->scalar_type() != torch::kByte) {
    return absl::InvalidArgumentError(absl::StrCat(labels_path, ": expected uint8 labels (N), got ",
                                                   labels->dim(), "-D ",
                                                   c10::toString(labels->scalar_type())));
  }
  if (images->size(0) != labels->size(0)) {
    return absl::InvalidArgumentError(absl::StrCat("count mismatch: ", images_path, " holds ",
                                                   images->size(0), " images but ", labels_path,
                                                   " holds ", labels->size(0), " labels"));
  }
  return GuardTorch(images_path, [&]() -> absl::StatusOr<TensorDataset> {
    TensorDataset dataset;
    dataset.inputs = images->unsqueeze(1).to(torch::kFloat).div_(255.0);
    dataset.targets = labels->to(torch::kLong);
    return dataset;
  });
}

absl::StatusOr<TensorDataset> LoadMnistFolder(const std::string& directory, bool train) {
  const std::string prefix = train ? "train" : "t10k";
  auto find = [&](const std::string& stem) {
    const std::filesystem::path raw = std::filesystem::path(directory) / stem;
    std::filesystem::path gz = raw;
    gz += ".gz";
    std::error_code error;
    const bool use_gz = !std::filesystem::exists(raw, error) && std::filesystem::exists(gz, error);
    return use_gz ? gz.string() : raw.string();
  };
  return LoadIdxClassification(find(prefix + "-images-idx3-ubyte"),
                               find(prefix + "-labels-idx1-ubyte"));
}

}  // namespace xtrain::core
