#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "google/protobuf/message.h"
#include "xtrain/v1/training_service.pb.h"

namespace xtrain::client {

// What xtrainctl prints: the proto's JSON mapping for scripts, text for people.

// The proto's JSON mapping (lowerCamelCase names, 64-bit integers as strings, as protobuf's and
// Python's printers write it; spec files read it back); one line, or indented when `pretty`.
std::string ToJson(const google::protobuf::Message& message, bool pretty);

// "12.50 MiB", "512 B": bytes for people, binary units.
std::string HumanBytes(int64_t bytes);
// "45s", "3m05s", "2h07m": seconds for people; "-" when negative (unknown).
std::string HumanDuration(double seconds);
// "RUNNING": the state's name.
std::string StateName(xtrain::v1::JobState state);

// Rows under a header, columns padded to their widest cell; `right` marks right-aligned columns.
std::string FormatTable(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows,
                        const std::vector<bool>& right = {});

// plan: the plan's figures, the devices it fits, and the per-layer table.
std::string FormatPlan(const xtrain::v1::PlanJobResponse& response);
// get: a one-screen summary of a job.
std::string FormatJob(const xtrain::v1::Job& job);
// list: one row per job.
std::string FormatJobTable(const std::vector<xtrain::v1::Job>& jobs);
// watch, not on a terminal: one line per event.
std::string FormatEvent(const xtrain::v1::WatchJobResponse& response);
// watch's last words: the final state, the failure reason, the final metrics, the weights.
std::string FormatOutcome(const xtrain::v1::Job& job);

// A job's progress as its events tell it, for watch's progress bar.
struct WatchProgress {
  xtrain::v1::JobState state = xtrain::v1::JOB_STATE_UNSPECIFIED;
  std::string reason;                // of the last state change
  int64_t step = 0;
  int64_t total_steps = 0;
  int64_t epoch = 0;
  bool has_loss = false;
  double loss = 0;
  double samples_per_second = 0;
  double step_seconds = 0;           // a moving average of the steps' times (for the ETA)
  int64_t measured_peak_bytes = 0;   // the largest measured so far
  int64_t predicted_peak_bytes = 0;
  std::string metric_name;           // of the last validation
  double metric_value = 0;
  int64_t last_sequence = 0;

  void Update(const xtrain::v1::WatchJobResponse& response);
  // Seconds left at the current pace; negative when unknown.
  double EtaSeconds() const;
};

// One line of at most `width` characters:
// "[=====>    ] 40/100  40%  ETA 12s  loss 1.2345  312 samples/s  peak 9.8 MiB / 10.1 MiB predicted  accuracy 0.85"
// before the first step, the state and its reason.
std::string FormatProgressBar(const WatchProgress& progress, int width);

}  // namespace xtrain::client
