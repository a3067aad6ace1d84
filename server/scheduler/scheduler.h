#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/metrics/metrics.h"
#include "server/scheduler/placement.h"
#include "server/store/job_store.h"
#include "server/supervisor/supervisor.h"
#include "xtrain/v1/training_service.pb.h"
#include "xtrain/worker/v1/worker.pb.h"

namespace xtrain::server {

struct SchedulerOptions {
  std::vector<DeviceState> devices;       // where jobs run; at least one
  std::string data_dir;                   // checkpoints, weights, plans: <data_dir>/jobs/<id>/
  std::vector<std::string> data_roots;    // dataset and weight paths must resolve inside one
  int max_attempts = 3;                   // worker starts per job before it fails for good
  int max_concurrent_plans = 2;           // planning workers at once; more calls wait in line
  size_t plan_cache_entries = 256;        // PlanJob answers kept by spec
  double planner_margin = 0.03;           // the planner's margin (core's PlannerOptions::margin)
  double starvation_seconds = 600;        // see PlacementOptions
  double cancel_grace_seconds = 30;       // a cancelled worker that has not stopped by then is killed
  double default_checkpoint_seconds = 180;  // CheckpointSpec.every_seconds = 0 means this
  int threads_per_job = 0;                // intra-op threads of a training worker; 0 = cores / slots
  // Per-tenant quotas checked at submit (0: no limit): queued jobs, and the memory budgets of its
  // queued and running jobs together (the new one's included).
  int quota_queued_jobs = 0;
  int64_t quota_budget_bytes = 0;
  // Where the scheduler records its metrics (borrowed; outlives the scheduler); null: none.
  Metrics* metrics = nullptr;
  // A job's per-job metric series stay this long after it stops running (a last scrape sees its end).
  double finished_series_seconds = 120;
  // Several replicas on one shared store (JobStore::Shared(), DESIGN.md §3 "Scale-out"): this replica's
  // name, empty when it is the only server. It claims queued jobs while it has free slots, renews its
  // lease every lease_seconds / 3, and re-queues the jobs of replicas whose lease ran out.
  std::string replica_id;
  double lease_seconds = 10;
};

// Receives committed changes: the job as it is now and the events just appended to its log. Called on
// the scheduler's thread after the store has the change (DESIGN.md §3: written, then published).
using Publisher = std::function<void(const xtrain::v1::Job& job, const std::vector<xtrain::v1::JobEvent>& events)>;

// The service's control loop (DESIGN.md §3): plans jobs through planning workers (with a cache), keeps
// the queue, places jobs on devices with Place(), starts, shrinks, stops and retries training workers,
// turns their messages into job state and events, and writes every change to the store before it
// publishes it. Everything mutable runs on `io`'s thread; the request methods may be called from any
// thread (they post to it) and call `done` on it. Reads (GetJob, ListJobs) are thread-safe snapshots.
class Scheduler {
 public:
  Scheduler(boost::asio::io_context& io, JobStore& store, Supervisor& supervisor, SchedulerOptions options,
            Publisher publisher);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Loads the store: jobs that were running when the server stopped go back to the queue to resume
  // from their checkpoints (no attempt counted). Call once, on io's thread, before serving.
  absl::Status Recover();

  template <typename T>
  using Done = std::function<void(absl::StatusOr<T>)>;

  // A dry run of `spec` for `tenant` (PlanJob).
  void Plan(std::string tenant, xtrain::v1::JobSpec spec, Done<xtrain::v1::PlanJobResponse> done);
  // Plans and queues a job (SubmitJob); a repeated client_request_id returns the first job.
  void Submit(std::string tenant, xtrain::v1::SubmitJobRequest request, Done<xtrain::v1::SubmitJobResponse> done);
  // Cancels a queued job at once, a running one within a step. FailedPrecondition when it has ended.
  void Cancel(std::string tenant, std::string job_id, Done<xtrain::v1::Job> done);

  // A job as last committed, with its live queue position and waiting reason. NotFound for an unknown
  // id or another tenant's job (empty tenant: any).
  absl::StatusOr<xtrain::v1::Job> GetJob(const std::string& tenant, const std::string& job_id) const;
  // The job as last committed, shared rather than copied (no queue position): NotFound as GetJob.
  absl::StatusOr<std::shared_ptr<const xtrain::v1::Job>> JobSnapshot(const std::string& tenant,
                                                                     const std::string& job_id) const;
  // The job as one `jobs` element of a ListJobsResponse's bytes, which are also a whole
  // GetJobResponse's: shared with its snapshot (serialized once per change, not once per call); a
  // queued job's carries its live queue position and waiting reason. NotFound as GetJob.
  absl::StatusOr<std::shared_ptr<const std::string>> JobBytes(const std::string& tenant,
                                                              const std::string& job_id) const;
  // A page of ListJobs, serialized: each entry as JobBytes's.
  struct ListedJobs {
    std::vector<std::shared_ptr<const std::string>> entries;
    std::string next_page_token;  // empty on the last page
    // The bytes after the entries (the page token's field, if any): the entries and these are the
    // whole ListJobsResponse.
    std::string Tail() const;
  };
  absl::StatusOr<ListedJobs> ListJobs(const std::string& tenant, const xtrain::v1::ListJobsRequest& request) const;

  // Stops admitting, asks every training worker to checkpoint and exit, and calls `done` once all have
  // exited or `grace_seconds` passed (the rest are killed). Their jobs stay queued for the next start.
  void Shutdown(double grace_seconds, std::function<void()> done);

  // What the scheduler is doing, for tests and metrics.
  struct Stats {
    int queued = 0;
    int running = 0;
    int planning = 0;           // planning workers alive
    int64_t plan_cache_hits = 0;
    int64_t plan_cache_misses = 0;
  };
  Stats stats() const;

 private:
  struct JobEntry;
  struct PlanCall;
  using PlanDone = std::function<void(absl::StatusOr<std::shared_ptr<const xtrain::worker::v1::PlanResult>>)>;

  // Spec resolution: budget, device, paths under the data roots, uploaded weights.
  absl::StatusOr<xtrain::worker::v1::JobContext> Resolve(const std::string& tenant,
                                                         const xtrain::v1::JobSpec& spec) const;
  // The plan of `context` from the cache or a planning worker; `done` on io's thread.
  void PlanContext(const xtrain::worker::v1::JobContext& context, PlanDone done);
  void StartPlanWorkers();
  void OnPlanFinished(const std::string& key, absl::StatusOr<std::shared_ptr<const xtrain::worker::v1::PlanResult>> result);
  absl::StatusOr<xtrain::v1::PlanJobResponse> PlanResponse(const xtrain::worker::v1::JobContext& context,
                                                           const xtrain::worker::v1::PlanResult& result,
                                                           bool cached) const;
  // ResourceExhausted when `tenant` is at its queued-jobs quota, or when `budget` (> 0) more would take
  // its queued and running jobs' budgets past its quota (io thread).
  absl::Status CheckQuotas(const std::string& tenant, int64_t budget) const;
  void SubmitPlanned(const std::string& tenant, const xtrain::v1::SubmitJobRequest& request,
                     const xtrain::worker::v1::JobContext& context,
                     std::shared_ptr<const xtrain::worker::v1::PlanResult> result,
                     Done<xtrain::v1::SubmitJobResponse> done);

  // Scale-out (replica_id set): jobs other replicas run, or that wait to be claimed, are mirrored
  // here (read snapshots and their events published to this replica's watchers) from the store's
  // notifications; this replica runs only the jobs it claimed.
  bool Shared() const { return !options_.replica_id.empty(); }
  // Resolves a stored unfinished job for scheduling here: context, plan chain (plan.pb), budgets; a
  // job that was running goes back to the queue, `why`. Fails it when it cannot resume.
  void Resume(JobEntry& entry, const std::string& why);
  void Mirror(const xtrain::v1::Job& job);
  void OnStoreChange(const JobChange& change);
  // A job run elsewhere (or just claimed) as the store has it: its read snapshot, and the events this
  // replica has not published yet published to its watchers.
  void RefreshMirror(const xtrain::v1::Job& job);
  void ClaimPass();
  void Adopt(const xtrain::v1::Job& job);
  // A job this replica ran that the store gave to another (its lease ran out): stop its worker, mirror it.
  void LoseJob(const std::string& job_id, const std::string& why);
  void LeaseTick();
  // The cancel of a job of this replica (Cancel, or a RequestCancel from another replica).
  void CancelEntry(JobEntry& entry);

  // Queue and placement.
  void RequestPass();
  void Pass();
  void Admit(JobEntry& entry, const std::string& device, int point);
  void Shrink(JobEntry& entry, int point, const std::string& reason);
  void Preempt(JobEntry& entry, const std::string& reason);
  void OnWorkerMessage(const std::string& job_id, const xtrain::worker::v1::WorkerMessage& message);
  void OnWorkerExit(const std::string& job_id, const WorkerExit& exit);
  void ScheduleCheckpointTimer(JobEntry& entry);

  // State changes: each appends events and stages the job for the next commit.
  void ChangeState(JobEntry& entry, xtrain::v1::JobState to, const std::string& reason);
  xtrain::v1::JobEvent& AddEvent(JobEntry& entry);
  void Stage(JobEntry& entry);
  // Commits staged writes in one transaction, then publishes them and refreshes the read snapshots.
  void Flush();
  void RefreshWaiting(const PlacementResult& result);

  std::string JobDir(const std::string& job_id) const;
  xtrain::worker::v1::PlanChoice ChoiceAt(const JobEntry& entry, int point) const;
  xtrain::v1::Plan PlanAt(const JobEntry& entry, int point) const;
  JobDemand DemandOf(const JobEntry& entry) const;
  void FinishJob(JobEntry& entry, xtrain::v1::JobState state, const std::string& reason);
  // `status`, counted as a submit refused for `reason` (one of a fixed few: the metric's label).
  absl::Status Refused(const char* reason, absl::Status status) const;
  // Drops the job's per-job metric series once `finished_series_seconds` have passed (io thread).
  void RetireSeries(const std::string& job_id);

  boost::asio::io_context& io_;
  JobStore& store_;
  Supervisor& supervisor_;
  const SchedulerOptions options_;
  Publisher publisher_;

  // io thread state.
  std::map<std::string, std::unique_ptr<JobEntry>> jobs_;
  std::map<std::pair<std::string, std::string>, std::string> request_ids_;  // (tenant, request id) -> job
  std::map<std::pair<std::string, std::string>, std::vector<Done<xtrain::v1::SubmitJobResponse>>>
      submits_in_flight_;
  int64_t next_order_ = 1;
  std::map<std::string, std::shared_ptr<const xtrain::worker::v1::PlanResult>> plan_cache_;
  std::deque<std::string> plan_cache_order_;  // oldest first, for eviction
  std::map<std::string, std::unique_ptr<PlanCall>> plan_calls_;  // by cache key: in line or running
  std::deque<std::string> plan_queue_;
  int plans_running_ = 0;
  std::vector<std::string> staged_;  // job ids with uncommitted changes, in order
  bool flush_posted_ = false;
  bool pass_posted_ = false;
  bool shutting_down_ = false;
  std::function<void()> shutdown_done_;
  std::unique_ptr<boost::asio::steady_timer> shutdown_timer_;
  std::unique_ptr<boost::asio::steady_timer> aging_timer_;
  Metrics* const metrics_;
  // Scale-out: jobs mirrored from the store (not run here), with their place in ListJobs' order and
  // the last event published to this replica's watchers.
  struct Mirrored {
    int64_t order = 0;
    int64_t last_sequence = 0;
  };
  std::map<std::string, Mirrored> mirrors_;
  std::unique_ptr<boost::asio::steady_timer> lease_timer_;
  // Jobs that stopped running, waiting for their per-job metric series to be removed.
  std::map<std::string, std::unique_ptr<boost::asio::steady_timer>> retiring_;

  // Replaces a job's read snapshot (io thread; copies the job before taking the lock).
  void SetSnapshot(const xtrain::v1::Job& job, int64_t order);

  // Read snapshots for other threads: immutable jobs shared with the readers, so a read holds the lock
  // for a lookup and copies the job after releasing it.
  mutable absl::Mutex snapshot_mutex_;
  struct Snapshot {
    std::shared_ptr<const xtrain::v1::Job> job;
    std::shared_ptr<const std::string> entry;  // the job as a ListJobsResponse `jobs` element
    int64_t order = 0;
  };
  // A job's snapshot and, while it waits in the queue, its live position and reason.
  struct Found {
    Snapshot snapshot;
    std::optional<WaitInfo> wait;
  };
  // NotFound for an unknown job or another tenant's ("" reads all tenants).
  absl::StatusOr<Found> Find(const std::string& tenant, const std::string& job_id) const;
  std::optional<WaitInfo> WaitOfLocked(const xtrain::v1::Job& job) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(snapshot_mutex_);
  // `job` with `wait`'s position and reason filled in.
  static xtrain::v1::Job Live(const xtrain::v1::Job& job, const std::optional<WaitInfo>& wait);
  // The snapshot's entry (JobBytes), or for a waiting job a new one with its `wait`.
  static std::shared_ptr<const std::string> EntryOf(const Snapshot& snapshot, const std::optional<WaitInfo>& wait);
  absl::flat_hash_map<std::string, Snapshot> snapshots_ ABSL_GUARDED_BY(snapshot_mutex_);
  // The same snapshots newest first (by submission order), for ListJobs' pages.
  std::map<int64_t, Snapshot, std::greater<>> by_order_ ABSL_GUARDED_BY(snapshot_mutex_);
  std::map<std::string, WaitInfo> waiting_ ABSL_GUARDED_BY(snapshot_mutex_);
  Stats stats_ ABSL_GUARDED_BY(snapshot_mutex_);
};

}  // namespace xtrain::server
