// FollowsWatchContract, the check the service and client tests apply to their watch streams: it passes a
// stream whose gaps are all reported live step events, and fails each way a stream can break it.
#include "tests/server/watch_contract.h"

#include <string>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace xtrain::server::testing {
namespace {
namespace v1 = ::xtrain::v1;
using ::testing::HasSubstr;

// 1 QUEUED -> RUNNING, 2..5 steps, 6 a checkpoint, 7..8 steps, 9 RUNNING -> SUCCEEDED.
const std::vector<bool> kSteps = {false, false, true, true, true, true, false, true, true, false};

v1::WatchJobResponse Response(int64_t sequence, int64_t coalesced = 0) {
  v1::WatchJobResponse response;
  response.mutable_event()->set_sequence(sequence);
  if (kSteps[sequence]) {
    response.mutable_event()->mutable_step()->set_step(sequence);
  } else if (sequence == 6) {
    response.mutable_event()->mutable_checkpoint()->set_step(4);
  } else {
    response.mutable_event()->mutable_state()->set_to_state(sequence == 1 ? v1::RUNNING : v1::SUCCEEDED);
  }
  response.set_coalesced(coalesced);
  return response;
}

std::vector<v1::WatchJobResponse> Whole() {
  std::vector<v1::WatchJobResponse> responses;
  for (int64_t sequence = 1; sequence <= 9; ++sequence) responses.push_back(Response(sequence));
  return responses;
}

// A watcher that fell behind twice: 3 and 4 skipped before 5, 7 before 8.
std::vector<v1::WatchJobResponse> Coalesced() {
  return {Response(1), Response(2), Response(5, 2), Response(6), Response(8, 1), Response(9)};
}

TEST(WatchContract, WholeLogAndReportedGapsOfLiveStepsPass) {
  EXPECT_TRUE(FollowsWatchContract(Whole(), 0, 9, kSteps));
  EXPECT_TRUE(FollowsWatchContract(Whole(), 0, 9));
  EXPECT_TRUE(FollowsWatchContract(Coalesced(), 0, 1, kSteps));
  EXPECT_TRUE(FollowsWatchContract(Coalesced(), 0, 2));
  // Skipped steps reported on the next non-step event; a watch from the middle.
  EXPECT_TRUE(FollowsWatchContract({Response(1), Response(2), Response(6, 3), Response(7), Response(8), Response(9)},
                                   0, 2, kSteps));
  EXPECT_TRUE(FollowsWatchContract({Response(4), Response(5), Response(6), Response(8, 1), Response(9)}, 4, 6, kSteps));
  EXPECT_EQ(StepsOf(Whole()), kSteps);
}

TEST(WatchContract, EachBreachFails) {
  std::vector<std::pair<std::string, std::vector<v1::WatchJobResponse>>> breaches;
  std::vector<v1::WatchJobResponse> dropped = Whole();
  dropped.erase(dropped.begin() + 4);  // 5, a step, gone without a count
  breaches.emplace_back("gap", dropped);
  std::vector<v1::WatchJobResponse> repeated = Coalesced();
  repeated.insert(repeated.begin() + 2, Response(2));
  breaches.emplace_back("repeat", repeated);
  std::vector<v1::WatchJobResponse> reordered = Whole();  // 6 claims 5 was skipped, then 5 comes
  std::swap(reordered[4], reordered[5]);
  reordered[4].set_coalesced(1);
  breaches.emplace_back("out of order", reordered);
  std::vector<v1::WatchJobResponse> miscounted = Coalesced();
  miscounted[2].set_coalesced(3);
  breaches.emplace_back("gap", miscounted);
  for (const auto& [why, responses] : breaches) {
    const ::testing::AssertionResult result = FollowsWatchContract(responses, 0, 1);
    EXPECT_FALSE(result) << why;
    EXPECT_THAT(result.message(), HasSubstr(why));
  }
  // Steps of the backlog (through 4) skipped.
  EXPECT_THAT(FollowsWatchContract(Coalesced(), 0, 4).message(), HasSubstr("backlog through 4"));
  // The checkpoint skipped, though counted.
  const std::vector<v1::WatchJobResponse> checkpoint_skipped = {Response(1), Response(2), Response(5, 2),
                                                                 Response(8, 2), Response(9)};
  EXPECT_THAT(FollowsWatchContract(checkpoint_skipped, 0, 1, kSteps).message(),
              HasSubstr("sequence 6 (not a step event) was skipped"));
  // The final event missing.
  std::vector<v1::WatchJobResponse> unfinished = Coalesced();
  unfinished.pop_back();
  EXPECT_THAT(FollowsWatchContract(unfinished, 0, 1, kSteps).message(), HasSubstr("final event is missing"));
  // An event of another kind than the log's at its sequence.
  std::vector<v1::WatchJobResponse> other = Whole();
  other[2].mutable_event()->mutable_checkpoint()->set_step(2);
  EXPECT_THAT(FollowsWatchContract(other, 0, 9, kSteps).message(), HasSubstr("not the log's kind"));
}

}  // namespace
}  // namespace xtrain::server::testing
