#include "core/data/tensor_dataset.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace xtrain::core {
namespace {

using ::testing::HasSubstr;

// n examples (n, 1, 2, 2) whose pixels all equal the example's index; label = index % 3.
TensorDataset Indexed(int64_t n) {
  TensorDataset data;
  data.inputs =
      torch::arange(n, torch::kFloat).view({n, 1, 1, 1}).expand({n, 1, 2, 2}).contiguous();
  data.targets = torch::arange(n, torch::kLong).remainder(3);
  return data;
}

std::vector<int64_t> Ids(const TensorDataset& data) {
  const torch::Tensor ids = data.inputs.select(1, 0).select(1, 0).select(1, 0).to(torch::kLong);
  return std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel());
}

TEST(TensorDataset, ValidateAcceptsLabelsMasksAndNoTargets) {
  TensorDataset data = Indexed(4);
  EXPECT_TRUE(ValidateDataset(data).ok());
  data.targets = torch::zeros({4, 2, 2}, torch::kLong);
  EXPECT_TRUE(ValidateDataset(data).ok());
  data.targets = torch::Tensor();
  EXPECT_TRUE(ValidateDataset(data).ok());
  data.inputs = torch::zeros({4, 1, 3, 2, 2});
  data.targets = torch::zeros({4, 3, 2, 2}, torch::kLong);
  EXPECT_TRUE(ValidateDataset(data).ok());
}

TEST(TensorDataset, ValidateRejectsDisagreeingShapes) {
  TensorDataset data = Indexed(4);
  data.targets = torch::zeros({5}, torch::kLong);
  absl::Status status = ValidateDataset(data);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("must agree"));
  data.targets = torch::zeros({4, 3, 2}, torch::kLong);
  EXPECT_EQ(ValidateDataset(data).code(), absl::StatusCode::kInvalidArgument);
  data.targets = torch::zeros({4}, torch::kFloat);
  EXPECT_EQ(ValidateDataset(data).code(), absl::StatusCode::kInvalidArgument);
  data = Indexed(4);
  data.inputs = torch::zeros({4, 2, 2});
  EXPECT_EQ(ValidateDataset(data).code(), absl::StatusCode::kInvalidArgument);
}

TEST(SplitTrainValidation, IsSeededDisjointAndComplete) {
  const TensorDataset data = Indexed(50);
  absl::StatusOr<std::pair<TensorDataset, TensorDataset>> split =
      SplitTrainValidation(data, 0.2, 9);
  ASSERT_TRUE(split.ok()) << split.status();
  const std::vector<int64_t> train = Ids(split->first);
  const std::vector<int64_t> validation = Ids(split->second);
  EXPECT_EQ(train.size(), 40u);
  EXPECT_EQ(validation.size(), 10u);
  EXPECT_TRUE(std::is_sorted(train.begin(), train.end()));
  std::vector<int64_t> all = train;
  all.insert(all.end(), validation.begin(), validation.end());
  std::sort(all.begin(), all.end());
  for (int64_t i = 0; i < 50; ++i) EXPECT_EQ(all[i], i);
  // Targets travel with their inputs.
  EXPECT_TRUE(torch::equal(split->second.targets, torch::tensor(validation).remainder(3)));

  EXPECT_EQ(Ids(SplitTrainValidation(data, 0.2, 9)->second), validation);
  EXPECT_NE(Ids(SplitTrainValidation(data, 0.2, 10)->second), validation);
}

TEST(SplitTrainValidation, RejectsFractionsThatLeaveNoTrainingData) {
  for (double fraction : {-0.1, 1.0, 0.999}) {
    EXPECT_EQ(SplitTrainValidation(Indexed(10), fraction, 0).status().code(),
              absl::StatusCode::kInvalidArgument)
        << fraction;
  }
  EXPECT_EQ(SplitTrainValidation(Indexed(10), 0.0, 0)->second.size(), 0);
}

TEST(Subset, KeepsTheFirstN) {
  absl::StatusOr<TensorDataset> subset = Subset(Indexed(10), 4);
  ASSERT_TRUE(subset.ok()) << subset.status();
  EXPECT_EQ(Ids(*subset), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(subset->targets.size(0), 4);
  EXPECT_EQ(Subset(Indexed(10), 11).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Subset(Indexed(10), -1).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xtrain::core
