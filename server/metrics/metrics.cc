#include "server/metrics/metrics.h"

#include <algorithm>
#include <chrono>
#include <exception>

#include <prometheus/exposer.h>

#include "absl/strings/str_cat.h"
#include "server/common/mutex.h"

namespace xtrain::server {
namespace v1 = ::xtrain::v1;

namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

// Bucket bounds in seconds.
const Histogram::BucketBoundaries kQueueWaitBuckets = {0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200};
const Histogram::BucketBoundaries kStepBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                  1,     2.5,    5,     10,   30,    60};
const Histogram::BucketBoundaries kStoreBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                   0.01,   0.025,   0.05,   0.1,   0.25,   1};
const Histogram::BucketBoundaries kRpcBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                 0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30,    60};

// grpc::StatusCode names, by value (the metrics library does not link gRPC).
const char* const kCodeNames[17] = {"OK",
                                    "CANCELLED",
                                    "UNKNOWN",
                                    "INVALID_ARGUMENT",
                                    "DEADLINE_EXCEEDED",
                                    "NOT_FOUND",
                                    "ALREADY_EXISTS",
                                    "PERMISSION_DENIED",
                                    "RESOURCE_EXHAUSTED",
                                    "FAILED_PRECONDITION",
                                    "ABORTED",
                                    "OUT_OF_RANGE",
                                    "UNIMPLEMENTED",
                                    "INTERNAL",
                                    "UNAVAILABLE",
                                    "DATA_LOSS",
                                    "UNAUTHENTICATED"};

std::string StateLabel(v1::JobState state) {
  std::string name = v1::JobState_Name(state);
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  return name;
}

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

// Families whose single value is read when Prometheus scrapes.
class Metrics::Callbacks : public prometheus::Collectable {
 public:
  void Add(prometheus::MetricFamily family, std::function<double()> read) {
    MutexLock lock(&mutex_);
    entries_.push_back({std::move(family), std::move(read)});
  }
  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> families;
    MutexLock lock(&mutex_);
    for (const Entry& entry : entries_) {
      prometheus::MetricFamily family = entry.family;
      prometheus::ClientMetric metric;
      const double value = entry.read();
      if (family.type == prometheus::MetricType::Counter) {
        metric.counter.value = value;
      } else {
        metric.gauge.value = value;
      }
      family.metric.push_back(std::move(metric));
      families.push_back(std::move(family));
    }
    return families;
  }

 private:
  struct Entry {
    prometheus::MetricFamily family;
    std::function<double()> read;
  };
  mutable absl::Mutex mutex_;
  std::vector<Entry> entries_ ABSL_GUARDED_BY(mutex_);
};

struct Metrics::JobSeries {
  std::string tenant;
  std::string device;
  bool running = false;
  int64_t budget = 0;
  int64_t predicted = 0;
  int64_t measured = 0;  // the largest step peak of this run
  prometheus::Gauge* step = nullptr;
  prometheus::Gauge* progress = nullptr;
  prometheus::Gauge* samples_per_second = nullptr;
  prometheus::Gauge* budget_bytes = nullptr;
  prometheus::Gauge* measured_bytes = nullptr;
  prometheus::Gauge* predicted_bytes = nullptr;
  prometheus::Gauge* error = nullptr;
  prometheus::Gauge* probes_min = nullptr;
  prometheus::Gauge* probes_mean = nullptr;
  prometheus::Gauge* fidelity = nullptr;
};

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      callbacks_(std::make_shared<Callbacks>()),
      build_info_(BuildGauge()
                      .Name("xtrain_build_info")
                      .Help("Always 1; the labels say which xtrain-server build is running.")
                      .Register(*registry_)),
      start_time_(BuildGauge()
                      .Name("xtrain_start_time_seconds")
                      .Help("When this xtrain-server process started, in seconds since the Unix epoch.")
                      .Register(*registry_)),
      jobs_(BuildGauge()
                .Name("xtrain_jobs")
                .Help("Jobs in the store by state and tenant.")
                .Register(*registry_)),
      queue_length_(BuildGauge()
                        .Name("xtrain_queue_length")
                        .Help("Jobs waiting in the queue for a device.")
                        .Register(*registry_)),
      queue_wait_(BuildHistogram()
                      .Name("xtrain_queue_wait_seconds")
                      .Help("How long a job waited in the queue before it was admitted onto a device.")
                      .Register(*registry_)),
      oldest_wait_(BuildGauge()
                       .Name("xtrain_queue_oldest_wait_seconds")
                       .Help("How long the longest-waiting queued job has waited so far (0: the queue is empty).")
                       .Register(*registry_)),
      admissions_(BuildCounter()
                      .Name("xtrain_admissions_total")
                      .Help("Jobs admitted onto a device (a worker started for them), by device.")
                      .Register(*registry_)),
      refusals_(BuildCounter()
                    .Name("xtrain_submit_refusals_total")
                    .Help("Submits the scheduler refused, by reason (quota, no plan fits, invalid spec, ...).")
                    .Register(*registry_)),
      replans_(BuildCounter()
                   .Name("xtrain_replans_total")
                   .Help("Running jobs that took another plan, by reason: shrink (room for another job) or "
                         "closed_loop (the worker corrected its plan after measuring).")
                   .Register(*registry_)),
      preemptions_(BuildCounter()
                       .Name("xtrain_preemptions_total")
                       .Help("Running jobs stopped and queued again to make room for a higher priority.")
                       .Register(*registry_)),
      device_capacity_(BuildGauge()
                           .Name("xtrain_device_capacity_bytes")
                           .Help("Memory of a device that jobs may use.")
                           .Register(*registry_)),
      device_reserved_(BuildGauge()
                           .Name("xtrain_device_reserved_bytes")
                           .Help("Sum of the budgets reserved by the jobs running on a device.")
                           .Register(*registry_)),
      device_planned_(BuildGauge()
                          .Name("xtrain_device_planned_bytes")
                          .Help("Sum of the predicted peaks of the plans running on a device.")
                          .Register(*registry_)),
      device_measured_(BuildGauge()
                           .Name("xtrain_device_measured_bytes")
                           .Help("Sum of the measured step peaks of the jobs running on a device.")
                           .Register(*registry_)),
      device_jobs_(BuildGauge()
                       .Name("xtrain_device_jobs")
                       .Help("Jobs running on a device.")
                       .Register(*registry_)),
      step_duration_(BuildHistogram()
                         .Name("xtrain_step_duration_seconds")
                         .Help("Duration of one training step as its worker reports it, by device.")
                         .Register(*registry_)),
      steps_(BuildCounter()
                 .Name("xtrain_steps_total")
                 .Help("Training steps reported by the workers, by device.")
                 .Register(*registry_)),
      job_step_(BuildGauge()
                    .Name("xtrain_job_step")
                    .Help("The last step a running job reported.")
                    .Register(*registry_)),
      job_progress_(BuildGauge()
                        .Name("xtrain_job_progress_ratio")
                        .Help("A running job's step over its total steps (0 to 1).")
                        .Register(*registry_)),
      job_samples_per_second_(BuildGauge()
                                  .Name("xtrain_job_samples_per_second")
                                  .Help("A running job's training throughput at its last step.")
                                  .Register(*registry_)),
      job_budget_(BuildGauge()
                      .Name("xtrain_job_budget_bytes")
                      .Help("The memory budget reserved for a running job (its plan's budget).")
                      .Register(*registry_)),
      job_measured_(BuildGauge()
                        .Name("xtrain_job_measured_peak_bytes")
                        .Help("The largest measured step peak of a running job's current run.")
                        .Register(*registry_)),
      job_predicted_(BuildGauge()
                         .Name("xtrain_job_predicted_peak_bytes")
                         .Help("The peak a running job's plan predicts.")
                         .Register(*registry_)),
      job_error_(BuildGauge()
                     .Name("xtrain_job_planner_relative_error")
                     .Help("(largest measured step peak - predicted peak) / predicted peak of a running "
                           "job's current run; positive: the planner under-estimated.")
                     .Register(*registry_)),
      job_probes_min_(BuildGauge()
                          .Name("xtrain_job_probes_min")
                          .Help("Fewest XConv probes of any sketched layer of a running job (0: none sketched).")
                          .Register(*registry_)),
      job_probes_mean_(BuildGauge()
                           .Name("xtrain_job_probes_mean")
                           .Help("Mean XConv probes over the sketched layers of a running job (0: none sketched).")
                           .Register(*registry_)),
      job_fidelity_(BuildGauge()
                        .Name("xtrain_job_fidelity_ratio")
                        .Help("A running job's last gradient-fidelity ratio V_x / V_sgd (telemetry steps only).")
                        .Register(*registry_)),
      worker_starts_(BuildCounter()
                         .Name("xtrain_worker_starts_total")
                         .Help("xtrain-worker processes started, by kind (train, plan).")
                         .Register(*registry_)),
      worker_exits_(BuildCounter()
                        .Name("xtrain_worker_exits_total")
                        .Help("xtrain-worker processes ended, by kind and outcome.")
                        .Register(*registry_)),
      worker_restarts_(BuildCounter()
                           .Name("xtrain_worker_restarts_total")
                           .Help("Job attempts retried after their worker failed, by reason (crashed, error).")
                           .Register(*registry_)),
      store_write_(BuildHistogram()
                       .Name("xtrain_store_write_duration_seconds")
                       .Help("Job store write transactions, by operation (commit, insert).")
                       .Register(*registry_)),
      grpc_requests_(BuildCounter()
                         .Name("xtrain_grpc_requests_total")
                         .Help("gRPC calls handled, by service, method and status code.")
                         .Register(*registry_)),
      grpc_latency_(BuildHistogram()
                        .Name("xtrain_grpc_request_duration_seconds")
                        .Help("Time from a unary gRPC call's arrival to its status, by service and method.")
                        .Register(*registry_)) {
  // Children recorded often are looked up once (Family::Add builds a child before it finds the existing one).
  queue_length_gauge_ = &queue_length_.Add({});
  queue_wait_histogram_ = &queue_wait_.Add({}, kQueueWaitBuckets);
  oldest_wait_gauge_ = &oldest_wait_.Add({});
  preemptions_counter_ = &preemptions_.Add({});
  store_commit_ = &store_write_.Add({{"op", "commit"}}, kStoreBuckets);
  store_insert_ = &store_write_.Add({{"op", "insert"}}, kStoreBuckets);
}

Metrics::~Metrics() = default;

std::vector<std::shared_ptr<prometheus::Collectable>> Metrics::Collectables() const {
  return {registry_, callbacks_};
}

void Metrics::SetBuildInfo(const std::map<std::string, std::string>& labels) {
  build_info_.Add(prometheus::Labels(labels.begin(), labels.end())).Set(1);
  start_time_.Add({}).Set(NowSeconds());
}

void Metrics::AddCallback(const std::string& name, const std::string& help, Kind kind, std::function<double()> read) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = kind == Kind::kCounter ? prometheus::MetricType::Counter : prometheus::MetricType::Gauge;
  callbacks_->Add(std::move(family), std::move(read));
}

prometheus::Counter& Metrics::CounterOf(prometheus::Family<prometheus::Counter>& family,
                                        const prometheus::Labels& labels) {
  return family.Add(labels);  // the existing child when these labels have one
}

void Metrics::JobStateChanged(const std::string& tenant, v1::JobState from, v1::JobState to) {
  if (from == to) return;
  MutexLock lock(&mutex_);
  queued_ += (to == v1::QUEUED) - (from == v1::QUEUED);
  queue_length_gauge_->Set(queued_);
  auto gauge = [&](v1::JobState state) {
    prometheus::Gauge*& g = job_states_[{tenant, static_cast<int>(state)}];
    if (g == nullptr) g = &jobs_.Add({{"state", StateLabel(state)}, {"tenant", tenant}});
    return g;
  };
  if (from != v1::JOB_STATE_UNSPECIFIED) gauge(from)->Decrement();
  if (to != v1::JOB_STATE_UNSPECIFIED) gauge(to)->Increment();
}

void Metrics::ObserveQueueWait(double seconds) { queue_wait_histogram_->Observe(seconds); }

void Metrics::SetOldestQueueWait(double seconds) { oldest_wait_gauge_->Set(seconds); }

void Metrics::Admitted(const std::string& device) { CounterOf(admissions_, {{"device", device}}).Increment(); }

void Metrics::SubmitRefused(std::string_view reason) {
  CounterOf(refusals_, {{"reason", std::string(reason)}}).Increment();
}

void Metrics::Replanned(std::string_view reason) { CounterOf(replans_, {{"reason", std::string(reason)}}).Increment(); }

void Metrics::Preempted() { preemptions_counter_->Increment(); }

void Metrics::AddDevice(const std::string& name, int64_t capacity_bytes) {
  MutexLock lock(&mutex_);
  const prometheus::Labels labels = {{"device", name}};
  device_capacity_.Add(labels).Set(static_cast<double>(capacity_bytes));
  admissions_.Add(labels);
  devices_[name] = Device{&device_reserved_.Add(labels), &device_planned_.Add(labels), &device_measured_.Add(labels),
                          &device_jobs_.Add(labels),     &step_duration_.Add(labels, kStepBuckets),
                          &steps_.Add(labels)};
}

void Metrics::UpdateDevicesLocked() {
  struct Sum {
    int64_t reserved = 0, planned = 0, measured = 0;
    int jobs = 0;
  };
  std::map<std::string, Sum> sums;
  for (const auto& [id, series] : job_series_) {
    if (!series->running) continue;
    Sum& sum = sums[series->device];
    sum.reserved += series->budget;
    sum.planned += series->predicted;
    sum.measured += series->measured;
    ++sum.jobs;
  }
  for (auto& [name, device] : devices_) {
    const Sum& sum = sums[name];
    device.reserved->Set(static_cast<double>(sum.reserved));
    device.planned->Set(static_cast<double>(sum.planned));
    device.measured->Set(static_cast<double>(sum.measured));
    device.jobs->Set(sum.jobs);
  }
}

void Metrics::JobStarted(const std::string& job_id, const std::string& tenant, const std::string& device,
                         int64_t budget_bytes, int64_t predicted_peak_bytes) {
  MutexLock lock(&mutex_);
  RemoveJobLocked(job_id);  // a run before this one (another device, other values)
  auto series = std::make_unique<JobSeries>();
  series->tenant = tenant;
  series->device = device;
  series->running = true;
  series->budget = budget_bytes;
  series->predicted = predicted_peak_bytes;
  const prometheus::Labels labels = {{"job_id", job_id}, {"tenant", tenant}, {"device", device}};
  series->step = &job_step_.Add(labels);
  series->progress = &job_progress_.Add(labels);
  series->samples_per_second = &job_samples_per_second_.Add(labels);
  series->budget_bytes = &job_budget_.Add(labels);
  series->measured_bytes = &job_measured_.Add(labels);
  series->predicted_bytes = &job_predicted_.Add(labels);
  series->error = &job_error_.Add(labels);
  series->probes_min = &job_probes_min_.Add(labels);
  series->probes_mean = &job_probes_mean_.Add(labels);
  series->fidelity = &job_fidelity_.Add(labels);
  series->budget_bytes->Set(static_cast<double>(budget_bytes));
  series->predicted_bytes->Set(static_cast<double>(predicted_peak_bytes));
  job_series_[job_id] = std::move(series);
  UpdateDevicesLocked();
}

void Metrics::JobStep(const std::string& job_id, const v1::StepMetrics& step, int64_t total_steps) {
  MutexLock lock(&mutex_);
  auto it = job_series_.find(job_id);
  if (it == job_series_.end()) return;
  JobSeries& s = *it->second;
  if (auto device = devices_.find(s.device); device != devices_.end()) {
    device->second.steps->Increment();
    if (step.step_seconds() > 0) device->second.step_duration->Observe(step.step_seconds());
  }
  s.step->Set(static_cast<double>(step.step()));
  if (total_steps > 0) s.progress->Set(std::min(1.0, static_cast<double>(step.step()) / static_cast<double>(total_steps)));
  s.samples_per_second->Set(step.samples_per_second());
  if (step.predicted_peak_bytes() > 0) {
    s.predicted = step.predicted_peak_bytes();
    s.predicted_bytes->Set(static_cast<double>(s.predicted));
  }
  if (step.measured_peak_bytes() > 0) {
    s.measured = std::max(s.measured, step.measured_peak_bytes());
    s.measured_bytes->Set(static_cast<double>(s.measured));
  }
  // The prediction is of the step's peak: it is compared with the largest step measured (single steps
  // measure up to several percent below it, as their batches and telemetry differ).
  if (s.measured > 0 && s.predicted > 0) {
    s.error->Set(static_cast<double>(s.measured - s.predicted) / static_cast<double>(s.predicted));
  }
  int64_t fewest = 0, sum = 0, sketched = 0;
  for (int64_t r : step.probes()) {
    if (r <= 0) continue;
    fewest = sketched == 0 ? r : std::min(fewest, r);
    sum += r;
    ++sketched;
  }
  s.probes_min->Set(static_cast<double>(fewest));
  s.probes_mean->Set(sketched > 0 ? static_cast<double>(sum) / static_cast<double>(sketched) : 0.0);
  if (step.fidelity_ratio() > 0) s.fidelity->Set(step.fidelity_ratio());
  UpdateDevicesLocked();
}

void Metrics::JobPlanned(const std::string& job_id, int64_t budget_bytes, int64_t predicted_peak_bytes) {
  MutexLock lock(&mutex_);
  auto it = job_series_.find(job_id);
  if (it == job_series_.end()) return;
  JobSeries& s = *it->second;
  if (budget_bytes > 0) {
    s.budget = budget_bytes;
    s.budget_bytes->Set(static_cast<double>(budget_bytes));
  }
  if (predicted_peak_bytes > 0) {
    s.predicted = predicted_peak_bytes;
    s.predicted_bytes->Set(static_cast<double>(predicted_peak_bytes));
  }
  UpdateDevicesLocked();
}

void Metrics::JobStopped(const std::string& job_id) {
  MutexLock lock(&mutex_);
  auto it = job_series_.find(job_id);
  if (it == job_series_.end()) return;
  it->second->running = false;
  UpdateDevicesLocked();
}

void Metrics::RemoveJob(const std::string& job_id) {
  MutexLock lock(&mutex_);
  RemoveJobLocked(job_id);
  UpdateDevicesLocked();
}

void Metrics::RemoveJobLocked(const std::string& job_id) {
  auto it = job_series_.find(job_id);
  if (it == job_series_.end()) return;
  const JobSeries& s = *it->second;
  job_step_.Remove(s.step);
  job_progress_.Remove(s.progress);
  job_samples_per_second_.Remove(s.samples_per_second);
  job_budget_.Remove(s.budget_bytes);
  job_measured_.Remove(s.measured_bytes);
  job_predicted_.Remove(s.predicted_bytes);
  job_error_.Remove(s.error);
  job_probes_min_.Remove(s.probes_min);
  job_probes_mean_.Remove(s.probes_mean);
  job_fidelity_.Remove(s.fidelity);
  job_series_.erase(it);
}

std::vector<std::string> Metrics::JobsWithSeries() const {
  MutexLock lock(&mutex_);
  std::vector<std::string> ids;
  for (const auto& [id, series] : job_series_) ids.push_back(id);
  return ids;
}

void Metrics::WorkerStarted(std::string_view kind) {
  CounterOf(worker_starts_, {{"kind", std::string(kind)}}).Increment();
}

void Metrics::WorkerExited(std::string_view kind, std::string_view outcome) {
  CounterOf(worker_exits_, {{"kind", std::string(kind)}, {"outcome", std::string(outcome)}}).Increment();
}

void Metrics::WorkerRestarted(std::string_view reason) {
  CounterOf(worker_restarts_, {{"reason", std::string(reason)}}).Increment();
}

void Metrics::ObserveStoreWrite(StoreOp op, double seconds) {
  (op == StoreOp::kCommit ? store_commit_ : store_insert_)->Observe(seconds);
}

Metrics::RpcMethod::RpcMethod(Metrics* metrics, std::string service, std::string method)
    : metrics_(metrics), service_(std::move(service)), method_(std::move(method)) {
  latency_ = &metrics_->grpc_latency_.Add({{"grpc_service", service_}, {"grpc_method", method_}}, kRpcBuckets);
}

void Metrics::RpcMethod::Record(int code, double seconds) {
  if (code < 0 || code >= static_cast<int>(codes_.size())) code = 2;  // UNKNOWN
  prometheus::Counter* counter = codes_[code].load(std::memory_order_acquire);
  if (counter == nullptr) {
    // First call with this code: Family::Add returns the same child to racing callers.
    counter = &metrics_->grpc_requests_.Add(
        {{"grpc_service", service_}, {"grpc_method", method_}, {"grpc_code", kCodeNames[code]}});
    codes_[code].store(counter, std::memory_order_release);
  }
  counter->Increment();
  if (seconds >= 0) latency_->Observe(seconds);
}

Metrics::RpcMethod* Metrics::Method(const std::string& full_name) {
  MutexLock lock(&mutex_);
  std::unique_ptr<RpcMethod>& method = methods_[full_name];
  if (method == nullptr) {
    // "/pkg.Service/Method"; anything else is kept whole as the method.
    std::string service, name = full_name;
    if (const size_t slash = full_name.rfind('/'); slash != std::string::npos && slash > 0) {
      service = full_name.substr(full_name[0] == '/' ? 1 : 0, slash - (full_name[0] == '/' ? 1 : 0));
      name = full_name.substr(slash + 1);
    }
    method.reset(new RpcMethod(this, service, name));
  }
  return method.get();
}

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(const std::string& address,
                                                                         const Metrics& metrics) {
  std::unique_ptr<MetricsEndpoint> endpoint(new MetricsEndpoint());
  try {
    endpoint->exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", address, " (", e.what(),
                                               "); is the port taken? use --metrics-port (0 picks a free one)"));
  }
  endpoint->collectables_ = metrics.Collectables();
  for (const auto& collectable : endpoint->collectables_) endpoint->exposer_->RegisterCollectable(collectable);
  const std::vector<int> ports = endpoint->exposer_->GetListeningPorts();
  endpoint->port_ = ports.empty() ? 0 : ports.front();
  return endpoint;
}

MetricsEndpoint::~MetricsEndpoint() = default;

}  // namespace xtrain::server
