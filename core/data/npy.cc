#include "core/data/npy.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/util/torch_guard.h"

namespace xtrain::core {
namespace {

// (__BYTE_ORDER__, not C++20's std::endian: the clang fuzz tree compiles this file as C++17.)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "npy.cc assumes a little-endian host");

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;

struct NpyType {
  const char* descr;
  torch::ScalarType dtype;
};
constexpr NpyType kTypes[] = {
    {"<f4", torch::kFloat}, {"<f8", torch::kDouble}, {"|u1", torch::kByte},
    {"<i8", torch::kLong},  {"<i4", torch::kInt},
};

// The parsed header dictionary of a .npy file.
struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
};

// A cursor over the header text: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }.
class HeaderParser {
 public:
  explicit HeaderParser(const std::string& text) : text_(text) {}

  // Moves to the value of `key`; false when the key is absent.
  bool Seek(const std::string& key) {
    for (const char quote : {'\'', '"'}) {
      const size_t at = text_.find(absl::StrCat(std::string(1, quote), key, std::string(1, quote)));
      if (at == std::string::npos) continue;
      pos_ = at + key.size() + 2;
      SkipSpace();
      if (!Eat(':')) return false;
      SkipSpace();
      return true;
    }
    return false;
  }
  bool String(std::string* out) {
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) return false;
    const size_t end = text_.find(text_[pos_], pos_ + 1);
    if (end == std::string::npos) return false;
    *out = text_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return true;
  }
  bool Bool(bool* out) {
    for (const bool value : {true, false}) {
      const std::string word = value ? "True" : "False";
      if (text_.compare(pos_, word.size(), word) == 0) {
        *out = value;
        pos_ += word.size();
        return true;
      }
    }
    return false;
  }
  bool Tuple(std::vector<int64_t>* out) {
    if (!Eat('(')) return false;
    while (true) {
      SkipSpace();
      if (Eat(')')) return true;
      const size_t start = pos_;
      while (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) ++pos_;
      int64_t value = 0;
      if (!absl::SimpleAtoi(absl::string_view(text_).substr(start, pos_ - start), &value)) {
        return false;
      }
      out->push_back(value);
      SkipSpace();
      if (!Eat(',') && !(pos_ < text_.size() && text_[pos_] == ')')) return false;
    }
  }

 private:
  void SkipSpace() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  bool Eat(char c) {
    if (pos_ >= text_.size() || text_[pos_] != c) return false;
    ++pos_;
    return true;
  }

  const std::string& text_;
  size_t pos_ = 0;
};

absl::StatusOr<NpyHeader> ParseHeader(const std::string& path, const std::string& text) {
  NpyHeader header;
  HeaderParser parser(text);
  const bool ok = parser.Seek("descr") && parser.String(&header.descr) &&
                  parser.Seek("fortran_order") && parser.Bool(&header.fortran_order) &&
                  parser.Seek("shape") && parser.Tuple(&header.shape);
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": cannot parse the .npy header (want 'descr', 'fortran_order' and 'shape'): ",
        absl::StripAsciiWhitespace(text)));
  }
  return header;
}

const NpyType* FindType(const std::string& descr) {
  for (const NpyType& type : kTypes) {
    if (descr == type.descr) return &type;
  }
  if (descr == "<u1" || descr == ">u1") return FindType("|u1");
  return nullptr;
}

const char* DescrOf(torch::ScalarType dtype) {
  for (const NpyType& type : kTypes) {
    if (type.dtype == dtype) return type.descr;
  }
  return nullptr;
}

absl::StatusOr<torch::Tensor> InputsFromArray(const std::string& path, const torch::Tensor& array) {
  if (array.dim() != 4 && array.dim() != 5) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": inputs are ", array.dim(),
                                                   "-D; expected (N, C, H, W) or (N, C, D, H, W)"));
  }
  if (array.scalar_type() == torch::kByte) return array.to(torch::kFloat).div_(255.0);
  if (array.is_floating_point()) return array.to(torch::kFloat);
  return absl::InvalidArgumentError(absl::StrCat(
      path, ": inputs are ", c10::toString(array.scalar_type()), "; use float32/64 or uint8"));
}

}  // namespace

absl::StatusOr<torch::Tensor> ReadNpy(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  char preamble[kMagicSize + 2] = {};
  file.read(preamble, sizeof(preamble));
  if (std::memcmp(preamble, kMagic, std::min<size_t>(kMagicSize, file.gcount())) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path,
                                                   ": bad magic; a .npy file starts with "
                                                   "\\x93NUMPY"));
  }
  if (file.gcount() < static_cast<std::streamsize>(sizeof(preamble))) {
    return absl::DataLossError(absl::StrCat(path, ": truncated .npy preamble"));
  }
  const int major = static_cast<unsigned char>(preamble[kMagicSize]);
  if (major < 1 || major > 3) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": unsupported .npy version ", major, "; versions 1-3 are readable"));
  }
  unsigned char length_bytes[4] = {};
  const int length_size = major == 1 ? 2 : 4;
  file.read(reinterpret_cast<char*>(length_bytes), length_size);
  if (file.gcount() != length_size) {
    return absl::DataLossError(absl::StrCat(path, ": truncated .npy header length"));
  }
  const size_t header_length = length_bytes[0] | (length_bytes[1] << 8) |
                               (size_t{length_bytes[2]} << 16) | (size_t{length_bytes[3]} << 24);
  // Compare with the file's size before allocating: a corrupt length must not ask for gigabytes.
  std::error_code size_error;
  const uint64_t left = std::filesystem::file_size(path, size_error) - static_cast<uint64_t>(file.tellg());
  if (!size_error && header_length > left) {
    return absl::DataLossError(absl::StrCat(path, ": .npy header length ", header_length,
                                            " runs past the end of the file (", left, " bytes left)"));
  }
  std::string text(header_length, '\0');
  file.read(text.data(), static_cast<std::streamsize>(header_length));
  if (static_cast<size_t>(file.gcount()) != header_length) {
    return absl::DataLossError(absl::StrCat(path, ": truncated .npy header: expected ",
                                            header_length, " bytes, got ", file.gcount()));
  }
  absl::StatusOr<NpyHeader> header = ParseHeader(path, text);
  if (!header.ok()) return header.status();
  const NpyType* type = FindType(header->descr);
  if (type == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": unsupported dtype '", header->descr,
                     "'; supported are '<f4', '<f8', '|u1', '<i8' and '<i4' (little-endian)"));
  }
  if (header->fortran_order) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": fortran_order is True; save a C-ordered array (numpy.ascontiguousarray)"));
  }
  // Compare sizes before allocating, so a corrupt shape cannot ask for terabytes.
  int64_t expected = static_cast<int64_t>(c10::elementSize(type->dtype));
  for (const int64_t size : header->shape) {
    if (size != 0 && expected > (int64_t{1} << 48) / size) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": implausible .npy shape (",
                                                     absl::StrJoin(header->shape, ", "), ")"));
    }
    expected *= size;
  }
  std::error_code error;
  const auto file_size = static_cast<int64_t>(std::filesystem::file_size(path, error));
  const int64_t available = file_size - static_cast<int64_t>(file.tellg());
  if (!error && available < expected) {
    return absl::DataLossError(absl::StrCat(path, ": truncated .npy data: expected ", expected,
                                            " bytes, got ", available));
  }
  return GuardTorch(path, [&]() -> absl::StatusOr<torch::Tensor> {
    torch::Tensor tensor = torch::empty(header->shape, torch::TensorOptions().dtype(type->dtype));
    file.read(static_cast<char*>(tensor.data_ptr()), expected);
    if (file.gcount() != expected) {
      return absl::DataLossError(absl::StrCat(path, ": truncated .npy data: expected ", expected,
                                              " bytes, got ", file.gcount()));
    }
    if (file.peek() != std::char_traits<char>::eof()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": bytes after the .npy data of shape (",
                                                     absl::StrJoin(header->shape, ", "), ")"));
    }
    return tensor;
  });
}

absl::Status WriteNpy(const std::string& path, const torch::Tensor& tensor) {
  const char* descr = DescrOf(tensor.scalar_type());
  if (descr == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": cannot write ", c10::toString(tensor.scalar_type()),
                     " as .npy; convert to float32, float64, uint8, int64 or int32"));
  }
  return GuardTorch(path, [&]() -> absl::Status {
    const torch::Tensor data = tensor.detach().cpu().contiguous();
    std::string shape = absl::StrJoin(data.sizes(), ", ");
    if (data.dim() == 1) shape += ",";
    std::string dict =
        absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (", shape, "), }");
    // Pad with spaces and a newline so that the data starts 64-byte aligned.
    const bool v2 = dict.size() + 1 + kMagicSize + 4 > 65535;
    const size_t preamble = kMagicSize + 2 + (v2 ? 4 : 2);
    const size_t total = (preamble + dict.size() + 1 + 63) / 64 * 64;
    dict.append(total - preamble - dict.size() - 1, ' ');
    dict.push_back('\n');
    std::ofstream file(path, std::ios::binary | std::ios::trunc);
    if (!file) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot create"));
    file.write(kMagic, kMagicSize);
    const char version[2] = {static_cast<char>(v2 ? 2 : 1), 0};
    file.write(version, 2);
    const uint32_t length = static_cast<uint32_t>(dict.size());
    const char length_bytes[4] = {
        static_cast<char>(length & 0xff), static_cast<char>((length >> 8) & 0xff),
        static_cast<char>((length >> 16) & 0xff), static_cast<char>((length >> 24) & 0xff)};
    file.write(length_bytes, v2 ? 4 : 2);
    file << dict;
    file.write(static_cast<const char*>(data.data_ptr()),
               static_cast<std::streamsize>(data.nbytes()));
    file.close();
    if (!file) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": write failed"));
    return absl::OkStatus();
  });
}

absl::StatusOr<TensorDataset> LoadNpyDataset(const std::string& inputs_path,
                                             const std::string& targets_path) {
  absl::StatusOr<torch::Tensor> inputs = ReadNpy(inputs_path);
  if (!inputs.ok()) return inputs.status();
  return GuardTorch(inputs_path, [&]() -> absl::StatusOr<TensorDataset> {
    TensorDataset dataset;
    absl::StatusOr<torch::Tensor> scaled = InputsFromArray(inputs_path, *inputs);
    if (!scaled.ok()) return scaled.status();
    dataset.inputs = *std::move(scaled);
    if (!targets_path.empty()) {
      absl::StatusOr<torch::Tensor> targets = ReadNpy(targets_path);
      if (!targets.ok()) return targets.status();
      if (targets->is_floating_point()) {
        return absl::InvalidArgumentError(absl::StrCat(
            targets_path, ": targets are floating point; save labels or masks as integers"));
      }
      dataset.targets = targets->to(torch::kLong);
    }
    if (absl::Status status = ValidateDataset(dataset); !status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(inputs_path, " / ", targets_path, ": ", status.message()));
    }
    return dataset;
  });
}

}  // namespace xtrain::core
