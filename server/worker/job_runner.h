#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "core/train/trainer.h"
#include "core/train/training_plan.h"
#include "xtrain/v1/training_service.pb.h"
#include "xtrain/worker/v1/worker.pb.h"

namespace xtrain::server {

// The plan a job was made with, as the service's API shows it.
xtrain::v1::Plan PlanMessage(const core::TrainingPlan& plan);
// A PlanChoice (from the scheduler) as the trainer's plain-values spec.
absl::StatusOr<core::PlanSpec> PlanSpecFrom(const xtrain::worker::v1::PlanChoice& choice);

// Runs one planning or training call of xtrain-worker, talking to the server over `fd`. Each returns
// the process's exit code after sending a Finished message (or a PlanResult).
class JobRunner {
 public:
  explicit JobRunner(int fd) : fd_(fd) {}

  // Plans the job and sends a PlanResult with the chain the scheduler packs by, or a Finished with
  // the reason it cannot be planned.
  int Plan(const xtrain::worker::v1::PlanCall& call);
  // Trains the job under its budget, obeying Control messages between steps, resuming from the newest
  // loadable checkpoint in checkpoint_dir; sends events, then Finished.
  int Train(const xtrain::worker::v1::TrainCall& call);

 private:
  absl::Status Send(const xtrain::worker::v1::WorkerMessage& message);
  int Finish(const absl::Status& status, xtrain::worker::v1::Finished finished = {});
  // Reads Control messages until the stream ends (then cancels: the server is gone).
  void ReadControls();
  // Acts on control requests between steps (on the training thread).
  absl::Status ServeControls(core::Trainer& trainer);
  absl::Status Checkpoint(core::Trainer& trainer, const std::string& reason);

  const int fd_;
  std::mutex write_mutex_;  // guards writes to fd_ (training thread and reader thread)
  std::atomic<bool> cancel_{false};      // set: Run stops before its next step
  std::atomic<bool> user_cancel_{false};
  std::atomic<bool> stop_{false};
  std::atomic<bool> checkpoint_{false};
  std::mutex control_mutex_;
  std::optional<xtrain::worker::v1::PlanChoice> replan_;  // guarded by control_mutex_
  std::string stop_reason_;                               // guarded by control_mutex_
  std::string checkpoint_reason_;                         // guarded by control_mutex_
};

}  // namespace xtrain::server
