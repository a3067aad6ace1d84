// libFuzzer target: the CIFAR-10 batch reader. A file is refused with a status or read whole: one
// sample per 3073-byte record, labels 0..9, pixels in [0, 1].
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/data/cifar10.h"
#include "fuzz/core/fuzz_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = xtrain::fuzz::WriteFuzzFile("data_batch.bin", data, size);
  absl::StatusOr<xtrain::core::TensorDataset> dataset = xtrain::core::LoadCifar10({path});
  if (!dataset.ok()) return 0;
  if (dataset->size() * 3073 != static_cast<int64_t>(size)) std::abort();
  if (dataset->targets.min().item<int64_t>() < 0 || dataset->targets.max().item<int64_t>() > 9) std::abort();
  if (dataset->inputs.min().item<float>() < 0 || dataset->inputs.max().item<float>() > 1) std::abort();
  return 0;
}
