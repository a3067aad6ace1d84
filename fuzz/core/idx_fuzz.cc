// libFuzzer target: the IDX reader (MNIST's format, raw or gzipped), as the worker opens a data set.
// A file is refused with a status or read whole: a raw file's tensor holds exactly the bytes after its
// header, never more and never less.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/data/file_bytes.h"
#include "core/data/idx_reader.h"
#include "fuzz/core/fuzz_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = xtrain::fuzz::WriteFuzzFile("input.idx", data, size);
  absl::StatusOr<torch::Tensor> tensor = xtrain::core::ReadIdx(path);
  if (!tensor.ok() || size < 4) return 0;
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  if (xtrain::core::HasGzipMagic(bytes)) return 0;
  const size_t header = 4 + 4 * static_cast<size_t>(data[3]);
  if (static_cast<size_t>(tensor->dim()) != data[3] || header + tensor->nbytes() != size) std::abort();
  return 0;
}
