#include "tests/data/test_files.h"

#include <gtest/gtest.h>
#include <stb/stb_image_write.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"

namespace xtrain::core::testing {
namespace {

// Removes the directories FreshTestDir made once the tests of this process are done.
class TestDirCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    for (const std::string& dir : dirs) std::filesystem::remove_all(dir);
  }
  std::vector<std::string> dirs;
};

TestDirCleanup* Cleanup() {
  static TestDirCleanup* cleanup = [] {
    auto* env = new TestDirCleanup;
    ::testing::AddGlobalTestEnvironment(env);  // gtest owns it
    return env;
  }();
  return cleanup;
}
const bool kCleanupRegistered = Cleanup() != nullptr;

}  // namespace

std::string FreshTestDir() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name =
      absl::StrCat("xtrain_data_", info->test_suite_name(), "_", info->name(), "_", getpid());
  std::replace(name.begin(), name.end(), '/', '_');
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  Cleanup()->dirs.push_back(dir.string());
  return dir.string();
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(file.good()) << path;
}

void WriteGzip(const std::string& path, const std::string& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr) << path;
  if (!bytes.empty()) {
    EXPECT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
  }
  EXPECT_EQ(gzclose(file), Z_OK);
}

std::string IdxBytes(const torch::Tensor& tensor, uint8_t type_code) {
  std::string out = {0, 0, static_cast<char>(type_code), static_cast<char>(tensor.dim())};
  for (int64_t size : tensor.sizes()) {
    for (int shift = 24; shift >= 0; shift -= 8)
      out.push_back(static_cast<char>((size >> shift) & 0xff));
  }
  const torch::Tensor data = tensor.contiguous();
  const auto width = static_cast<int64_t>(data.element_size());
  const char* bytes = static_cast<const char*>(data.data_ptr());
  for (int64_t i = 0; i < data.numel(); ++i) {
    for (int64_t b = width - 1; b >= 0; --b) out.push_back(bytes[i * width + b]);
  }
  return out;
}

void WritePng(const std::string& path, const torch::Tensor& pixels) {
  const torch::Tensor data = pixels.to(torch::kByte).contiguous();
  const int height = static_cast<int>(data.size(0));
  const int width = static_cast<int>(data.size(1));
  const int channels = static_cast<int>(data.size(2));
  ASSERT_NE(
      stbi_write_png(path.c_str(), width, height, channels, data.data_ptr(), width * channels), 0)
      << path;
}

}  // namespace xtrain::core::testing
