#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace xtrain::core::testing {

// A fresh, empty directory for the running test under ::testing::TempDir(), unique per test and
// process so that tests may run in parallel.
std::string FreshTestDir();

// Writes `bytes` to `path` as they are, or gzip-compressed.
void WriteBytes(const std::string& path, const std::string& bytes);
void WriteGzip(const std::string& path, const std::string& bytes);

// An IDX file's bytes for `tensor` stored with `type_code`, encoded big-endian by hand.
std::string IdxBytes(const torch::Tensor& tensor, uint8_t type_code);

// Writes a uint8 (H, W, C) tensor as a PNG with stb_image_write.
void WritePng(const std::string& path, const torch::Tensor& pixels);

}  // namespace xtrain::core::testing
