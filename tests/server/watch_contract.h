#pragma once

#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

#include "xtrain/v1/training_service.pb.h"

namespace xtrain::server::testing {

// Whether one WatchJob stream, read from `from_sequence` (0: the whole log), keeps WatchJob's contract:
// no repeat, no reordering, and each event's sequence is the previous one's + 1 + its response's
// `coalesced` (a watcher behind on live events may skip steps, and says how many), so an unreported gap
// fails; the backlog (events through `backlog_through`, which existed when the watch connected) arrives
// whole. Given `steps`, the job's whole log by sequence (true: a step event; index 0 unused), also:
// only step events are skipped, each event received has its kind, and the stream reaches the last one.
::testing::AssertionResult FollowsWatchContract(const std::vector<xtrain::v1::WatchJobResponse>& responses,
                                                int64_t from_sequence, int64_t backlog_through,
                                                const std::vector<bool>& steps = {});

// FollowsWatchContract's `steps` of a whole log (a watch from 0 of an ended job, checked whole).
std::vector<bool> StepsOf(const std::vector<xtrain::v1::WatchJobResponse>& log);

// The events of a stream's responses.
std::vector<xtrain::v1::JobEvent> EventsOf(const std::vector<xtrain::v1::WatchJobResponse>& responses);

}  // namespace xtrain::server::testing
