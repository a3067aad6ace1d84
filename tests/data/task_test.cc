#include "core/data/task.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace xtrain::core {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<TaskAdapter> Adapter(TaskKind kind, const TaskOptions& options = {}) {
  absl::StatusOr<std::unique_ptr<TaskAdapter>> adapter = MakeTaskAdapter(kind, options);
  EXPECT_TRUE(adapter.ok()) << adapter.status();
  return adapter.ok() ? *std::move(adapter) : nullptr;
}

torch::Tensor Images(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::rand(shape, gen);
}

TEST(TaskKind, ParsesNamesAndAliases) {
  for (TaskKind kind : {TaskKind::kClassification, TaskKind::kSegmentation,
                        TaskKind::kSuperResolution, TaskKind::kInpainting, TaskKind::kGenerative}) {
    absl::StatusOr<TaskKind> parsed = ParseTaskKind(TaskKindName(kind));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, kind);
  }
  EXPECT_EQ(*ParseTaskKind("Super_Resolution"), TaskKind::kSuperResolution);
  EXPECT_EQ(*ParseTaskKind("DDPM"), TaskKind::kGenerative);
  absl::StatusOr<TaskKind> unknown = ParseTaskKind("detection");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("'detection'"));
}

TEST(TaskKind, ChannelsForModelSpecs) {
  EXPECT_EQ(InputChannels(TaskKind::kClassification, 3), 3);
  EXPECT_EQ(OutputChannels(TaskKind::kClassification, 3, 10), 10);
  EXPECT_EQ(OutputChannels(TaskKind::kSegmentation, 1, 4), 4);
  EXPECT_EQ(InputChannels(TaskKind::kSuperResolution, 3), 3);
  EXPECT_EQ(OutputChannels(TaskKind::kSuperResolution, 3, 10), 3);
  EXPECT_EQ(InputChannels(TaskKind::kInpainting, 3), 4);
  EXPECT_EQ(OutputChannels(TaskKind::kInpainting, 3, 0), 3);
  EXPECT_EQ(InputChannels(TaskKind::kGenerative, 1), 2);
  EXPECT_EQ(OutputChannels(TaskKind::kGenerative, 1, 0), 1);
}

TEST(TaskAdapter, FactoryRejectsUnusableOptions) {
  EXPECT_EQ(MakeTaskAdapter(TaskKind::kSuperResolution, {.scale = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeTaskAdapter(TaskKind::kInpainting, {.hole_fraction = 1.0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeTaskAdapter(TaskKind::kGenerative, {.timesteps = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TaskAdapter, ClassificationAndSegmentationPassDataThrough) {
  torch::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
  const torch::Tensor x = Images({4, 1, 6, 6}, 1);
  const torch::Tensor labels = torch::tensor({0, 1, 2, 1}, torch::kLong);
  absl::StatusOr<Batch> cls = Adapter(TaskKind::kClassification)->Make(x, labels, gen);
  ASSERT_TRUE(cls.ok()) << cls.status();
  EXPECT_TRUE(torch::equal(cls->input, x));
  EXPECT_TRUE(torch::equal(cls->target, labels));

  const torch::Tensor masks = torch::zeros({4, 6, 6}, torch::kLong);
  absl::StatusOr<Batch> seg = Adapter(TaskKind::kSegmentation)->Make(x, masks, gen);
  ASSERT_TRUE(seg.ok()) << seg.status();
  EXPECT_TRUE(torch::equal(seg->target, masks));
  EXPECT_EQ(Adapter(TaskKind::kSegmentation)->Make(x, labels, gen).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Adapter(TaskKind::kClassification)->Make(x, torch::Tensor(), gen).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TaskAdapter, SuperResolutionInputIsTheAreaDownsampledTarget) {
  torch::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
  const torch::Tensor x2 = Images({2, 3, 8, 12}, 2);
  absl::StatusOr<Batch> flat = Adapter(TaskKind::kSuperResolution, {.scale = 2})->Make(x2, {}, gen);
  ASSERT_TRUE(flat.ok()) << flat.status();
  EXPECT_TRUE(torch::equal(flat->target, x2));
  // Mean of each 2x2 block, computed by reshaping.
  const torch::Tensor blocks = x2.view({2, 3, 4, 2, 6, 2}).mean({3, 5});
  EXPECT_TRUE(torch::allclose(flat->input, blocks, 1e-6, 1e-6));

  const torch::Tensor x3 = Images({2, 1, 6, 9, 3}, 3);
  absl::StatusOr<Batch> volume =
      Adapter(TaskKind::kSuperResolution, {.scale = 3})->Make(x3, {}, gen);
  ASSERT_TRUE(volume.ok()) << volume.status();
  EXPECT_EQ(volume->input.sizes(), (std::vector<int64_t>{2, 1, 2, 3, 1}));
  EXPECT_TRUE(torch::allclose(volume->input, x3.view({2, 1, 2, 3, 3, 3, 1, 3}).mean({3, 5, 7}),
                              1e-6, 1e-6));

  absl::StatusOr<Batch> odd =
      Adapter(TaskKind::kSuperResolution, {.scale = 2})->Make(Images({1, 1, 7, 8}, 0), {}, gen);
  EXPECT_EQ(odd.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(odd.status().message()), HasSubstr("not divisible by scale 2"));
}

TEST(TaskAdapter, InpaintingHidesAHoleOfTheRequestedFraction) {
  const std::unique_ptr<TaskAdapter> adapter =
      Adapter(TaskKind::kInpainting, {.hole_fraction = 0.3});
  for (const std::vector<int64_t>& shape :
       {std::vector<int64_t>{16, 3, 28, 28}, std::vector<int64_t>{8, 1, 8, 8, 8}}) {
    const torch::Tensor x = Images(shape, 4).add(0.01);  // no pixel is exactly 0
    torch::Generator gen = at::make_generator<at::CPUGeneratorImpl>(42);
    absl::StatusOr<Batch> batch = adapter->Make(x, {}, gen);
    ASSERT_TRUE(batch.ok()) << batch.status();
    const int64_t c = shape[1];
    EXPECT_EQ(batch->input.size(1), c + 1);
    EXPECT_TRUE(torch::equal(batch->target, x));
    EXPECT_TRUE(torch::equal(batch->input.narrow(1, c, 1), batch->mask));
    const torch::Tensor fraction = batch->mask.flatten(1).mean(1);
    EXPECT_TRUE(torch::all((fraction - 0.3).abs() < 0.05).item<bool>()) << fraction;
    // Zero inside the hole, the image outside it.
    const torch::Tensor seen = batch->input.narrow(1, 0, c);
    EXPECT_TRUE(torch::equal(seen == 0, (batch->mask == 1).expand_as(seen)));
    EXPECT_TRUE(torch::equal(seen, x * (1 - batch->mask)));
    // Holes move between images, and the same seed reproduces them.
    EXPECT_FALSE(torch::equal(batch->mask[0], batch->mask[1]));
    torch::Generator again = at::make_generator<at::CPUGeneratorImpl>(42);
    EXPECT_TRUE(torch::equal(adapter->Make(x, {}, again)->mask, batch->mask));
    torch::Generator other = at::make_generator<at::CPUGeneratorImpl>(43);
    EXPECT_FALSE(torch::equal(adapter->Make(x, {}, other)->mask, batch->mask));
  }
}

TEST(TaskAdapter, GenerativeTargetIsTheNoiseOfTheForwardProcess) {
  const int64_t steps = 50;
  const std::unique_ptr<TaskAdapter> adapter = Adapter(TaskKind::kGenerative, {.timesteps = steps});
  const torch::Tensor x = Images({64, 2, 8, 8}, 5);
  torch::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  absl::StatusOr<Batch> batch = adapter->Make(x, {}, gen);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_EQ(batch->input.sizes(), (std::vector<int64_t>{64, 3, 8, 8}));
  EXPECT_EQ(batch->target.sizes(), x.sizes());
  EXPECT_NEAR(batch->target.mean().item<double>(), 0.0, 0.05);
  EXPECT_NEAR(batch->target.std().item<double>(), 1.0, 0.05);
  // The last channel is t / T, constant per image; x_t follows the DDPM forward formula.
  const torch::Tensor time = batch->input.select(1, 2);
  EXPECT_TRUE(torch::equal(time, time.amax({1, 2}, true).expand_as(time)));
  const torch::Tensor t = time.select(1, 0).select(1, 0).mul(steps).round().to(torch::kLong);
  EXPECT_GE(t.min().item<int64_t>(), 0);
  EXPECT_LT(t.max().item<int64_t>(), steps);
  EXPECT_GT(std::get<0>(at::_unique(t)).numel(), 10);  // timesteps vary across the batch
  const torch::Tensor a =
      DdpmAlphaBar(steps).index_select(0, t).to(torch::kFloat).view({64, 1, 1, 1});
  const torch::Tensor expected = a.sqrt() * (2 * x - 1) + (1 - a).sqrt() * batch->target;
  EXPECT_TRUE(torch::allclose(batch->input.narrow(1, 0, 2), expected, 1e-5, 1e-5));
  torch::Generator again = at::make_generator<at::CPUGeneratorImpl>(7);
  EXPECT_TRUE(torch::equal(adapter->Make(x, {}, again)->input, batch->input));
}

TEST(TaskAdapter, GenerativeWithOneStepUsesTheFirstBeta) {
  const torch::Tensor x = Images({2, 1, 4, 4, 4}, 6);
  torch::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
  absl::StatusOr<Batch> batch = Adapter(TaskKind::kGenerative, {.timesteps = 1})->Make(x, {}, gen);
  ASSERT_TRUE(batch.ok()) << batch.status();
  // t = 0 always: abar_0 = 1 - beta_0 = 1 - 1e-4.
  const double a = 1 - 1e-4;
  const torch::Tensor expected = std::sqrt(a) * (2 * x - 1) + std::sqrt(1 - a) * batch->target;
  EXPECT_TRUE(torch::allclose(batch->input.narrow(1, 0, 1), expected, 1e-5, 1e-5));
  EXPECT_TRUE(torch::all(batch->input.narrow(1, 1, 1) == 0).item<bool>());
}

TEST(DdpmAlphaBar, FollowsTheLinearSchedule) {
  const torch::Tensor abar = DdpmAlphaBar(1000);
  EXPECT_NEAR(abar[0].item<double>(), 1 - 1e-4, 1e-12);
  EXPECT_NEAR(abar[1].item<double>(), (1 - 1e-4) * (1 - (1e-4 + 0.0199 / 999)), 1e-12);
  EXPECT_LT(abar[999].item<double>(), 1e-4);  // about 4e-5: x_T is nearly pure noise
  EXPECT_TRUE(torch::all(abar.slice(0, 1) < abar.slice(0, 0, 999)).item<bool>());
}

}  // namespace
}  // namespace xtrain::core
