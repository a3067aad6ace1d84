#include "core/util/torch_guard.h"

#include <stdexcept>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/util/status_macros.h"

namespace xtrain::core {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(TorchGuard, PassesTheBodysResultThrough) {
  absl::StatusOr<int> value = GuardTorch("context", []() -> absl::StatusOr<int> { return 7; });
  ASSERT_TRUE(value.ok());
  EXPECT_EQ(*value, 7);
  absl::Status refused = GuardTorch("context", [] { return absl::NotFoundError("gone"); });
  EXPECT_EQ(refused, absl::NotFoundError("gone"));
}

TEST(TorchGuard, TurnsATorchErrorIntoAStatusNamingTheContext) {
  absl::StatusOr<torch::Tensor> sum = GuardTorch("adding", []() -> absl::StatusOr<torch::Tensor> {
    return torch::ones({2}) + torch::ones({3});
  });
  ASSERT_FALSE(sum.ok());
  EXPECT_EQ(sum.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(sum.status().message()), StartsWith("adding: "));
  EXPECT_THAT(std::string(sum.status().message()), HasSubstr("must match the size"));
  // LibTorch's backtrace stays out of the message.
  EXPECT_THAT(std::string(sum.status().message()), ::testing::Not(HasSubstr("Exception raised from")));
}

TEST(TorchGuard, UsesTheGivenCode) {
  absl::Status status = GuardTorch(
      "reading x", []() -> absl::Status {
        TORCH_CHECK(false, "bad file");
        return absl::OkStatus();
      }, absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status, absl::InvalidArgumentError("reading x: bad file"));
}

TEST(TorchGuard, EvaluatesACallableContextOnlyWhenSomethingWasThrown) {
  int step = 0;
  int calls = 0;
  auto context = [&] {
    ++calls;
    return std::string("at step ") + std::to_string(step);
  };
  EXPECT_TRUE(GuardTorch(context, [&] {
                step = 1;
                return absl::OkStatus();
              }).ok());
  EXPECT_EQ(calls, 0);
  absl::Status status = GuardTorch(context, [&]() -> absl::Status {
    step = 2;
    TORCH_CHECK(false, "failed");
    return absl::OkStatus();
  });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(status, absl::InternalError("at step 2: failed"));
}

TEST(TorchGuard, LeavesOtherExceptionsToTheCaller) {
  EXPECT_THROW((void)GuardTorch("context", []() -> absl::Status { throw std::runtime_error("not LibTorch's"); }),
               std::runtime_error);
}

TEST(TorchGuard, GuardExceptionsCatchesAnyStdException) {
  EXPECT_EQ(GuardExceptions("running", []() -> absl::Status { throw std::runtime_error("boom"); }),
            absl::InternalError("running: boom"));
  EXPECT_EQ(GuardExceptions("running",
                            []() -> absl::Status {
                              TORCH_CHECK(false, "torch boom");
                              return absl::OkStatus();
                            }),
            absl::InternalError("running: torch boom"));
}

absl::Status Fails() { return absl::FailedPreconditionError("no"); }
absl::StatusOr<int> Seven() { return 7; }
absl::StatusOr<int> Missing() { return absl::NotFoundError("missing"); }

absl::StatusOr<int> AddSeven(bool fail_first, bool missing, int* reached) {
  if (fail_first) XTRAIN_RETURN_IF_ERROR(Fails());
  XTRAIN_RETURN_IF_ERROR(absl::OkStatus());
  XTRAIN_ASSIGN_OR_RETURN(int seven, missing ? Missing() : Seven());
  *reached = seven;
  int again = 0;
  XTRAIN_ASSIGN_OR_RETURN(again, Seven());
  return seven + again;
}

TEST(StatusMacros, ReturnEarlyWithTheFailureAndAssignOtherwise) {
  int reached = 0;
  EXPECT_EQ(AddSeven(/*fail_first=*/true, false, &reached).status(), absl::FailedPreconditionError("no"));
  EXPECT_EQ(reached, 0);
  EXPECT_EQ(AddSeven(false, /*missing=*/true, &reached).status(), absl::NotFoundError("missing"));
  EXPECT_EQ(reached, 0);
  absl::StatusOr<int> sum = AddSeven(false, false, &reached);
  ASSERT_TRUE(sum.ok());
  EXPECT_EQ(*sum, 14);
  EXPECT_EQ(reached, 7);
}

}  // namespace
}  // namespace xtrain::core
