// Bad arguments get InvalidArgument with a sentence saying what to change, never a crash.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/xconv/xconv_op.h"

namespace xtrain::core {
namespace {

using ::testing::HasSubstr;

struct Args {
  torch::Tensor input = torch::randn({2, 4, 8, 8});
  torch::Tensor weight = torch::randn({6, 4, 3, 3});
  torch::Tensor bias = torch::randn({6});
  ConvGeometry geometry{{1}, {1}, {1}, 1};
  XConvSettings settings;

  absl::Status Validate(int64_t dims = 2) const {
    return ValidateXConvArgs(dims, input, weight, bias, geometry, settings);
  }
};

void ExpectInvalid(const Args& args, const std::string& fragment) {
  const absl::Status status = args.Validate();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(fragment));
  // The op raises the same message as a c10::Error (Python sees a RuntimeError).
  try {
    XConvNd(2, args.input, args.weight, args.bias, args.geometry, args.settings, 1);
    ADD_FAILURE() << "XConvNd accepted: " << fragment;
  } catch (const c10::Error& e) {
    EXPECT_THAT(e.what_without_backtrace(), HasSubstr(fragment));
  }
}

TEST(XConvArgs, ValidArgumentsPass) { EXPECT_TRUE(Args{}.Validate().ok()); }

TEST(XConvArgs, RejectsWhatCannotRun) {
  Args a;
  a.settings.probes = -1;
  ExpectInvalid(a, "probes must be >= 0");

  a = Args{};
  a.input = torch::randn({4, 8, 8});
  ExpectInvalid(a, "add a batch dimension");

  a = Args{};
  a.input = torch::randn({2, 5, 8, 8});
  ExpectInvalid(a, "input has 5 channels but weight expects 4");

  a = Args{};
  a.geometry.groups = 3;
  ExpectInvalid(a, "input has 4 channels but weight expects 4 x 3 groups");

  a = Args{};
  a.geometry.groups = 4;
  ExpectInvalid(a, "must be >= 1 and divide the output channels (6)");

  a = Args{};
  a.geometry.padding = {-1};
  ExpectInvalid(a, "padding must be >= 0 (zero padding only)");

  a = Args{};
  a.geometry.stride = {1, 1, 1};
  ExpectInvalid(a, "need 1 or 2 values");

  a = Args{};
  a.geometry.stride = {0};
  ExpectInvalid(a, "stride and dilation must be >= 1");

  a = Args{};
  a.bias = torch::randn({5});
  ExpectInvalid(a, "bias must have shape [6]");

  a = Args{};
  a.input = torch::randn({2, 4, 2, 2});
  a.geometry.padding = {0};
  ExpectInvalid(a, "smaller than the dilated kernel");

  a = Args{};
  a.input = a.input.to(torch::kHalf);
  a.weight = a.weight.to(torch::kHalf);
  a.bias = a.bias.to(torch::kHalf);
  ExpectInvalid(a, "no float16 convolution kernel on the CPU");

  a = Args{};
  a.input = a.input.to(torch::kInt);
  ExpectInvalid(a, "is not supported; use float32, float64 or bfloat16");

  a = Args{};
  a.weight = a.weight.to(torch::kDouble);
  ExpectInvalid(a, "must share one dtype");

  a = Args{};
  a.settings.mode = ProbeMode::kOrthogonal;
  a.settings.route = GradientRoute::kTap;
  ExpectInvalid(a, "orthogonal probe mode has no tap route");
}

TEST(XConvArgs, ThreeDimensionalCallNeedsFiveDimensionalInput) {
  Args a;
  EXPECT_THAT(std::string(a.Validate(3).message()), HasSubstr("input must have 5 dimensions"));
}

TEST(XConvArgs, ParsesNamesAndRejectsUnknownOnes) {
  EXPECT_EQ(*ParseProbeMode("multichannel"), ProbeMode::kMultiChannel);
  EXPECT_EQ(*ParseProbeMode("Independent"), ProbeMode::kIndependent);
  EXPECT_EQ(*ParseProbeDistribution("rademacher"), ProbeDistribution::kRademacher);
  EXPECT_EQ(*ParseGradientRoute("reconstruct"), GradientRoute::kReconstruct);
  const auto bad = ParseProbeMode("diagonal");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("use 'independent', 'multichannel' or 'orthogonal'"));
  EXPECT_FALSE(ParseProbeDistribution("uniform").ok());
  EXPECT_FALSE(ParseGradientRoute("fast").ok());
}

}  // namespace
}  // namespace xtrain::core
