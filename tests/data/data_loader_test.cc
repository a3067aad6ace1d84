#include "core/data/data_loader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace xtrain::core {
namespace {

using ::testing::HasSubstr;

// n examples (n, 1, 2, 2) whose pixels equal the example's index; target = 10 * index.
std::shared_ptr<const TensorDataset> Indexed(int64_t n) {
  auto data = std::make_shared<TensorDataset>();
  data->inputs =
      torch::arange(n, torch::kFloat).view({n, 1, 1, 1}).expand({n, 1, 2, 2}).contiguous();
  data->targets = torch::arange(n, torch::kLong).mul(10);
  return data;
}

std::unique_ptr<DataLoader> Loader(std::shared_ptr<const TensorDataset> data,
                                   const LoaderOptions& options) {
  absl::StatusOr<std::unique_ptr<DataLoader>> loader = DataLoader::Create(std::move(data), options);
  EXPECT_TRUE(loader.ok()) << loader.status();
  return loader.ok() ? *std::move(loader) : nullptr;
}

// The indices of every remaining batch of the current epoch.
std::vector<std::vector<int64_t>> Drain(DataLoader& loader) {
  std::vector<std::vector<int64_t>> out;
  while (std::optional<ExampleBatch> batch = loader.Next()) {
    const torch::Tensor& i = batch->indices;
    out.emplace_back(i.data_ptr<int64_t>(), i.data_ptr<int64_t>() + i.numel());
  }
  return out;
}

std::vector<std::vector<int64_t>> Epoch(DataLoader& loader, int64_t epoch, int64_t skip = 0) {
  EXPECT_TRUE(loader.StartEpoch(epoch, skip).ok());
  return Drain(loader);
}

TEST(DataLoader, VisitsEveryIndexOncePerEpoch) {
  std::unique_ptr<DataLoader> loader =
      Loader(Indexed(103), {.batch_size = 10, .drop_last = false, .seed = 1, .workers = 3});
  EXPECT_EQ(loader->num_batches(), 11);
  for (int64_t epoch : {0, 1}) {
    const std::vector<std::vector<int64_t>> batches = Epoch(*loader, epoch);
    ASSERT_EQ(batches.size(), 11u);
    EXPECT_EQ(batches.back().size(), 3u);
    std::vector<int64_t> all;
    for (const auto& b : batches) all.insert(all.end(), b.begin(), b.end());
    std::sort(all.begin(), all.end());
    for (int64_t i = 0; i < 103; ++i) EXPECT_EQ(all[i], i);
  }
}

TEST(DataLoader, BatchesCarryTheRowsTheirIndicesName) {
  const auto data = Indexed(40);
  std::unique_ptr<DataLoader> loader = Loader(data, {.batch_size = 8, .seed = 2, .workers = 2});
  ASSERT_TRUE(loader->StartEpoch(3).ok());
  int64_t index = 0;
  while (std::optional<ExampleBatch> batch = loader->Next()) {
    EXPECT_EQ(batch->epoch, 3);
    EXPECT_EQ(batch->index, index++);
    EXPECT_TRUE(torch::equal(batch->inputs, data->inputs.index_select(0, batch->indices)));
    EXPECT_TRUE(torch::equal(batch->targets, batch->indices * 10));
  }
  EXPECT_EQ(index, 5);
  EXPECT_EQ(loader->Position(), (LoaderPosition{3, 5}));
}

TEST(DataLoader, DropLastDropsThePartialBatch) {
  std::unique_ptr<DataLoader> loader = Loader(Indexed(25), {.batch_size = 10});
  EXPECT_EQ(loader->num_batches(), 2);
  const std::vector<std::vector<int64_t>> batches = Epoch(*loader, 0);
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(batches[1].size(), 10u);
}

TEST(DataLoader, OrderDependsOnSeedAndEpochNotOnThreads) {
  const auto data = Indexed(200);
  std::unique_ptr<DataLoader> one =
      Loader(data, {.batch_size = 7, .seed = 5, .prefetch = 1, .workers = 1});
  std::unique_ptr<DataLoader> many =
      Loader(data, {.batch_size = 7, .seed = 5, .prefetch = 6, .workers = 4});
  std::unique_ptr<DataLoader> reseeded = Loader(data, {.batch_size = 7, .seed = 6});
  const auto epoch0 = Epoch(*one, 0);
  EXPECT_EQ(Epoch(*many, 0), epoch0);
  EXPECT_NE(Epoch(*one, 1), epoch0);
  EXPECT_NE(Epoch(*reseeded, 0), epoch0);
  EXPECT_EQ(Epoch(*many, 0), epoch0);  // repeating an epoch repeats its order
}

TEST(DataLoader, WithoutShuffleKeepsDatasetOrder) {
  std::unique_ptr<DataLoader> loader = Loader(Indexed(6), {.batch_size = 3, .shuffle = false});
  EXPECT_EQ(Epoch(*loader, 4), (std::vector<std::vector<int64_t>>{{0, 1, 2}, {3, 4, 5}}));
}

TEST(DataLoader, ResumeReproducesTheRemainingBatches) {
  const auto data = Indexed(90);
  const LoaderOptions options = {.batch_size = 8, .seed = 9, .prefetch = 3, .workers = 2};
  std::unique_ptr<DataLoader> uninterrupted = Loader(data, options);
  const auto full = Epoch(*uninterrupted, 2);

  // A run stopped after batch 3 of epoch 2 records its position; a new loader resumes there.
  std::unique_ptr<DataLoader> first = Loader(data, options);
  ASSERT_TRUE(first->StartEpoch(2).ok());
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(first->Next().has_value());
  const LoaderPosition position = first->Position();
  EXPECT_EQ(position, (LoaderPosition{2, 4}));
  first.reset();
  std::unique_ptr<DataLoader> resumed = Loader(data, options);
  const auto rest = Epoch(*resumed, position.epoch, position.batch);
  EXPECT_EQ(rest, std::vector<std::vector<int64_t>>(full.begin() + 4, full.end()));
  EXPECT_TRUE(Epoch(*resumed, 2, resumed->num_batches()).empty());
}

TEST(DataLoader, RestartingAnEpochDiscardsPrefetchedBatches) {
  std::unique_ptr<DataLoader> loader =
      Loader(Indexed(64), {.batch_size = 4, .seed = 3, .workers = 3});
  const auto full = Epoch(*loader, 0);
  ASSERT_TRUE(loader->StartEpoch(1).ok());
  ASSERT_TRUE(loader->Next().has_value());
  EXPECT_EQ(Epoch(*loader, 0), full);
}

TEST(DataLoader, PrefetchBoundsTheQueue) {
  std::unique_ptr<DataLoader> loader =
      Loader(Indexed(400), {.batch_size = 4, .seed = 1, .prefetch = 3, .workers = 4});
  ASSERT_TRUE(loader->StartEpoch(0).ok());
  auto wait_full = [&] {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    int64_t peak = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      peak = std::max(peak, loader->buffered());
      if (peak >= 3) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    // Give the workers time to overshoot, were they able to.
    for (int i = 0; i < 50; ++i) {
      peak = std::max(peak, loader->buffered());
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return peak;
  };
  EXPECT_EQ(wait_full(), 3);
  ASSERT_TRUE(loader->Next().has_value());
  EXPECT_EQ(wait_full(), 3);
  EXPECT_EQ(loader->buffered(), 3);
}

TEST(DataLoader, DestroyingMidEpochReturnsPromptly) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 20; ++i) {
    std::unique_ptr<DataLoader> loader =
        Loader(Indexed(500), {.batch_size = 5, .seed = 1, .prefetch = 2, .workers = 4});
    if (i % 2 == 0) {
      ASSERT_TRUE(loader->StartEpoch(0).ok());
      ASSERT_TRUE(loader->Next().has_value());
    }
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

TEST(DataLoader, NextBeforeStartEpochIsEmpty) {
  std::unique_ptr<DataLoader> loader = Loader(Indexed(10), {.batch_size = 5});
  EXPECT_FALSE(loader->Next().has_value());
  EXPECT_EQ(loader->Position(), (LoaderPosition{0, 0}));
}

TEST(DataLoader, RejectsBadOptionsAndPositions) {
  EXPECT_EQ(DataLoader::Create(nullptr, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DataLoader::Create(Indexed(10), {.batch_size = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DataLoader::Create(Indexed(10), {.prefetch = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::unique_ptr<DataLoader>> empty =
      DataLoader::Create(Indexed(10), {.batch_size = 32});
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(empty.status().message()), HasSubstr("drop_last"));
  std::unique_ptr<DataLoader> loader = Loader(Indexed(10), {.batch_size = 5});
  EXPECT_EQ(loader->StartEpoch(0, 3).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(loader->StartEpoch(-1).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xtrain::core
