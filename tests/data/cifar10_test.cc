#include "core/data/cifar10.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/data/test_files.h"

namespace xtrain::core {
namespace {

using testing::FreshTestDir;
using ::testing::HasSubstr;
using testing::WriteBytes;

// `count` CIFAR-10 records; record r has label labels[r] and pixel i = (r * 7 + i) % 256.
std::string Records(const std::vector<int>& labels, int first) {
  std::string out;
  for (size_t r = 0; r < labels.size(); ++r) {
    out.push_back(static_cast<char>(labels[r]));
    for (int i = 0; i < 3072; ++i) out.push_back(static_cast<char>(((first + r) * 7 + i) % 256));
  }
  return out;
}

TEST(Cifar10, ReadsRecordsFromSeveralFilesInOrder) {
  const std::string dir = FreshTestDir();
  WriteBytes(dir + "/a.bin", Records({0, 9, 4}, 0));
  WriteBytes(dir + "/b.bin", Records({7, 2}, 3));
  absl::StatusOr<TensorDataset> data = LoadCifar10({dir + "/a.bin", dir + "/b.bin"});
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->inputs.sizes(), (std::vector<int64_t>{5, 3, 32, 32}));
  EXPECT_TRUE(torch::equal(data->targets, torch::tensor({0, 9, 4, 7, 2}, torch::kLong)));
  // Channel planes: byte 1 + c * 1024 + y * 32 + x of record n.
  for (int64_t n : {0, 4}) {
    const int points[][3] = {{0, 0, 0}, {1, 5, 7}, {2, 31, 31}};
    for (const auto& [c, y, x] : points) {
      const int i = c * 1024 + y * 32 + x;
      EXPECT_FLOAT_EQ(data->inputs[n][c][y][x].item<float>(), ((n * 7 + i) % 256) / 255.0f);
    }
  }
}

TEST(Cifar10, FolderReadsTheTestBatch) {
  const std::string dir = FreshTestDir();
  WriteBytes(dir + "/test_batch.bin", Records({1, 2}, 0));
  absl::StatusOr<TensorDataset> data = LoadCifar10Folder(dir, /*train=*/false);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->size(), 2);
}

TEST(Cifar10, SizeNotAMultipleOfTheRecordNamesTheFile) {
  const std::string path = FreshTestDir() + "/odd.bin";
  WriteBytes(path, Records({1, 2}, 0).substr(0, 3073 + 100));
  absl::StatusOr<TensorDataset> data = LoadCifar10({path});
  EXPECT_EQ(data.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(data.status().message()), HasSubstr(path));
  EXPECT_THAT(std::string(data.status().message()), HasSubstr("3173 bytes"));
}

TEST(Cifar10, LabelAboveNineNamesFileAndRecord) {
  const std::string path = FreshTestDir() + "/label.bin";
  WriteBytes(path, Records({1, 10}, 0));
  absl::StatusOr<TensorDataset> data = LoadCifar10({path});
  EXPECT_EQ(data.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(data.status().message()), HasSubstr(path + ": record 1 has label 10"));
}

TEST(Cifar10, MissingFileIsNotFound) {
  const std::string path = FreshTestDir() + "/data_batch_1.bin";
  absl::StatusOr<TensorDataset> data = LoadCifar10({path});
  EXPECT_EQ(data.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(data.status().message()), HasSubstr(path));
}

}  // namespace
}  // namespace xtrain::core
