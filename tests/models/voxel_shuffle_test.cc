// VoxelShuffle: the 3-D sub-pixel shuffle srnet uses on volumes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/models/voxel_shuffle.h"

namespace xtrain::core {
namespace {

TEST(VoxelShuffle, ReadsChannelsAsDepthRowColumnOffsets) {
  const int64_t s = 2;
  const torch::Tensor input =
      torch::arange(2 * 3 * 8 * 2 * 3 * 1, torch::kFloat).reshape({2, 3 * 8, 2, 3, 1});
  const torch::Tensor output = VoxelShuffle(s)->forward(input);
  ASSERT_EQ(output.sizes(), torch::IntArrayRef({2, 3, 4, 6, 2}));
  const auto in = input.accessor<float, 5>();
  const auto out = output.accessor<float, 5>();
  for (int64_t n = 0; n < 2; ++n) {
    for (int64_t c = 0; c < 3; ++c) {
      for (int64_t z = 0; z < 4; ++z) {
        for (int64_t y = 0; y < 6; ++y) {
          for (int64_t x = 0; x < 2; ++x) {
            const int64_t channel = c * s * s * s + (z % s) * s * s + (y % s) * s + x % s;
            ASSERT_EQ(out[n][c][z][y][x], in[n][channel][z / s][y / s][x / s]) << n << c << z << y << x;
          }
        }
      }
    }
  }
}

TEST(VoxelShuffle, EachDepthPhaseIsAPixelShuffle) {
  // Output depth slices z = d * s + phase come from the channels (c, phase, *, *), pixel-shuffled.
  const int64_t s = 3;
  const torch::Tensor input = torch::randn({2, 2 * 27, 2, 3, 4});
  const torch::Tensor output = VoxelShuffle(s)->forward(input);
  for (int64_t phase = 0; phase < s; ++phase) {
    const torch::Tensor channels = input.reshape({2, 2, s, s * s, 2, 3, 4}).select(2, phase);
    const torch::Tensor per_depth = channels.permute({0, 3, 1, 2, 4, 5}).reshape({2, 2, 2 * 9, 3, 4});
    const torch::Tensor expected = torch::pixel_shuffle(per_depth, s).permute({0, 2, 1, 3, 4});
    EXPECT_TRUE(torch::equal(output.slice(2, phase, c10::nullopt, s), expected)) << phase;
  }
  EXPECT_TRUE(torch::equal(VoxelShuffle(1)->forward(input), input));
}

TEST(VoxelShuffle, RefusesChannelsNotDivisibleByScaleCubed) {
  EXPECT_THROW(VoxelShuffle(2)->forward(torch::randn({1, 4, 2, 2, 2})), c10::Error);
  EXPECT_THROW(VoxelShuffle(2)->forward(torch::randn({1, 8, 2, 2})), c10::Error);
}

}  // namespace
}  // namespace xtrain::core
