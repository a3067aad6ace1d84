#include "core/data/synthetic.h"

#include <gtest/gtest.h>

namespace xtrain::core {
namespace {

// Accuracy of the nearest-class-mean classifier fitted on the first half, tested on the second.
double NearestMeanAccuracy(const TensorDataset& data, int64_t classes) {
  const int64_t half = data.size() / 2;
  const torch::Tensor x = data.inputs.flatten(1);
  std::vector<torch::Tensor> means;
  for (int64_t c = 0; c < classes; ++c) {
    means.push_back(x.slice(0, 0, half).index({data.targets.slice(0, 0, half) == c}).mean(0));
  }
  const torch::Tensor predicted = torch::cdist(x.slice(0, half), torch::stack(means)).argmin(1);
  return (predicted == data.targets.slice(0, half)).to(torch::kFloat).mean().item<double>();
}

TEST(SyntheticClassification, IsSeededBalancedAndInRange) {
  absl::StatusOr<TensorDataset> a = MakeSyntheticClassification(40, 3, {8, 6}, 4, 11);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->inputs.sizes(), (std::vector<int64_t>{40, 3, 8, 6}));
  EXPECT_GE(a->inputs.min().item<float>(), 0.0f);
  EXPECT_LE(a->inputs.max().item<float>(), 1.0f);
  EXPECT_TRUE(torch::equal(torch::bincount(a->targets), torch::full({4}, 10, torch::kLong)));
  absl::StatusOr<TensorDataset> same = MakeSyntheticClassification(40, 3, {8, 6}, 4, 11);
  EXPECT_TRUE(torch::equal(a->inputs, same->inputs));
  EXPECT_TRUE(torch::equal(a->targets, same->targets));
  absl::StatusOr<TensorDataset> other = MakeSyntheticClassification(40, 3, {8, 6}, 4, 12);
  EXPECT_FALSE(torch::equal(a->inputs, other->inputs));
}

TEST(SyntheticClassification, ClassesAreLearnableIn2DAnd3D) {
  absl::StatusOr<TensorDataset> flat = MakeSyntheticClassification(400, 1, {12, 12}, 10, 1);
  ASSERT_TRUE(flat.ok()) << flat.status();
  EXPECT_GT(NearestMeanAccuracy(*flat, 10), 0.95);
  absl::StatusOr<TensorDataset> volume = MakeSyntheticClassification(200, 2, {6, 6, 6}, 5, 1);
  ASSERT_TRUE(volume.ok()) << volume.status();
  EXPECT_EQ(volume->inputs.sizes(), (std::vector<int64_t>{200, 2, 6, 6, 6}));
  EXPECT_GT(NearestMeanAccuracy(*volume, 5), 0.95);
}

TEST(SyntheticSegmentation, MasksHoldBoxesWhoseColourGivesTheClass) {
  absl::StatusOr<TensorDataset> data = MakeSyntheticSegmentation(20, 1, {8, 10, 12}, 4, 5);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->inputs.sizes(), (std::vector<int64_t>{20, 1, 8, 10, 12}));
  EXPECT_EQ(data->targets.sizes(), (std::vector<int64_t>{20, 8, 10, 12}));
  EXPECT_EQ(data->targets.min().item<int64_t>(), 0);
  EXPECT_EQ(data->targets.max().item<int64_t>(), 3);
  // Every class shows up and each pixel is nearest to its class's mean intensity.
  const torch::Tensor x = data->inputs.select(1, 0);
  std::vector<torch::Tensor> means;
  for (int64_t c = 0; c < 4; ++c) {
    const torch::Tensor pixels = x.index({data->targets == c});
    ASSERT_GT(pixels.numel(), 0) << "class " << c;
    means.push_back(pixels.mean());
  }
  const torch::Tensor predicted = (x.unsqueeze(-1) - torch::stack(means)).abs().argmin(-1);
  EXPECT_GT((predicted == data->targets).to(torch::kFloat).mean().item<double>(), 0.95);
  absl::StatusOr<TensorDataset> same = MakeSyntheticSegmentation(20, 1, {8, 10, 12}, 4, 5);
  EXPECT_TRUE(torch::equal(data->targets, same->targets));
}

TEST(Synthetic, LeavesTheGlobalGeneratorAlone) {
  torch::manual_seed(123);
  const torch::Tensor expected = torch::rand({4});
  torch::manual_seed(123);
  ASSERT_TRUE(MakeSyntheticClassification(8, 1, {4, 4}, 2, 0).ok());
  ASSERT_TRUE(MakeSyntheticSegmentation(8, 3, {4, 4}, 3, 0).ok());
  EXPECT_TRUE(torch::equal(torch::rand({4}), expected));
}

TEST(Synthetic, RejectsBadArguments) {
  EXPECT_EQ(MakeSyntheticClassification(8, 1, {4}, 2, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeSyntheticClassification(0, 1, {4, 4}, 2, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeSyntheticSegmentation(8, 1, {4, 4}, 1, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xtrain::core
