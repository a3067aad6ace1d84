#include "core/data/npy.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/data/test_files.h"

namespace xtrain::core {
namespace {

using testing::FreshTestDir;
using ::testing::HasSubstr;
using testing::WriteBytes;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

// A .npy v1 file with header dict `dict` (padded as numpy pads it) followed by `data`.
std::string NpyBytes(const std::string& dict, const std::string& data) {
  std::string header = dict;
  while ((10 + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back(1);
  out.push_back(0);
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  return out + header + data;
}

TEST(Npy, RoundTrips2DImagesAnd3DVolumesOfEveryDtype) {
  const std::string dir = FreshTestDir();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const std::vector<std::vector<int64_t>> shapes = {{7}, {4, 5}, {2, 1, 6, 5}, {2, 1, 3, 4, 5}};
  for (const torch::ScalarType dtype :
       {torch::kFloat, torch::kDouble, torch::kByte, torch::kLong, torch::kInt}) {
    for (const std::vector<int64_t>& shape : shapes) {
      const torch::Tensor values = torch::rand(shape, gen).mul(200).to(dtype);
      const std::string path = dir + "/array.npy";
      ASSERT_TRUE(WriteNpy(path, values).ok());
      absl::StatusOr<torch::Tensor> read = ReadNpy(path);
      ASSERT_TRUE(read.ok()) << read.status();
      EXPECT_EQ(read->scalar_type(), dtype);
      EXPECT_TRUE(torch::equal(*read, values)) << c10::IntArrayRef(shape);
    }
  }
}

TEST(Npy, WritesNonContiguousTensorsInLogicalOrder) {
  const std::string path = FreshTestDir() + "/t.npy";
  const torch::Tensor transposed = torch::arange(12, torch::kFloat).view({3, 4}).t();
  ASSERT_TRUE(WriteNpy(path, transposed).ok());
  absl::StatusOr<torch::Tensor> read = ReadNpy(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_TRUE(torch::equal(*read, transposed));
}

TEST(Npy, ReadsNumpyStyleHeadersOfVersion1And2) {
  const std::string dir = FreshTestDir();
  const double values[] = {1.5, -2.0, 3.25};
  const std::string data(reinterpret_cast<const char*>(values), sizeof(values));
  WriteBytes(dir + "/v1.npy",
             NpyBytes("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", data));
  std::string v2 =
      NpyBytes("{\"shape\": (1, 3), \"fortran_order\": False, \"descr\": \"<f8\"}", data);
  v2[6] = 2;  // version 2.0: a 4-byte header length
  v2.insert(10, std::string(2, '\0'));
  WriteBytes(dir + "/v2.npy", v2);
  for (const char* name : {"/v1.npy", "/v2.npy"}) {
    absl::StatusOr<torch::Tensor> read = ReadNpy(dir + name);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_TRUE(torch::equal(read->flatten(), torch::tensor({1.5, -2.0, 3.25}, torch::kDouble)));
  }
}

TEST(Npy, BadMagicNamesTheFile) {
  const std::string path = FreshTestDir() + "/magic.npy";
  WriteBytes(path, "PK\x03\x04 this is a zip archive, not a .npy file");
  absl::StatusOr<torch::Tensor> read = ReadNpy(path);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(read.status()), HasSubstr(path + ": bad magic"));
}

TEST(Npy, TruncatedDataSaysExpectedAndGot) {
  const std::string path = FreshTestDir() + "/short.npy";
  WriteBytes(path, NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                            std::string(20, '\0')));
  absl::StatusOr<torch::Tensor> read = ReadNpy(path);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(read.status()), HasSubstr(path));
  EXPECT_THAT(Message(read.status()), HasSubstr("expected 24 bytes, got 20"));
}

// Found by fuzz_npy: a version-3 header length of 1.6 GB in a 53-byte file was allocated before reading.
TEST(Npy, AHeaderLengthPastTheFileIsRefusedBeforeAllocating) {
  const std::string path = FreshTestDir() + "/huge-header.npy";
  std::string bytes = "\x93NUMPY";
  bytes += std::string("\x03\x00", 2);
  bytes += std::string("\x00\x00\x00\x63", 4);  // 0x63000000 bytes of header, little-endian
  bytes += "{'descr': '<f4'";
  WriteBytes(path, bytes);
  absl::StatusOr<torch::Tensor> read = ReadNpy(path);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(read.status()), HasSubstr(path + ": .npy header length 1660944384 runs past the end of the file (15 bytes left)"));
}

TEST(Npy, UnsupportedDtypeNamesIt) {
  const std::string dir = FreshTestDir();
  for (const std::string descr : {">f4", "<c8", "<U3"}) {
    const std::string path = dir + "/dtype.npy";
    WriteBytes(path, NpyBytes("{'descr': '" + descr + "', 'fortran_order': False, 'shape': (1,), }",
                              std::string(16, '\0')));
    absl::StatusOr<torch::Tensor> read = ReadNpy(path);
    EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(read.status()), HasSubstr(path + ": unsupported dtype '" + descr + "'"));
  }
  EXPECT_EQ(WriteNpy(dir + "/half.npy", torch::zeros({2}, torch::kHalf)).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Npy, FortranOrderIsRefused) {
  const std::string path = FreshTestDir() + "/fortran.npy";
  WriteBytes(path, NpyBytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
                            std::string(16, '\0')));
  absl::StatusOr<torch::Tensor> read = ReadNpy(path);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(read.status()), HasSubstr(path + ": fortran_order is True"));
}

TEST(Npy, HeaderThatDoesNotParseIsReported) {
  const std::string dir = FreshTestDir();
  for (const std::string dict :
       {"{'descr': '<f4', 'shape': (2,), }", "{'descr': '<f4', 'fortran_order': False, 'shape': 2}",
        "{'descr': <f4, 'fortran_order': False, 'shape': (2,)}"}) {
    const std::string path = dir + "/header.npy";
    WriteBytes(path, NpyBytes(dict, std::string(8, '\0')));
    absl::StatusOr<torch::Tensor> read = ReadNpy(path);
    EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument) << dict;
    EXPECT_THAT(Message(read.status()), HasSubstr(path + ": cannot parse the .npy header"));
  }
}

TEST(Npy, LoadsAVolumeSegmentationDataset) {
  const std::string dir = FreshTestDir();
  const torch::Tensor volumes =
      torch::arange(2 * 4 * 4 * 4).remainder(256).to(torch::kByte).view({2, 1, 4, 4, 4});
  const torch::Tensor masks =
      torch::arange(2 * 4 * 4 * 4).remainder(3).to(torch::kInt).view({2, 4, 4, 4});
  ASSERT_TRUE(WriteNpy(dir + "/x.npy", volumes).ok());
  ASSERT_TRUE(WriteNpy(dir + "/y.npy", masks).ok());
  absl::StatusOr<TensorDataset> data = LoadNpyDataset(dir + "/x.npy", dir + "/y.npy");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_TRUE(torch::allclose(data->inputs, volumes.to(torch::kFloat) / 255));
  EXPECT_TRUE(torch::equal(data->targets, masks.to(torch::kLong)));

  ASSERT_TRUE(WriteNpy(dir + "/bad.npy", masks.slice(0, 0, 1)).ok());
  absl::StatusOr<TensorDataset> mismatch = LoadNpyDataset(dir + "/x.npy", dir + "/bad.npy");
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xtrain::core
