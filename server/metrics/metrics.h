#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "xtrain/v1/training_service.pb.h"

namespace prometheus {
class Exposer;
}

namespace xtrain::server {

// The service's Prometheus metrics (DESIGN.md §3): every family named xtrain_* in base units, with its
// HELP. It owns the registry; the parts that record (scheduler, service, hub) borrow a Metrics* that
// may be null (their unit tests run without one). Label sets stay bounded: job ids label only the
// per-running-job gauges, which RemoveJob drops once a job has stopped (the scheduler waits a grace
// period first, so a last scrape sees the end); counters and histograms carry device, tenant, method,
// code or reason only. Thread-safe; recording takes one short lock, the gRPC path none.
class Metrics {
 public:
  Metrics();
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Everything to expose: the registry and the families read at scrape time (AddCallback).
  std::vector<std::shared_ptr<prometheus::Collectable>> Collectables() const;

  // xtrain_build_info{labels} 1, and xtrain_start_time_seconds (now).
  void SetBuildInfo(const std::map<std::string, std::string>& labels);
  // A family whose one unlabelled value `read` gives at each scrape (a counter or a gauge). For values
  // another part already keeps (the hub's watcher count), so that no second copy goes stale.
  enum class Kind { kCounter, kGauge };
  void AddCallback(const std::string& name, const std::string& help, Kind kind, std::function<double()> read);

  // ---- Jobs, queue, admission (the scheduler).
  // A job of `tenant` entered `to` (from `from`; JOB_STATE_UNSPECIFIED when it is new or loaded). The
  // queue length follows (the jobs in QUEUED).
  void JobStateChanged(const std::string& tenant, xtrain::v1::JobState from, xtrain::v1::JobState to);
  void ObserveQueueWait(double seconds);
  // How long the job that has waited longest so far has been in the queue (0: none waits).
  void SetOldestQueueWait(double seconds);
  void Admitted(const std::string& device);
  // A submit refused by the scheduler; `reason` is one of a fixed few (scheduler.cc names them).
  void SubmitRefused(std::string_view reason);
  // A running job took another plan: "shrink" (the scheduler made room) or "closed_loop" (the worker
  // corrected its own plan after measuring).
  void Replanned(std::string_view reason);
  void Preempted();

  // ---- Devices.
  void AddDevice(const std::string& name, int64_t capacity_bytes);

  // ---- Running jobs (per-job gauges labelled job_id, tenant, device).
  void JobStarted(const std::string& job_id, const std::string& tenant, const std::string& device,
                  int64_t budget_bytes, int64_t predicted_peak_bytes);
  // A step event: its duration and throughput, progress, peaks (the largest measured, predicted, and
  // the planner's relative error between the two), probes and fidelity ratio (when the step carries one).
  void JobStep(const std::string& job_id, const xtrain::v1::StepMetrics& step, int64_t total_steps);
  // The job's budget or prediction changed (a plan message, a re-plan).
  void JobPlanned(const std::string& job_id, int64_t budget_bytes, int64_t predicted_peak_bytes);
  // It no longer runs: it leaves the device sums; its gauges stay until RemoveJob.
  void JobStopped(const std::string& job_id);
  void RemoveJob(const std::string& job_id);
  // Job ids that have per-job series (tests).
  std::vector<std::string> JobsWithSeries() const;

  // ---- Workers (kind: "train" or "plan").
  void WorkerStarted(std::string_view kind);
  // `outcome`: succeeded, cancelled, stopped, job_error, failed (a crash or an error retried or not),
  // planned, plan_failed.
  void WorkerExited(std::string_view kind, std::string_view outcome);
  // A job's attempt retried after its worker failed: "crashed" (no Finished: a signal, an exit) or
  // "error" (it reported an error that a retry may fix).
  void WorkerRestarted(std::string_view reason);

  // ---- Store: one write transaction took `seconds` (a commit of staged changes, the insert of a new job).
  enum class StoreOp { kCommit, kInsert };
  void ObserveStoreWrite(StoreOp op, double seconds);

  // ---- gRPC: one handle per method, made at start; Record is lock-free after a code's first use.
  class RpcMethod {
   public:
    void Record(int code, double seconds);

   private:
    friend class Metrics;
    RpcMethod(Metrics* metrics, std::string service, std::string method);
    Metrics* metrics_;
    const std::string service_;
    const std::string method_;
    prometheus::Histogram* latency_ = nullptr;
    std::array<std::atomic<prometheus::Counter*>, 17> codes_{};  // by grpc::StatusCode 0..16
  };
  // The handle of a fully qualified method ("/pkg.Service/Method"); made on first use (keep it).
  RpcMethod* Method(const std::string& full_name);

 private:
  struct JobSeries;
  prometheus::Counter& CounterOf(prometheus::Family<prometheus::Counter>& family, const prometheus::Labels& labels);
  void UpdateDevicesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void RemoveJobLocked(const std::string& job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  std::shared_ptr<prometheus::Registry> registry_;
  class Callbacks;
  std::shared_ptr<Callbacks> callbacks_;

  prometheus::Family<prometheus::Gauge>& build_info_;
  prometheus::Family<prometheus::Gauge>& start_time_;
  prometheus::Family<prometheus::Gauge>& jobs_;
  prometheus::Family<prometheus::Gauge>& queue_length_;
  prometheus::Family<prometheus::Histogram>& queue_wait_;
  prometheus::Family<prometheus::Gauge>& oldest_wait_;
  prometheus::Family<prometheus::Counter>& admissions_;
  prometheus::Family<prometheus::Counter>& refusals_;
  prometheus::Family<prometheus::Counter>& replans_;
  prometheus::Family<prometheus::Counter>& preemptions_;
  prometheus::Family<prometheus::Gauge>& device_capacity_;
  prometheus::Family<prometheus::Gauge>& device_reserved_;
  prometheus::Family<prometheus::Gauge>& device_planned_;
  prometheus::Family<prometheus::Gauge>& device_measured_;
  prometheus::Family<prometheus::Gauge>& device_jobs_;
  prometheus::Family<prometheus::Histogram>& step_duration_;
  prometheus::Family<prometheus::Counter>& steps_;
  prometheus::Family<prometheus::Gauge>& job_step_;
  prometheus::Family<prometheus::Gauge>& job_progress_;
  prometheus::Family<prometheus::Gauge>& job_samples_per_second_;
  prometheus::Family<prometheus::Gauge>& job_budget_;
  prometheus::Family<prometheus::Gauge>& job_measured_;
  prometheus::Family<prometheus::Gauge>& job_predicted_;
  prometheus::Family<prometheus::Gauge>& job_error_;
  prometheus::Family<prometheus::Gauge>& job_probes_min_;
  prometheus::Family<prometheus::Gauge>& job_probes_mean_;
  prometheus::Family<prometheus::Gauge>& job_fidelity_;
  prometheus::Family<prometheus::Counter>& worker_starts_;
  prometheus::Family<prometheus::Counter>& worker_exits_;
  prometheus::Family<prometheus::Counter>& worker_restarts_;
  prometheus::Family<prometheus::Histogram>& store_write_;
  prometheus::Family<prometheus::Counter>& grpc_requests_;
  prometheus::Family<prometheus::Histogram>& grpc_latency_;
  prometheus::Gauge* queue_length_gauge_ = nullptr;
  prometheus::Histogram* queue_wait_histogram_ = nullptr;
  prometheus::Gauge* oldest_wait_gauge_ = nullptr;
  prometheus::Counter* preemptions_counter_ = nullptr;
  prometheus::Histogram* store_commit_ = nullptr;
  prometheus::Histogram* store_insert_ = nullptr;

  mutable absl::Mutex mutex_;
  struct Device {
    prometheus::Gauge* reserved;
    prometheus::Gauge* planned;
    prometheus::Gauge* measured;
    prometheus::Gauge* jobs;
    prometheus::Histogram* step_duration;
    prometheus::Counter* steps;
  };
  std::map<std::string, Device> devices_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, std::unique_ptr<JobSeries>> job_series_ ABSL_GUARDED_BY(mutex_);
  std::map<std::pair<std::string, int>, prometheus::Gauge*> job_states_ ABSL_GUARDED_BY(mutex_);
  int queued_ ABSL_GUARDED_BY(mutex_) = 0;
  absl::flat_hash_map<std::string, std::unique_ptr<RpcMethod>> methods_ ABSL_GUARDED_BY(mutex_);
};

// The /metrics HTTP endpoint on its own port (prometheus-cpp's civetweb server).
class MetricsEndpoint {
 public:
  // Serves `metrics` at http://<address>/metrics ("HOST:PORT"; port 0 picks a free port).
  // Unavailable, naming the address, when it cannot bind.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(const std::string& address, const Metrics& metrics);
  ~MetricsEndpoint();
  int port() const { return port_; }

 private:
  MetricsEndpoint() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
  int port_ = 0;
};

}  // namespace xtrain::server
