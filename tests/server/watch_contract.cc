#include "tests/server/watch_contract.h"

#include <algorithm>

namespace xtrain::server::testing {
namespace v1 = ::xtrain::v1;

::testing::AssertionResult FollowsWatchContract(const std::vector<v1::WatchJobResponse>& responses,
                                                int64_t from_sequence, int64_t backlog_through,
                                                const std::vector<bool>& steps) {
  const int64_t log_end = static_cast<int64_t>(steps.size()) - 1;
  int64_t previous = std::max<int64_t>(from_sequence, 1) - 1;
  for (size_t i = 0; i < responses.size(); ++i) {
    const int64_t sequence = responses[i].event().sequence();
    const int64_t coalesced = responses[i].coalesced();
    if (sequence <= previous) {
      return ::testing::AssertionFailure() << "response " << i << ": sequence " << sequence << " after " << previous
                                           << " (a repeat or out of order)";
    }
    if (coalesced < 0 || sequence != previous + 1 + coalesced) {
      return ::testing::AssertionFailure() << "response " << i << ": sequence " << sequence << " after " << previous
                                           << " with coalesced " << coalesced << " (a gap it does not report)";
    }
    if (coalesced > 0 && previous + 1 <= backlog_through) {
      return ::testing::AssertionFailure() << "response " << i << ": sequences " << previous + 1 << " to "
                                           << sequence - 1 << " were skipped, but the backlog through "
                                           << backlog_through << " is replayed whole";
    }
    if (!steps.empty()) {
      if (sequence > log_end) {
        return ::testing::AssertionFailure() << "response " << i << ": sequence " << sequence
                                             << " is past the log's end, " << log_end;
      }
      for (int64_t skipped = previous + 1; skipped < sequence; ++skipped) {
        if (!steps[skipped]) {
          return ::testing::AssertionFailure() << "response " << i << ": sequence " << skipped
                                               << " (not a step event) was skipped";
        }
      }
      if (responses[i].event().has_step() != steps[sequence]) {
        return ::testing::AssertionFailure() << "response " << i << ": sequence " << sequence
                                             << " is not the log's kind of event";
      }
    }
    previous = sequence;
  }
  if (!steps.empty() && previous != log_end) {
    return ::testing::AssertionFailure() << "the stream ends at sequence " << previous << ", before the log's last, "
                                         << log_end << " (the final event is missing)";
  }
  return ::testing::AssertionSuccess();
}

std::vector<bool> StepsOf(const std::vector<v1::WatchJobResponse>& log) {
  std::vector<bool> steps(1, false);
  for (const v1::WatchJobResponse& response : log) {
    const int64_t sequence = response.event().sequence();
    if (sequence >= static_cast<int64_t>(steps.size())) steps.resize(sequence + 1, false);
    steps[sequence] = response.event().has_step();
  }
  return steps;
}

std::vector<v1::JobEvent> EventsOf(const std::vector<v1::WatchJobResponse>& responses) {
  std::vector<v1::JobEvent> events;
  events.reserve(responses.size());
  for (const v1::WatchJobResponse& response : responses) events.push_back(response.event());
  return events;
}

}  // namespace xtrain::server::testing
