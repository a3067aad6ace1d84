// libFuzzer target: the .npy reader, as the worker opens a data set. A file is refused with a status
// or read whole: the tensor's bytes are the file's last bytes, after a header.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "core/data/npy.h"
#include "fuzz/core/fuzz_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = xtrain::fuzz::WriteFuzzFile("input.npy", data, size);
  absl::StatusOr<torch::Tensor> tensor = xtrain::core::ReadNpy(path);
  if (!tensor.ok()) return 0;
  const size_t bytes = tensor->nbytes();
  if (bytes >= size) std::abort();
  if (bytes > 0 && std::memcmp(tensor->data_ptr(), data + size - bytes, bytes) != 0) std::abort();
  return 0;
}
