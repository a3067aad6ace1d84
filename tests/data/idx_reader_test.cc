#include "core/data/idx_reader.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "tests/data/test_files.h"

namespace xtrain::core {
namespace {

using testing::FreshTestDir;
using ::testing::HasSubstr;
using testing::IdxBytes;
using testing::WriteBytes;
using testing::WriteGzip;

constexpr char kFashionMnist[] = "/usr/share/datasets/fashion-mnist";

std::string Message(const absl::Status& status) { return std::string(status.message()); }

TEST(IdxReader, ReadsFashionMnistFromTheDebianPackage) {
  if (!std::filesystem::exists(std::string(kFashionMnist) + "/train-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  }
  for (const bool train : {true, false}) {
    absl::StatusOr<TensorDataset> data = LoadMnistFolder(kFashionMnist, train);
    ASSERT_TRUE(data.ok()) << data.status();
    const int64_t n = train ? 60000 : 10000;
    EXPECT_EQ(data->inputs.sizes(), (std::vector<int64_t>{n, 1, 28, 28}));
    EXPECT_EQ(data->inputs.scalar_type(), torch::kFloat);
    EXPECT_EQ(data->targets.sizes(), (std::vector<int64_t>{n}));
    EXPECT_EQ(data->targets.scalar_type(), torch::kLong);
    EXPECT_GE(data->inputs.min().item<float>(), 0.0f);
    EXPECT_LE(data->inputs.max().item<float>(), 1.0f);
    EXPECT_GT(data->inputs.max().item<float>(), 0.99f);
    // Fashion-MNIST is balanced: n / 10 examples of each class 0..9.
    const torch::Tensor counts = torch::bincount(data->targets);
    ASSERT_EQ(counts.numel(), 10);
    EXPECT_TRUE(torch::all(counts == n / 10).item<bool>()) << counts;
  }
}

struct IdxCase {
  uint8_t code;
  torch::ScalarType dtype;
};

TEST(IdxReader, RoundTripsEveryTypeCodeRawAndGzip) {
  const std::string dir = FreshTestDir();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  const IdxCase cases[] = {{0x08, torch::kByte}, {0x09, torch::kChar},  {0x0B, torch::kShort},
                           {0x0C, torch::kInt},  {0x0D, torch::kFloat}, {0x0E, torch::kDouble}};
  for (const IdxCase& c : cases) {
    torch::Tensor values = c10::isFloatingType(c.dtype)
                               ? torch::randn({3, 4, 5}, gen, torch::TensorOptions().dtype(c.dtype))
                               : torch::randint(-100, 100, {3, 4, 5}, gen, torch::kLong);
    if (c.dtype == torch::kByte) values = values.abs();
    values = values.to(c.dtype);
    const std::string bytes = IdxBytes(values, c.code);
    const std::string raw = dir + "/raw_" + std::to_string(c.code) + ".idx";
    const std::string gz = raw + ".gz";
    WriteBytes(raw, bytes);
    WriteGzip(gz, bytes);
    for (const std::string& path : {raw, gz}) {
      absl::StatusOr<torch::Tensor> read = ReadIdx(path);
      ASSERT_TRUE(read.ok()) << read.status();
      EXPECT_EQ(read->scalar_type(), c.dtype) << path;
      EXPECT_TRUE(torch::equal(*read, values)) << path;
    }
  }
}

TEST(IdxReader, MissingFileIsNotFound) {
  const std::string path = FreshTestDir() + "/absent.idx";
  absl::StatusOr<torch::Tensor> read = ReadIdx(path);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(read.status()), HasSubstr(path));
}

TEST(IdxReader, WrongMagicNamesTheFile) {
  const std::string path = FreshTestDir() + "/magic.idx";
  std::string bytes = IdxBytes(torch::zeros({2}, torch::kByte), 0x08);
  bytes[1] = 0x05;
  WriteBytes(path, bytes);
  absl::StatusOr<torch::Tensor> read = ReadIdx(path);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(read.status()), HasSubstr(path));
  EXPECT_THAT(Message(read.status()), HasSubstr("wrong magic"));
}

TEST(IdxReader, UnknownTypeCodeNamesTheCode) {
  const std::string path = FreshTestDir() + "/type.idx";
  WriteBytes(path, IdxBytes(torch::zeros({2}, torch::kByte), 0x0A));
  absl::StatusOr<torch::Tensor> read = ReadIdx(path);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(read.status()), HasSubstr(path));
  EXPECT_THAT(Message(read.status()), HasSubstr("type code 0x0A"));
}

TEST(IdxReader, TruncatedDataSaysExpectedAndGot) {
  const std::string dir = FreshTestDir();
  std::string bytes = IdxBytes(torch::ones({4, 5}, torch::kInt), 0x0C);
  bytes.resize(bytes.size() - 6);  // 80 data bytes become 74
  for (const bool gzip : {false, true}) {
    const std::string path = dir + (gzip ? "/short.idx.gz" : "/short.idx");
    gzip ? WriteGzip(path, bytes) : WriteBytes(path, bytes);
    absl::StatusOr<torch::Tensor> read = ReadIdx(path);
    EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(Message(read.status()), HasSubstr(path));
    EXPECT_THAT(Message(read.status()), HasSubstr("expected 80 bytes, got 74"));
  }
}

TEST(IdxReader, CutGzipStreamIsDataLoss) {
  const std::string dir = FreshTestDir();
  WriteGzip(dir + "/whole.gz", IdxBytes(torch::arange(5000, torch::kInt), 0x0C));
  std::ifstream in(dir + "/whole.gz", std::ios::binary);
  std::string compressed((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string path = dir + "/cut.gz";
  WriteBytes(path, compressed.substr(0, compressed.size() / 2));
  absl::StatusOr<torch::Tensor> read = ReadIdx(path);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(read.status()), HasSubstr(path));
}

TEST(IdxReader, BytesAfterTheDataAreRejected) {
  const std::string path = FreshTestDir() + "/long.idx";
  WriteBytes(path, IdxBytes(torch::ones({3}, torch::kByte), 0x08) + "xx");
  absl::StatusOr<torch::Tensor> read = ReadIdx(path);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(read.status()), HasSubstr(path));
}

TEST(IdxReader, LoadsClassificationFromGeneratedFiles) {
  const std::string dir = FreshTestDir();
  const torch::Tensor images =
      torch::arange(5 * 28 * 28).remainder(256).to(torch::kByte).view({5, 28, 28});
  const torch::Tensor labels = torch::tensor({3, 1, 4, 1, 5}, torch::kByte);
  WriteGzip(dir + "/images.gz", IdxBytes(images, 0x08));
  WriteBytes(dir + "/labels", IdxBytes(labels, 0x08));
  absl::StatusOr<TensorDataset> data = LoadIdxClassification(dir + "/images.gz", dir + "/labels");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_TRUE(torch::allclose(data->inputs, images.unsqueeze(1).to(torch::kFloat) / 255));
  EXPECT_TRUE(torch::equal(data->targets, labels.to(torch::kLong)));
}

TEST(IdxReader, CountMismatchNamesBothFiles) {
  const std::string dir = FreshTestDir();
  WriteBytes(dir + "/images", IdxBytes(torch::zeros({4, 28, 28}, torch::kByte), 0x08));
  WriteBytes(dir + "/labels", IdxBytes(torch::zeros({3}, torch::kByte), 0x08));
  absl::StatusOr<TensorDataset> data = LoadIdxClassification(dir + "/images", dir + "/labels");
  EXPECT_EQ(data.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(data.status()), HasSubstr(dir + "/images holds 4 images"));
  EXPECT_THAT(Message(data.status()), HasSubstr(dir + "/labels holds 3 labels"));
}

}  // namespace
}  // namespace xtrain::core
