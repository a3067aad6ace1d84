#include "core/data/image_folder.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "tests/data/test_files.h"

namespace xtrain::core {
namespace {

using ::testing::ElementsAre;
using testing::FreshTestDir;
using ::testing::HasSubstr;
using testing::WriteBytes;
using testing::WritePng;

// A uint8 (h, w, c) image whose pixels are (seed * 31 + i) % 256.
torch::Tensor Pixels(int64_t h, int64_t w, int64_t c, int64_t seed) {
  return torch::arange(h * w * c).add(seed * 31).remainder(256).to(torch::kByte).view({h, w, c});
}

std::string MakeDirs(const std::string& root, const std::vector<std::string>& names) {
  for (const std::string& name : names) std::filesystem::create_directories(root + "/" + name);
  return root;
}

std::string Message(const absl::Status& status) { return std::string(status.message()); }

TEST(ImageFolder, ClassesFollowSortedFolderNames) {
  const std::string root = MakeDirs(FreshTestDir(), {"dog", "cat"});
  WritePng(root + "/dog/z.png", Pixels(6, 5, 3, 1));
  WritePng(root + "/cat/b.png", Pixels(6, 5, 3, 2));
  WritePng(root + "/cat/a.png", Pixels(6, 5, 3, 3));
  WriteBytes(root + "/cat/notes.txt", "not an image");
  std::vector<std::string> classes;
  absl::StatusOr<TensorDataset> data = LoadImageFolder(root, {}, &classes);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_THAT(classes, ElementsAre("cat", "dog"));
  EXPECT_EQ(data->inputs.sizes(), (std::vector<int64_t>{3, 3, 6, 5}));
  EXPECT_TRUE(torch::equal(data->targets, torch::tensor({0, 0, 1}, torch::kLong)));
  // cat/a.png first, as (C, H, W) / 255; PNG is lossless.
  const torch::Tensor expected = Pixels(6, 5, 3, 3).permute({2, 0, 1}).to(torch::kFloat) / 255;
  EXPECT_TRUE(torch::allclose(data->inputs[0], expected));
}

TEST(ImageFolder, ConvertsToTheRequestedChannels) {
  const std::string root = MakeDirs(FreshTestDir(), {"only"});
  WritePng(root + "/only/rgb.png", Pixels(4, 4, 3, 0));
  WritePng(root + "/only/grey.png", Pixels(4, 4, 1, 0));
  ImageFolderOptions options;
  options.channels = 1;
  absl::StatusOr<TensorDataset> grey = LoadImageFolder(root, options);
  ASSERT_TRUE(grey.ok()) << grey.status();
  EXPECT_EQ(grey->inputs.sizes(), (std::vector<int64_t>{2, 1, 4, 4}));
  options.channels = 4;
  absl::StatusOr<TensorDataset> rgba = LoadImageFolder(root, options);
  ASSERT_TRUE(rgba.ok()) << rgba.status();
  EXPECT_EQ(rgba->inputs.sizes(), (std::vector<int64_t>{2, 4, 4, 4}));
  EXPECT_TRUE(torch::all(rgba->inputs.select(1, 3) == 1.0f).item<bool>());  // opaque alpha
}

TEST(ImageFolder, SizeMismatchNamesTheFile) {
  const std::string root = MakeDirs(FreshTestDir(), {"a", "b"});
  WritePng(root + "/a/first.png", Pixels(8, 8, 3, 0));
  WritePng(root + "/b/wide.png", Pixels(8, 9, 3, 0));
  absl::StatusOr<TensorDataset> data = LoadImageFolder(root, {});
  EXPECT_EQ(data.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(data.status()), HasSubstr(root + "/b/wide.png: image is 9x8"));
  EXPECT_THAT(Message(data.status()), HasSubstr(root + "/a/first.png is 8x8"));
}

TEST(ImageFolder, CorruptPngNamesTheFileAndStbReason) {
  const std::string root = MakeDirs(FreshTestDir(), {"a"});
  WritePng(root + "/a/good.png", Pixels(4, 4, 3, 0));
  WriteBytes(root + "/a/junk.png", "\x89PNG\r\n\x1a\nthis is not really a png");
  absl::StatusOr<TensorDataset> data = LoadImageFolder(root, {});
  EXPECT_EQ(data.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(data.status()), HasSubstr(root + "/a/junk.png: cannot decode image ("));
}

// A 54-byte BMP header (no pixel data) that claims `width` x `height` pixels of 24 bits.
std::string BmpHeader(int32_t width, int32_t height) {
  std::string out = "BM";
  auto put = [&out](uint32_t value, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
  };
  put(54, 4), put(0, 4), put(54, 4);                                // file size, reserved, data offset
  put(40, 4), put(width, 4), put(height, 4), put(1, 2), put(24, 2);  // info header
  put(0, 4), put(0, 4), put(0, 4), put(0, 4), put(0, 4), put(0, 4);
  return out;
}

// Found by fuzz_image: stb decodes a BMP of height 0 to an empty image, which was then copied from null.
TEST(ImageFolder, AnImageOfNoPixelsIsRefused) {
  const std::string root = FreshTestDir();
  std::filesystem::create_directories(root + "/a");
  WriteBytes(root + "/a/empty.bmp", BmpHeader(2, 0));
  absl::StatusOr<TensorDataset> loaded = LoadImageFolder(root, ImageFolderOptions{});
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr(root + "/a/empty.bmp"));
}

// A header that claims 20000 x 20000 pixels is refused from the header, before stb allocates 1.2 GB.
TEST(ImageFolder, AnImageLargerThanTheLimitIsRefusedFromItsHeader) {
  const std::string root = FreshTestDir();
  std::filesystem::create_directories(root + "/a");
  WriteBytes(root + "/a/huge.bmp", BmpHeader(20000, 20000));
  absl::StatusOr<TensorDataset> loaded = LoadImageFolder(root, ImageFolderOptions{});
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loaded.status().message()),
              HasSubstr(root + "/a/huge.bmp: image of 20000x20000 pixels is larger than the limit"));
}

// Found by fuzz_image: stb's info gives a top-down BMP's height negative, so the product passed the
// limit and stb then allocated 1.9 GB for 258 x 2,490,368 pixels.
TEST(ImageFolder, ATopDownImageLargerThanTheLimitIsRefusedFromItsHeader) {
  const std::string root = FreshTestDir();
  std::filesystem::create_directories(root + "/a");
  WriteBytes(root + "/a/huge.bmp", BmpHeader(258, -2490368));
  absl::StatusOr<TensorDataset> loaded = LoadImageFolder(root, ImageFolderOptions{});
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(loaded.status().message()),
              HasSubstr(root + "/a/huge.bmp: image of 258x2490368 pixels is larger than the limit"));
}

TEST(ImageFolder, EmptyRootIsAnError) {
  const std::string root = FreshTestDir();
  absl::StatusOr<TensorDataset> data = LoadImageFolder(root, {});
  EXPECT_EQ(data.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(data.status()), HasSubstr(root));
  EXPECT_EQ(LoadImageFolder(root + "/absent", {}).status().code(), absl::StatusCode::kNotFound);
}

TEST(SegmentationFolder, PairsImagesAndMasksByName) {
  const std::string root = MakeDirs(FreshTestDir(), {"images", "masks"});
  const torch::Tensor mask_a = torch::arange(20).remainder(3).to(torch::kByte).view({4, 5, 1});
  const torch::Tensor mask_b = torch::full({4, 5, 1}, 2, torch::kByte);
  WritePng(root + "/images/a.png", Pixels(4, 5, 3, 0));
  WritePng(root + "/images/b.png", Pixels(4, 5, 3, 1));
  WritePng(root + "/masks/a.png", mask_a);
  WritePng(root + "/masks/b.png", mask_b);
  absl::StatusOr<TensorDataset> data = LoadSegmentationFolder(root, {});
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->inputs.sizes(), (std::vector<int64_t>{2, 3, 4, 5}));
  EXPECT_EQ(data->targets.scalar_type(), torch::kLong);
  EXPECT_TRUE(
      torch::equal(data->targets, torch::stack({mask_a, mask_b}).squeeze(-1).to(torch::kLong)));
}

TEST(SegmentationFolder, ImageWithoutMaskNamesTheImage) {
  const std::string root = MakeDirs(FreshTestDir(), {"images", "masks"});
  WritePng(root + "/images/a.png", Pixels(4, 4, 3, 0));
  WritePng(root + "/images/b.png", Pixels(4, 4, 3, 0));
  WritePng(root + "/masks/a.png", Pixels(4, 4, 1, 0));
  absl::StatusOr<TensorDataset> data = LoadSegmentationFolder(root, {});
  EXPECT_EQ(data.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(data.status()), HasSubstr(root + "/images/b.png: no mask"));
}

TEST(SegmentationFolder, RejectsColourMasksAndMaskSizeMismatch) {
  const std::string root = MakeDirs(FreshTestDir(), {"images", "masks"});
  WritePng(root + "/images/a.png", Pixels(4, 4, 3, 0));
  WritePng(root + "/masks/a.png", Pixels(4, 4, 3, 0));
  absl::StatusOr<TensorDataset> colour = LoadSegmentationFolder(root, {});
  EXPECT_EQ(colour.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(colour.status()), HasSubstr(root + "/masks/a.png: mask has 3 channels"));

  WritePng(root + "/masks/a.png", Pixels(4, 3, 1, 0));
  absl::StatusOr<TensorDataset> size = LoadSegmentationFolder(root, {});
  EXPECT_EQ(size.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(size.status()), HasSubstr(root + "/masks/a.png: image is 3x4"));
}

}  // namespace
}  // namespace xtrain::core
