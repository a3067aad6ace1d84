#include "server/scheduler/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <thread>

#include <boost/asio/post.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "server/common/logging.h"
#include "server/common/mutex.h"
#include "server/common/util.h"
#include "spdlog/spdlog.h"

namespace xtrain::server {
namespace v1 = ::xtrain::v1;
namespace wv1 = ::xtrain::worker::v1;

namespace {

using SteadyClock = std::chrono::steady_clock;

double SteadySeconds() {
  return std::chrono::duration<double>(SteadyClock::now().time_since_epoch()).count();
}

bool Terminal(v1::JobState state) {
  return state == v1::SUCCEEDED || state == v1::FAILED || state == v1::CANCELLED;
}

std::string StateName(v1::JobState state) {
  std::string name = v1::JobState_Name(state);
  return name.empty() ? "UNKNOWN" : name;
}

// Serialization with map entries in key order, so equal messages give equal bytes (cache keys).
std::string DeterministicBytes(const google::protobuf::MessageLite& message) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream stream(&bytes);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    message.SerializeToCodedStream(&coded);
  }
  return bytes;
}

// The key a plan is cached under: everything in the context that changes the plan.
std::string PlanKey(const wv1::JobContext& context) {
  wv1::JobContext key = context;
  key.clear_job_id();
  key.clear_tenant();
  v1::JobSpec& spec = *key.mutable_spec();
  spec.clear_display_name();
  spec.clear_labels();
  spec.clear_priority();
  spec.clear_checkpoint();
  return DeterministicBytes(key);
}

// The budget a chain point needs: the loader's batches are outside the planner's margin.
int64_t BudgetFor(int64_t peak, int64_t loader, double margin) {
  const double step = static_cast<double>(std::max<int64_t>(0, peak - loader));
  return loader + static_cast<int64_t>(std::ceil(step / (1.0 - margin)));
}

int64_t DeviceCapacity(const std::vector<DeviceState>& devices, const std::string& name) {
  for (const DeviceState& d : devices) {
    if (d.name == name) return d.capacity_bytes;
  }
  return 0;
}

// Who a log line about `job` is about: its id and tenant.
LogContext About(const v1::Job& job) { return LogContext{.job_id = job.id(), .tenant = job.tenant()}; }

bool KnownOptimizer(const std::string& name) {
  return name.empty() || name == "sgd" || name == "sgd_momentum" || name == "adam" || name == "adamw";
}

}  // namespace

struct Scheduler::JobEntry {
  v1::Job job;
  int64_t order = 0;
  wv1::JobContext context;                         // resolved; budget = the job's own budget
  std::shared_ptr<const wv1::PlanResult> plan;     // the chain; null while it is re-planned
  std::vector<int64_t> budgets;                    // per chain point
  int requested = 0;
  int floor = 0;
  int point = 0;                                   // the point it runs (or last ran) at
  WorkerId worker = 0;
  int pending_point = -1;                          // a shrink in flight
  bool stopping = false;                           // STOP sent: preemption or shutdown
  std::string stop_reason;
  bool finished_cleanly = false;
  double queued_since = 0;
  std::vector<v1::JobEvent> unsaved;               // events not yet committed
  bool staged = false;
  std::unique_ptr<boost::asio::steady_timer> checkpoint_timer;
  std::unique_ptr<boost::asio::steady_timer> cancel_timer;
};

struct Scheduler::PlanCall {
  wv1::JobContext context;
  std::vector<PlanDone> waiters;
  bool started = false;
  WorkerId worker = 0;
  std::shared_ptr<wv1::PlanResult> result;
};

Scheduler::Scheduler(boost::asio::io_context& io, JobStore& store, Supervisor& supervisor,
                     SchedulerOptions options, Publisher publisher)
    : io_(io),
      store_(store),
      supervisor_(supervisor),
      options_(std::move(options)),
      publisher_(std::move(publisher)),
      metrics_(options_.metrics) {
  if (metrics_ != nullptr) {
    for (const DeviceState& device : options_.devices) metrics_->AddDevice(device.name, device.capacity_bytes);
  }
}

Scheduler::~Scheduler() = default;

std::string Scheduler::JobDir(const std::string& job_id) const {
  return absl::StrCat(options_.data_dir, "/jobs/", job_id);
}

// ---------------------------------------------------------------------------------------------------
// Recovery.

absl::Status Scheduler::Recover() {
  if (Shared()) {
    // The lease first: a replica starting after a crash must not look dead to the others.
    if (absl::Status s = store_.Heartbeat(options_.replica_id, options_.lease_seconds); !s.ok()) return s;
  }
  absl::StatusOr<std::vector<v1::Job>> loaded = store_.LoadJobs();
  if (!loaded.ok()) return loaded.status();
  for (v1::Job& job : *loaded) {
    // With several replicas, this one runs only the unfinished jobs it owned; the rest are mirrored.
    if (Shared() && (Terminal(job.state()) || job.replica() != options_.replica_id)) {
      Mirror(job);
      continue;
    }
    auto entry = std::make_unique<JobEntry>();
    entry->order = next_order_++;
    entry->job = std::move(job);
    const std::string id = entry->job.id();
    if (metrics_ != nullptr) metrics_->JobStateChanged(entry->job.tenant(), v1::JOB_STATE_UNSPECIFIED, entry->job.state());
    if (!entry->job.client_request_id().empty()) {
      request_ids_[{entry->job.tenant(), entry->job.client_request_id()}] = id;
    }
    if (!Terminal(entry->job.state()) && entry->job.cancel_requested()) {
      // The cancel was acknowledged (committed) before the server died, the job's stop not yet: it ends
      // cancelled rather than resuming.
      FinishJob(*entry, v1::CANCELLED,
                absl::StrCat("cancelled at step ", entry->job.progress().step(),
                             " (the server restarted before the worker stopped)"));
    } else if (!Terminal(entry->job.state())) {
      Resume(*entry, absl::StrCat("the server restarted; the job resumes from its checkpoint at step ",
                                  entry->job.progress().last_checkpoint_step()));
    }
    SetSnapshot(entry->job, entry->order);
    jobs_[id] = std::move(entry);
  }
  Flush();
  RequestPass();
  if (Shared()) {
    store_.Listen([this](const JobChange& change) { boost::asio::post(io_, [this, change] { OnStoreChange(change); }); });
    LeaseTick();
  }
  return absl::OkStatus();
}

void Scheduler::Resume(JobEntry& entry, const std::string& why) {
  const std::string& id = entry.job.id();
  absl::StatusOr<wv1::JobContext> context = Resolve(entry.job.tenant(), entry.job.spec());
  absl::StatusOr<std::string> bytes = ReadFile(absl::StrCat(JobDir(id), "/plan.pb"));
  auto plan = std::make_shared<wv1::PlanResult>();
  if (!context.ok()) {
    FinishJob(entry, v1::FAILED, absl::StrCat("cannot resume: ", context.status().message()));
    return;
  }
  if (!bytes.ok() || !plan->ParseFromString(*bytes) || plan->chain().empty()) {
    FinishJob(entry, v1::FAILED,
              absl::StrCat("cannot resume: its plan file is missing or damaged",
                           Shared() ? " (is --data-dir a volume every replica mounts?)" : "", "; submit it again"));
    return;
  }
  entry.context = *context;
  entry.context.set_job_id(id);
  entry.plan = plan;
  const int64_t loader = plan->plan().loader_bytes();
  entry.budgets.clear();
  for (const wv1::ChainPoint& p : plan->chain()) {
    entry.budgets.push_back(BudgetFor(p.peak_bytes(), loader, options_.planner_margin));
  }
  entry.requested = 0;
  for (int i = 0; i < static_cast<int>(entry.budgets.size()); ++i) {
    if (entry.budgets[i] <= entry.context.budget_bytes()) entry.requested = i;
  }
  entry.floor = entry.requested;
  if (entry.job.spec().memory().probes() != v1::MemorySpec::PROBES_FIXED) {
    const double min_fidelity = entry.job.spec().memory().min_fidelity();
    for (int i = 0; i <= entry.requested; ++i) {
      if (plan->chain(i).fidelity() >= min_fidelity) {
        entry.floor = i;
        break;
      }
    }
  }
  entry.point = entry.requested;
  entry.queued_since = SteadySeconds();
  if (entry.job.state() == v1::RUNNING) {
    entry.job.set_device("");
    ChangeState(entry, v1::QUEUED, why);
  }
}

// ---------------------------------------------------------------------------------------------------
// Scale-out: several replicas on one shared store.

void Scheduler::Mirror(const v1::Job& job) {
  auto [it, inserted] = mirrors_.try_emplace(job.id());
  if (inserted) it->second.order = next_order_++;
  it->second.last_sequence = std::max(it->second.last_sequence, job.last_sequence());
  if (!job.client_request_id().empty()) request_ids_[{job.tenant(), job.client_request_id()}] = job.id();
  SetSnapshot(job, it->second.order);
}

void Scheduler::OnStoreChange(const JobChange& change) {
  if (change.kind == JobChange::Kind::kResync) {
    absl::StatusOr<std::vector<v1::Job>> jobs = store_.LoadJobs();
    if (!jobs.ok()) {
      spdlog::warn("replica {}: cannot read the jobs again after a lost notification connection: {}",
                   options_.replica_id, std::string(jobs.status().message()));
      return;
    }
    for (const v1::Job& job : *jobs) {
      if (jobs_.count(job.id()) == 0) OnStoreChange(JobChange{JobChange::Kind::kCommitted, job.id()});
    }
    return;
  }
  const std::string& id = change.job_id;
  if (auto local = jobs_.find(id); local != jobs_.end()) {
    // This replica's own job: its commits are its own; another replica may only ask for a cancel, and
    // the store may have taken it away (this replica's lease ran out).
    JobEntry& entry = *local->second;
    if (Terminal(entry.job.state())) return;
    if (change.kind == JobChange::Kind::kCancelRequested && !entry.job.cancel_requested()) {
      CancelEntry(entry);
      Flush();
    } else if (change.kind == JobChange::Kind::kRequeued) {
      // This replica may have claimed it again since (the notice of a re-queue it made itself comes
      // after its own claim): only a job the store says is another's, or nobody's, is let go.
      absl::StatusOr<v1::Job> stored = store_.ReadJob(id);
      if (stored.ok() && stored->replica() != options_.replica_id) {
        LoseJob(id, "the store re-queued it: this replica's lease ran out");
      }
    }
    return;
  }
  absl::StatusOr<v1::Job> job = store_.ReadJob(id);
  if (!job.ok()) return;
  RefreshMirror(*job);
  if (job->state() == v1::QUEUED && job->replica().empty()) ClaimPass();
}

void Scheduler::RefreshMirror(const v1::Job& job) {
  // The events since the last one this replica published, up to the snapshot's, to its watchers.
  auto mirrored = mirrors_.find(job.id());
  const int64_t published = mirrored == mirrors_.end() ? 0 : mirrored->second.last_sequence;
  if (job.last_sequence() <= published) {
    Mirror(job);
    return;
  }
  absl::StatusOr<std::vector<v1::JobEvent>> events =
      store_.ReadEvents(job.id(), published + 1, job.last_sequence() - published);
  if (events.ok() && !events->empty()) {
    Mirror(job);
    publisher_(job, *events);
  }
}

void Scheduler::ClaimPass() {
  if (!Shared() || shutting_down_) return;
  int slots = 0;
  for (const DeviceState& device : options_.devices) slots += device.slots;
  for (const auto& [id, entry] : jobs_) slots -= Terminal(entry->job.state()) ? 0 : 1;
  if (slots <= 0) return;
  absl::StatusOr<std::vector<v1::Job>> claimed = store_.ClaimJobs(options_.replica_id, slots);
  if (!claimed.ok()) {
    spdlog::warn("replica {}: claiming queued jobs failed: {}", options_.replica_id, std::string(claimed.status().message()));
    return;
  }
  for (const v1::Job& job : *claimed) Adopt(job);
  if (!claimed->empty()) {
    Flush();
    RequestPass();
  }
}

void Scheduler::Adopt(const v1::Job& claimed) {
  // Watchers here first get the events committed before the claim, then this replica's.
  RefreshMirror(claimed);
  auto entry = std::make_unique<JobEntry>();
  auto mirrored = mirrors_.find(claimed.id());
  entry->order = mirrored != mirrors_.end() ? mirrored->second.order : next_order_++;
  if (mirrored != mirrors_.end()) mirrors_.erase(mirrored);
  entry->job = claimed;
  const std::string id = claimed.id();
  if (metrics_ != nullptr) metrics_->JobStateChanged(claimed.tenant(), v1::JOB_STATE_UNSPECIFIED, claimed.state());
  LogAbout(About(entry->job), spdlog::level::info, "claimed by replica {} at step {}", options_.replica_id,
           claimed.progress().step());
  if (entry->job.cancel_requested()) {
    FinishJob(*entry, v1::CANCELLED, absl::StrCat("cancelled at step ", entry->job.progress().step(), " while queued"));
  } else {
    Resume(*entry, "claimed");
  }
  SetSnapshot(entry->job, entry->order);
  jobs_[id] = std::move(entry);
}

void Scheduler::LoseJob(const std::string& job_id, const std::string& why) {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return;
  JobEntry& entry = *it->second;
  LogAbout(About(entry.job), spdlog::level::warn, "replica {} no longer runs it: {}", options_.replica_id, why);
  if (entry.worker != 0) supervisor_.Kill(entry.worker);
  if (metrics_ != nullptr) {
    metrics_->JobStateChanged(entry.job.tenant(), entry.job.state(), v1::JOB_STATE_UNSPECIFIED);
    if (entry.job.state() == v1::RUNNING) metrics_->JobStopped(job_id);
  }
  const int64_t order = entry.order;
  const int64_t published = entry.job.last_sequence() - static_cast<int64_t>(entry.unsaved.size());
  jobs_.erase(it);
  {
    MutexLock lock(&snapshot_mutex_);
    waiting_.erase(job_id);
  }
  mirrors_[job_id] = Mirrored{order, published};
  OnStoreChange(JobChange{JobChange::Kind::kCommitted, job_id});
  RequestPass();
}

void Scheduler::LeaseTick() {
  if (absl::Status s = store_.Heartbeat(options_.replica_id, options_.lease_seconds); !s.ok()) {
    spdlog::warn("replica {}: renewing its lease failed: {}", options_.replica_id, std::string(s.message()));
  }
  absl::StatusOr<std::vector<v1::Job>> requeued = store_.RequeueOrphans();
  if (!requeued.ok()) {
    spdlog::warn("replica {}: re-queueing lost replicas' jobs failed: {}", options_.replica_id,
                 std::string(requeued.status().message()));
  } else {
    for (const v1::Job& job : *requeued) {
      LogAbout(About(job), spdlog::level::warn, "its replica stopped renewing its lease; back in the queue at step {}",
               job.progress().step());
    }
  }
  ClaimPass();
  if (shutting_down_) return;
  lease_timer_ = std::make_unique<boost::asio::steady_timer>(
      io_, std::chrono::milliseconds(static_cast<int64_t>(options_.lease_seconds * 1000 / 3)));
  lease_timer_->async_wait([this](const boost::system::error_code& error) {
    if (!error) LeaseTick();
  });
}

// ---------------------------------------------------------------------------------------------------
// Spec resolution and planning.

absl::StatusOr<wv1::JobContext> Scheduler::Resolve(const std::string& tenant, const v1::JobSpec& spec) const {
  wv1::JobContext context;
  context.set_tenant(tenant);
  *context.mutable_spec() = spec;
  for (const std::string& root : options_.data_roots) context.add_data_roots(root);

  // The device whose capacity a share refers to: the pinned one, else the largest.
  const DeviceState* device = nullptr;
  for (const DeviceState& d : options_.devices) {
    if (!spec.device().empty() && d.name != spec.device()) continue;
    if (device == nullptr || d.capacity_bytes > device->capacity_bytes) device = &d;
  }
  if (device == nullptr) {
    std::vector<std::string> names;
    for (const DeviceState& d : options_.devices) names.push_back(d.name);
    return absl::InvalidArgumentError(absl::StrCat("spec.device '", spec.device(), "' is not a device of this server; use one of: ",
                                                   absl::StrJoin(names, ", "), " (or leave it empty)"));
  }
  context.set_device(device->name);
  context.set_device_capacity_bytes(device->capacity_bytes);
  int64_t budget = device->capacity_bytes;
  if (spec.memory().budget_bytes() > 0) {
    budget = spec.memory().budget_bytes();
  } else if (spec.memory().device_share() > 0) {
    budget = static_cast<int64_t>(spec.memory().device_share() * static_cast<double>(device->capacity_bytes));
  }
  context.set_budget_bytes(budget);
  int threads = options_.threads_per_job;
  if (threads <= 0) {
    const int cores = std::max(1u, std::thread::hardware_concurrency());
    threads = std::max(1, cores / std::max(1, device->slots));
  }
  context.set_threads(threads);

  const v1::DatasetSpec& data = spec.dataset();
  if (data.kind() != v1::DatasetSpec::SYNTHETIC) {
    absl::StatusOr<std::string> path = ResolveUnderRoots(options_.data_roots, data.path(), "spec.dataset.path");
    if (!path.ok()) return path.status();
    context.mutable_spec()->mutable_dataset()->set_path(*path);
    if (!data.targets_path().empty()) {
      absl::StatusOr<std::string> targets =
          ResolveUnderRoots(options_.data_roots, data.targets_path(), "spec.dataset.targets_path");
      if (!targets.ok()) return targets.status();
      context.mutable_spec()->mutable_dataset()->set_targets_path(*targets);
    }
  }
  const v1::ModelSpec& model = spec.model();
  if (!model.init_artifact_id().empty()) {
    absl::StatusOr<ArtifactRecord> artifact = store_.GetArtifact(model.init_artifact_id());
    if (!artifact.ok() || (!tenant.empty() && artifact->tenant != tenant)) {
      return absl::NotFoundError(absl::StrCat("spec.model.init_artifact_id '", model.init_artifact_id(),
                                              "' is not an artifact of yours; upload the weights first"));
    }
    context.set_init_weights_path(absl::StrCat(options_.data_dir, "/", artifact->path));
  } else if (!model.init_path().empty()) {
    absl::StatusOr<std::string> path = ResolveUnderRoots(options_.data_roots, model.init_path(), "spec.model.init_path");
    if (!path.ok()) return path.status();
    context.set_init_weights_path(*path);
  }
  if (!KnownOptimizer(spec.training().optimizer())) {
    return absl::InvalidArgumentError(absl::StrCat("spec.training.optimizer '", spec.training().optimizer(),
                                                   "' is unknown; use sgd, sgd_momentum, adam or adamw"));
  }
  return context;
}

void Scheduler::Plan(std::string tenant, v1::JobSpec spec, Done<v1::PlanJobResponse> done) {
  boost::asio::post(io_, [this, tenant = std::move(tenant), spec = std::move(spec), done = std::move(done)]() {
    absl::StatusOr<wv1::JobContext> context = Resolve(tenant, spec);
    if (!context.ok()) return done(context.status());
    const bool cached = plan_cache_.count(PlanKey(*context)) > 0;
    PlanContext(*context, [this, context = *context, cached, done](
                              absl::StatusOr<std::shared_ptr<const wv1::PlanResult>> result) {
      if (!result.ok()) return done(result.status());
      done(PlanResponse(context, **result, cached));
    });
  });
}

void Scheduler::PlanContext(const wv1::JobContext& context, PlanDone done) {
  if (shutting_down_) {
    done(absl::UnavailableError("the server is shutting down; plan again shortly"));
    return;
  }
  const std::string key = PlanKey(context);
  if (auto hit = plan_cache_.find(key); hit != plan_cache_.end()) {
    {
      MutexLock lock(&snapshot_mutex_);
      ++stats_.plan_cache_hits;
    }
    done(hit->second);
    return;
  }
  {
    MutexLock lock(&snapshot_mutex_);
    ++stats_.plan_cache_misses;
  }
  auto& call = plan_calls_[key];
  if (call == nullptr) {
    call = std::make_unique<PlanCall>();
    call->context = context;
    call->context.set_job_id(absl::StrCat("plan-", Sha256Hex(key).substr(0, 12)));
    plan_queue_.push_back(key);
  }
  call->waiters.push_back(std::move(done));
  StartPlanWorkers();
}

void Scheduler::StartPlanWorkers() {
  while (plans_running_ < options_.max_concurrent_plans && !plan_queue_.empty()) {
    const std::string key = plan_queue_.front();
    plan_queue_.pop_front();
    PlanCall& call = *plan_calls_.at(key);
    wv1::WorkerRequest request;
    *request.mutable_plan()->mutable_job() = call.context;
    WorkerHandlers handlers;
    handlers.on_message = [this, key](const wv1::WorkerMessage& message) {
      auto it = plan_calls_.find(key);
      if (it == plan_calls_.end()) return;
      if (message.has_plan_result()) it->second->result = std::make_shared<wv1::PlanResult>(message.plan_result());
    };
    handlers.on_exit = [this, key](const WorkerExit& exit) {
      --plans_running_;
      if (metrics_ != nullptr) {
        auto call = plan_calls_.find(key);
        metrics_->WorkerExited("plan", call != plan_calls_.end() && call->second->result != nullptr ? "planned" : "plan_failed");
      }
      {
        MutexLock lock(&snapshot_mutex_);
        stats_.planning = plans_running_;
      }
      auto it = plan_calls_.find(key);
      if (it != plan_calls_.end() && it->second->result != nullptr) {
        OnPlanFinished(key, std::shared_ptr<const wv1::PlanResult>(it->second->result));
      } else if (exit.finished && exit.finished_message.code() != 0) {
        OnPlanFinished(key, absl::Status(static_cast<absl::StatusCode>(exit.finished_message.code()),
                                         exit.finished_message.message()));
      } else {
        OnPlanFinished(key, absl::UnavailableError(absl::StrCat("the planning worker ended without a plan (",
                                                                exit.reason, "); try again")));
      }
      StartPlanWorkers();
    };
    absl::StatusOr<WorkerId> worker =
        supervisor_.Start(call.context.job_id(), request, std::move(handlers),
                          LogContext{.plan_id = call.context.job_id(), .tenant = call.context.tenant()});
    if (!worker.ok()) {
      OnPlanFinished(key, worker.status());
      continue;
    }
    call.started = true;
    call.worker = *worker;
    ++plans_running_;
    if (metrics_ != nullptr) metrics_->WorkerStarted("plan");
    MutexLock lock(&snapshot_mutex_);
    stats_.planning = plans_running_;
  }
}

void Scheduler::OnPlanFinished(const std::string& key,
                               absl::StatusOr<std::shared_ptr<const wv1::PlanResult>> result) {
  auto it = plan_calls_.find(key);
  if (it == plan_calls_.end()) return;
  std::unique_ptr<PlanCall> call = std::move(it->second);
  plan_calls_.erase(it);
  if (result.ok()) {
    plan_cache_[key] = *result;
    plan_cache_order_.push_back(key);
    while (plan_cache_order_.size() > options_.plan_cache_entries) {
      plan_cache_.erase(plan_cache_order_.front());
      plan_cache_order_.pop_front();
    }
  }
  for (PlanDone& waiter : call->waiters) waiter(result);
}

absl::StatusOr<v1::PlanJobResponse> Scheduler::PlanResponse(const wv1::JobContext& context,
                                                            const wv1::PlanResult& result, bool cached) const {
  v1::PlanJobResponse response;
  *response.mutable_plan() = result.plan();
  response.set_cached(cached);
  // The floor: the cheapest chain point within the spec's min_fidelity (the planner's chain already
  // honours min_probes), the one the scheduler may shrink the job to; fixed probes have none below
  // the plan itself.
  int64_t floor_budget = result.plan().budget_bytes();
  const v1::MemorySpec& memory = context.spec().memory();
  if (memory.probes() != v1::MemorySpec::PROBES_FIXED) {
    const int64_t loader = result.plan().loader_bytes();
    for (const wv1::ChainPoint& p : result.chain()) {
      if (p.fidelity() >= memory.min_fidelity()) {
        floor_budget = std::min(floor_budget > 0 ? floor_budget : INT64_MAX,
                                BudgetFor(p.peak_bytes(), loader, options_.planner_margin));
        break;
      }
    }
  }
  response.mutable_plan()->set_floor_budget_bytes(floor_budget);
  for (const DeviceState& device : options_.devices) {
    if (!context.spec().device().empty() && device.name != context.spec().device()) continue;
    int64_t used = 0;
    int jobs = 0;
    for (const auto& [id, entry] : jobs_) {
      if (entry->job.state() == v1::RUNNING && entry->job.device() == device.name) {
        used += entry->job.budget_bytes();
        ++jobs;
      }
    }
    v1::DeviceFit& fit = *response.add_devices();
    fit.set_device(device.name);
    fit.set_capacity_bytes(device.capacity_bytes);
    fit.set_free_bytes(std::max<int64_t>(0, device.capacity_bytes - used));
    fit.set_fits(device.capacity_bytes >= floor_budget);
    fit.set_fits_now(fit.fits() && fit.free_bytes() >= floor_budget && jobs < device.slots);
  }
  return response;
}

// ---------------------------------------------------------------------------------------------------
// Submission.

void Scheduler::Submit(std::string tenant, v1::SubmitJobRequest request, Done<v1::SubmitJobResponse> done) {
  boost::asio::post(io_, [this, tenant = std::move(tenant), request = std::move(request), done = std::move(done)]() {
    if (shutting_down_) {
      return done(Refused("shutting_down", absl::UnavailableError("the server is shutting down; submit again shortly")));
    }
    const std::string& rid = request.client_request_id();
    if (!rid.empty()) {
      if (auto it = request_ids_.find({tenant, rid}); it != request_ids_.end()) {
        v1::SubmitJobResponse response;
        absl::StatusOr<v1::Job> job = GetJob(tenant, it->second);
        if (!job.ok()) return done(job.status());
        *response.mutable_job() = *job;
        response.set_existing(true);
        return done(response);
      }
      auto& waiting = submits_in_flight_[{tenant, rid}];
      waiting.push_back(done);
      if (waiting.size() > 1) return;  // the first call's outcome answers this one too
    }
    auto answer = [this, tenant, rid, done](absl::StatusOr<v1::SubmitJobResponse> response) {
      if (rid.empty()) return done(std::move(response));
      auto node = submits_in_flight_.extract({tenant, rid});
      if (node.empty()) return;
      bool first = true;
      for (auto& waiter : node.mapped()) {
        if (!first && response.ok()) response->set_existing(true);
        waiter(response);
        first = false;
      }
    };
    // The queue quota before planning (no worker is spent on a submit that cannot be kept); both quotas
    // again once the plan says the budget.
    if (absl::Status s = CheckQuotas(tenant, 0); !s.ok()) return answer(Refused("quota", s));
    absl::StatusOr<wv1::JobContext> context = Resolve(tenant, request.spec());
    if (!context.ok()) return answer(Refused("invalid_spec", context.status()));
    PlanContext(*context, [this, tenant, request, context = *context, answer](
                              absl::StatusOr<std::shared_ptr<const wv1::PlanResult>> result) {
      if (!result.ok()) {
        const bool fits = result.status().code() != absl::StatusCode::kResourceExhausted;
        return answer(Refused(fits ? "plan_failed" : "no_plan_fits", result.status()));
      }
      SubmitPlanned(tenant, request, context, *result, answer);
    });
  });
}

absl::Status Scheduler::CheckQuotas(const std::string& tenant, int64_t budget) const {
  if (options_.quota_queued_jobs <= 0 && options_.quota_budget_bytes <= 0) return absl::OkStatus();
  int queued = 0;
  int64_t held = 0;
  for (const auto& [id, entry] : jobs_) {
    if (entry->job.tenant() != tenant || Terminal(entry->job.state())) continue;
    queued += entry->job.state() == v1::QUEUED;
    held += entry->job.budget_bytes();
  }
  if (Shared()) {
    // The tenant's jobs on the other replicas and those waiting to be claimed count too.
    MutexLock lock(&snapshot_mutex_);
    for (const auto& [id, mirrored] : mirrors_) {
      auto snapshot = snapshots_.find(id);
      if (snapshot == snapshots_.end()) continue;
      const v1::Job& job = *snapshot->second.job;
      if (job.tenant() != tenant || Terminal(job.state())) continue;
      queued += job.state() == v1::QUEUED;
      held += job.budget_bytes();
    }
  }
  if (options_.quota_queued_jobs > 0 && queued >= options_.quota_queued_jobs) {
    return absl::ResourceExhaustedError(absl::StrCat("tenant '", tenant, "' has ", queued,
                                                     " queued jobs, its quota (--quota-queued-jobs); submit again "
                                                     "once some have started, or cancel some"));
  }
  if (options_.quota_budget_bytes > 0 && budget > 0 && held + budget > options_.quota_budget_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tenant '", tenant, "' would hold ", HumanBytes(held + budget), " of memory budget in queued and running jobs, over its quota of ",
        HumanBytes(options_.quota_budget_bytes), " (--quota-budget-bytes); wait for jobs to end, cancel some, or lower this job's budget"));
  }
  return absl::OkStatus();
}

void Scheduler::SubmitPlanned(const std::string& tenant, const v1::SubmitJobRequest& request,
                              const wv1::JobContext& context, std::shared_ptr<const wv1::PlanResult> result,
                              Done<v1::SubmitJobResponse> done) {
  if (result->chain().empty()) {
    return done(Refused("plan_failed", absl::InternalError("the planning worker returned an empty chain")));
  }
  auto entry = std::make_unique<JobEntry>();
  entry->context = context;
  entry->plan = result;
  const int64_t loader = result->plan().loader_bytes();
  for (const wv1::ChainPoint& p : result->chain()) {
    entry->budgets.push_back(BudgetFor(p.peak_bytes(), loader, options_.planner_margin));
  }
  entry->requested = -1;
  for (int i = 0; i < static_cast<int>(entry->budgets.size()); ++i) {
    if (entry->budgets[i] <= context.budget_bytes()) entry->requested = i;
  }
  if (entry->requested < 0) {
    return done(Refused("no_plan_fits", absl::ResourceExhaustedError(absl::StrCat(
                                            "no plan fits the budget of ", HumanBytes(context.budget_bytes()),
                                            "; the smallest budget that fits is ", HumanBytes(entry->budgets.front())))));
  }
  entry->floor = entry->requested;
  const v1::MemorySpec& memory = request.spec().memory();
  if (memory.probes() != v1::MemorySpec::PROBES_FIXED) {
    for (int i = 0; i <= entry->requested; ++i) {
      if (result->chain(i).fidelity() >= memory.min_fidelity()) {
        entry->floor = i;
        break;
      }
    }
    if (result->chain(entry->requested).fidelity() < memory.min_fidelity()) {
      return done(Refused("below_min_fidelity", absl::InvalidArgumentError(absl::StrCat(
          "spec.memory.min_fidelity is ", memory.min_fidelity(), " but the budget of ", HumanBytes(context.budget_bytes()),
          " only allows a plan of fidelity ", result->chain(entry->requested).fidelity(),
          "; raise the budget or lower min_fidelity"))));
    }
  }
  int64_t largest = 0;
  for (const DeviceState& d : options_.devices) {
    if (request.spec().device().empty() || d.name == request.spec().device()) largest = std::max(largest, d.capacity_bytes);
  }
  if (entry->budgets[entry->floor] > largest) {
    return done(Refused("larger_than_devices", absl::ResourceExhaustedError(absl::StrCat(
        "the job needs at least ", HumanBytes(entry->budgets[entry->floor]), " but the largest device it may use has ",
        HumanBytes(largest), "; lower the batch size or the model's size"))));
  }
  if (absl::Status s = CheckQuotas(tenant, entry->budgets[entry->requested]); !s.ok()) return done(Refused("quota", s));
  entry->point = entry->requested;
  entry->order = next_order_++;
  entry->queued_since = SteadySeconds();

  v1::Job& job = entry->job;
  job.set_id(NewId("job-"));
  entry->context.set_job_id(job.id());
  job.set_tenant(tenant);
  *job.mutable_spec() = request.spec();
  job.set_client_request_id(request.client_request_id());
  *job.mutable_create_time() = NowTimestamp();
  *job.mutable_update_time() = job.create_time();
  job.set_budget_bytes(entry->budgets[entry->requested]);
  *job.mutable_plan() = PlanAt(*entry, entry->requested);
  v1::Progress& progress = *job.mutable_progress();
  progress.set_total_steps(result->total_steps());
  progress.set_epochs(request.spec().training().epochs() > 0 ? request.spec().training().epochs() : 1);
  progress.set_predicted_peak_bytes(job.plan().predicted_peak_bytes());

  // The plan (chain) rides beside the store: a restarted server schedules from it without re-planning.
  if (absl::Status s = MakeDirs(JobDir(job.id())); !s.ok()) return done(Refused("store_error", s));
  if (absl::Status s = WriteFileAtomically(absl::StrCat(JobDir(job.id()), "/plan.pb"), result->SerializeAsString());
      !s.ok()) {
    return done(Refused("store_error", s));
  }
  ChangeState(*entry, v1::QUEUED, "submitted");
  *AddEvent(*entry).mutable_plan() = job.plan();

  Flush();  // earlier staged writes first, so the insert below sees their sequences
  job.set_replica("");  // with several replicas, whichever has room claims it (ClaimPass)
  JobWrite write;
  write.job = job;
  write.events = std::move(entry->unsaved);
  entry->unsaved.clear();
  entry->staged = false;
  const auto insert_start = SteadyClock::now();
  absl::Status inserted = store_.InsertJob(write);
  if (metrics_ != nullptr) {
    metrics_->ObserveStoreWrite(Metrics::StoreOp::kInsert,
                                std::chrono::duration<double>(SteadyClock::now() - insert_start).count());
  }
  if (!inserted.ok()) {
    RemoveAll(JobDir(job.id())).IgnoreError();
    if (Shared() && inserted.code() == absl::StatusCode::kAlreadyExists && !job.client_request_id().empty()) {
      // Another replica took this request id first: its job answers.
      absl::StatusOr<std::optional<v1::Job>> existing = store_.FindByRequestId(tenant, job.client_request_id());
      if (existing.ok() && existing->has_value()) {
        v1::SubmitJobResponse response;
        *response.mutable_job() = **existing;
        response.set_existing(true);
        return done(response);
      }
    }
    return done(Refused("store_error", inserted));
  }
  if (!job.client_request_id().empty()) request_ids_[{tenant, job.client_request_id()}] = job.id();
  if (Shared()) {
    // Not this replica's until it claims it: the replica that claims it counts it in its metrics.
    if (metrics_ != nullptr) metrics_->JobStateChanged(tenant, v1::QUEUED, v1::JOB_STATE_UNSPECIFIED);
    Mirror(job);
    publisher_(job, write.events);
    v1::SubmitJobResponse response;
    *response.mutable_job() = job;
    done(response);
    ClaimPass();
    return;
  }
  SetSnapshot(job, entry->order);
  {
    MutexLock lock(&snapshot_mutex_);
    ++stats_.queued;
  }
  publisher_(job, write.events);
  const std::string id = job.id();
  jobs_[id] = std::move(entry);
  v1::SubmitJobResponse response;
  *response.mutable_job() = jobs_[id]->job;
  done(response);
  RequestPass();
}

// ---------------------------------------------------------------------------------------------------
// Cancellation.

void Scheduler::Cancel(std::string tenant, std::string job_id, Done<v1::Job> done) {
  boost::asio::post(io_, [this, tenant = std::move(tenant), job_id = std::move(job_id), done = std::move(done)]() {
    auto it = jobs_.find(job_id);
    if (it == jobs_.end() && Shared()) {
      // Not this replica's: an unclaimed job is claimed here to be cancelled at once; another
      // replica's gets the request through the store and stops within a step there.
      absl::StatusOr<v1::Job> job = store_.ReadJob(job_id);
      if (!job.ok() || (!tenant.empty() && job->tenant() != tenant)) {
        return done(absl::NotFoundError(absl::StrCat("job '", job_id, "' does not exist")));
      }
      if (Terminal(job->state())) {
        return done(absl::FailedPreconditionError(absl::StrCat("job ", job_id, " has already ended (",
                                                               StateName(job->state()), "); nothing to cancel")));
      }
      if (job->replica().empty()) {
        absl::StatusOr<std::vector<v1::Job>> claimed = store_.ClaimJobs(options_.replica_id, 1, job_id);
        if (claimed.ok() && !claimed->empty()) {
          Adopt(claimed->front());
          it = jobs_.find(job_id);
        }
      }
      if (it == jobs_.end()) {
        if (absl::Status s = store_.RequestCancel(job_id); !s.ok()) return done(s);
        LogAbout(About(*job), spdlog::level::info, "cancel requested; replica {} stops it within a step",
                 job->replica().empty() ? std::string("claiming it") : job->replica());
        job->set_cancel_requested(true);
        return done(*job);
      }
    }
    if (it == jobs_.end() || (!tenant.empty() && it->second->job.tenant() != tenant)) {
      return done(absl::NotFoundError(absl::StrCat("job '", job_id, "' does not exist")));
    }
    JobEntry& entry = *it->second;
    if (Terminal(entry.job.state())) {
      return done(absl::FailedPreconditionError(absl::StrCat("job ", job_id, " has already ended (",
                                                             StateName(entry.job.state()), "); nothing to cancel")));
    }
    CancelEntry(entry);
    Flush();
    done(entry.job);
  });
}

void Scheduler::CancelEntry(JobEntry& entry) {
  const std::string job_id = entry.job.id();
  if (entry.job.state() == v1::QUEUED && entry.worker == 0) {
    FinishJob(entry, v1::CANCELLED, "cancelled while queued");
  } else if (!entry.job.cancel_requested()) {
    entry.job.set_cancel_requested(true);
    Stage(entry);
    wv1::WorkerRequest request;
    request.mutable_control()->set_action(wv1::Control::CANCEL);
    request.mutable_control()->set_reason("cancelled by the user");
    LogAbout(About(entry.job), spdlog::level::info, "cancel requested at step {}; its worker stops within a step",
             entry.job.progress().step());
    if (!supervisor_.Send(entry.worker, request).ok()) supervisor_.Kill(entry.worker);
    entry.cancel_timer = std::make_unique<boost::asio::steady_timer>(
        io_, std::chrono::milliseconds(static_cast<int64_t>(options_.cancel_grace_seconds * 1000)));
    entry.cancel_timer->async_wait([this, job_id](const boost::system::error_code& error) {
      if (error) return;
      auto found = jobs_.find(job_id);
      if (found == jobs_.end() || found->second->worker == 0) return;
      LogAbout(About(found->second->job), spdlog::level::warn,
               "its worker did not stop within {} s of the cancel; killing it", options_.cancel_grace_seconds);
      supervisor_.Kill(found->second->worker);
    });
  }
}

// ---------------------------------------------------------------------------------------------------
// Reads.

namespace {

// `job` as one `jobs` element of a ListJobsResponse's bytes.
std::shared_ptr<const std::string> JobsEntry(const v1::Job& job) {
  auto entry = std::make_shared<std::string>();
  AppendLengthDelimited(entry.get(), v1::ListJobsResponse::kJobsFieldNumber, job.SerializeAsString());
  return entry;
}

}  // namespace

v1::Job Scheduler::Live(const v1::Job& job, const std::optional<WaitInfo>& wait) {
  v1::Job live = job;
  if (wait) {
    live.set_queue_position(wait->queue_position);
    live.set_waiting_reason(wait->reason);
  }
  return live;
}

std::shared_ptr<const std::string> Scheduler::EntryOf(const Snapshot& snapshot, const std::optional<WaitInfo>& wait) {
  // A waiting job's position and reason are live, not in its snapshot: its entry is made here.
  return wait ? JobsEntry(Live(*snapshot.job, wait)) : snapshot.entry;
}

void Scheduler::SetSnapshot(const v1::Job& job, int64_t order) {
  Snapshot snapshot{std::make_shared<const v1::Job>(job), JobsEntry(job), order};
  MutexLock lock(&snapshot_mutex_);
  snapshots_[job.id()] = snapshot;
  by_order_[order] = std::move(snapshot);
}

std::optional<WaitInfo> Scheduler::WaitOfLocked(const v1::Job& job) const {
  if (job.state() != v1::QUEUED) return std::nullopt;
  auto found = waiting_.find(job.id());
  if (found == waiting_.end()) return std::nullopt;
  return found->second;
}

absl::StatusOr<Scheduler::Found> Scheduler::Find(const std::string& tenant, const std::string& job_id) const {
  MutexLock lock(&snapshot_mutex_);
  auto it = snapshots_.find(job_id);
  if (it == snapshots_.end() || (!tenant.empty() && it->second.job->tenant() != tenant)) {
    return absl::NotFoundError(absl::StrCat("job '", job_id, "' does not exist"));
  }
  return Found{it->second, WaitOfLocked(*it->second.job)};
}

absl::StatusOr<std::shared_ptr<const v1::Job>> Scheduler::JobSnapshot(const std::string& tenant,
                                                                       const std::string& job_id) const {
  absl::StatusOr<Found> found = Find(tenant, job_id);
  if (!found.ok()) return found.status();
  return found->snapshot.job;
}

absl::StatusOr<v1::Job> Scheduler::GetJob(const std::string& tenant, const std::string& job_id) const {
  absl::StatusOr<Found> found = Find(tenant, job_id);
  if (!found.ok()) return found.status();
  return Live(*found->snapshot.job, found->wait);
}

absl::StatusOr<std::shared_ptr<const std::string>> Scheduler::JobBytes(const std::string& tenant,
                                                                       const std::string& job_id) const {
  absl::StatusOr<Found> found = Find(tenant, job_id);
  if (!found.ok()) return found.status();
  return EntryOf(found->snapshot, found->wait);
}

std::string Scheduler::ListedJobs::Tail() const {
  std::string bytes;
  if (!next_page_token.empty()) {
    AppendLengthDelimited(&bytes, v1::ListJobsResponse::kNextPageTokenFieldNumber, next_page_token);
  }
  return bytes;
}


absl::StatusOr<Scheduler::ListedJobs> Scheduler::ListJobs(const std::string& tenant,
                                                          const v1::ListJobsRequest& request) const {
  int page_size = request.page_size() == 0 ? 50 : request.page_size();
  if (page_size < 0 || page_size > 1000) {
    return absl::InvalidArgumentError(absl::StrCat("page_size is ", request.page_size(), "; use 1 to 1000 (0 = 50)"));
  }
  int64_t before = INT64_MAX;
  if (!request.page_token().empty()) {
    if (!absl::SimpleAtoi(request.page_token(), &before) || before <= 0) {
      return absl::InvalidArgumentError("page_token is not one this server gave out; start without a token");
    }
  }
  std::set<int> states(request.states().begin(), request.states().end());
  std::vector<Found> page;  // the page, and one more if there is a next page
  {
    MutexLock lock(&snapshot_mutex_);
    // Newest first from the token on: the page is the first page_size jobs that match.
    for (auto it = by_order_.upper_bound(before); it != by_order_.end(); ++it) {
      const v1::Job& job = *it->second.job;
      if (!tenant.empty() && job.tenant() != tenant) continue;
      if (!states.empty() && !states.count(job.state())) continue;
      bool labels_match = true;
      for (const auto& [key, value] : request.labels()) {
        auto label = job.spec().labels().find(key);
        if (label == job.spec().labels().end() || label->second != value) {
          labels_match = false;
          break;
        }
      }
      if (!labels_match) continue;
      page.push_back(Found{it->second, WaitOfLocked(job)});
      if (static_cast<int>(page.size()) > page_size) break;
    }
  }
  ListedJobs listed;
  for (size_t i = 0; i < page.size() && static_cast<int>(i) < page_size; ++i) {
    listed.entries.push_back(EntryOf(page[i].snapshot, page[i].wait));
  }
  if (static_cast<int>(page.size()) > page_size) {
    listed.next_page_token = absl::StrCat(page[page_size - 1].snapshot.order);
  }
  return listed;
}

Scheduler::Stats Scheduler::stats() const {
  MutexLock lock(&snapshot_mutex_);
  return stats_;
}

// ---------------------------------------------------------------------------------------------------
// Placement.

void Scheduler::RequestPass() {
  if (pass_posted_) return;
  pass_posted_ = true;
  boost::asio::post(io_, [this] {
    pass_posted_ = false;
    Pass();
  });
}

JobDemand Scheduler::DemandOf(const JobEntry& entry) const {
  JobDemand demand;
  demand.id = entry.job.id();
  demand.tenant = entry.job.tenant();
  demand.priority = entry.job.spec().priority();
  demand.order = entry.order;
  demand.waited_seconds = SteadySeconds() - entry.queued_since;
  demand.budgets = entry.budgets;
  demand.requested = entry.requested;
  demand.floor = entry.floor;
  demand.pinned_device = entry.job.spec().device();
  return demand;
}

void Scheduler::Pass() {
  if (shutting_down_) return;
  // A slot freed here (a job ended, was cancelled or lost) takes the next unclaimed job at once.
  ClaimPass();
  std::vector<RunningJob> running;
  std::vector<JobDemand> queued;
  for (const auto& [id, entry] : jobs_) {
    if (entry->job.state() == v1::RUNNING) {
      RunningJob r;
      r.demand = DemandOf(*entry);
      r.device = entry->job.device();
      r.point = entry->point;
      r.busy = entry->pending_point >= 0 || entry->stopping || entry->job.cancel_requested();
      running.push_back(std::move(r));
    } else if (entry->job.state() == v1::QUEUED && entry->plan != nullptr && entry->worker == 0) {
      queued.push_back(DemandOf(*entry));
    }
  }
  PlacementOptions placement;
  placement.starvation_seconds = options_.starvation_seconds;
  const PlacementResult result = Place(options_.devices, running, queued, placement);
  for (const Decision& decision : result.decisions) {
    auto it = jobs_.find(decision.job_id);
    if (it == jobs_.end()) continue;
    switch (decision.kind) {
      case Decision::Kind::kAdmit:
        Admit(*it->second, decision.device, decision.point);
        break;
      case Decision::Kind::kShrink:
        Shrink(*it->second, decision.point, decision.reason);
        break;
      case Decision::Kind::kPreempt:
        Preempt(*it->second, decision.reason);
        break;
    }
  }
  for (const WaitInfo& info : result.waiting) {
    if (!info.never_fits) continue;
    auto it = jobs_.find(info.job_id);
    if (it != jobs_.end()) FinishJob(*it->second, v1::FAILED, absl::StrCat("it can never run here: ", info.reason));
  }
  RefreshWaiting(result);
  Flush();
  // Waiting jobs age: look again later so starvation reservations and reasons stay current.
  if (!result.waiting.empty() && aging_timer_ == nullptr) {
    aging_timer_ = std::make_unique<boost::asio::steady_timer>(io_, std::chrono::seconds(5));
    aging_timer_->async_wait([this](const boost::system::error_code& error) {
      aging_timer_.reset();
      if (!error) RequestPass();
    });
  }
}

void Scheduler::RefreshWaiting(const PlacementResult& result) {
  MutexLock lock(&snapshot_mutex_);
  waiting_.clear();
  for (const WaitInfo& info : result.waiting) waiting_[info.job_id] = info;
  stats_.queued = 0;
  stats_.running = 0;
  double oldest = 0;
  const double now = SteadySeconds();
  for (const auto& [id, entry] : jobs_) {
    if (entry->job.state() == v1::QUEUED) {
      ++stats_.queued;
      oldest = std::max(oldest, now - entry->queued_since);
    }
    if (entry->job.state() == v1::RUNNING) ++stats_.running;
  }
  if (metrics_ != nullptr) metrics_->SetOldestQueueWait(oldest);
}

wv1::PlanChoice Scheduler::ChoiceAt(const JobEntry& entry, int point) const {
  const wv1::ChainPoint& p = entry.plan->chain(point);
  const v1::Plan& plan = entry.plan->plan();
  wv1::PlanChoice choice;
  for (int l = 0; l < plan.layers_size(); ++l) {
    wv1::LayerChoice& layer = *choice.add_layers();
    layer.set_path(plan.layers(l).path());
    layer.set_probes(l < p.probes_size() ? p.probes(l) : 0);
    layer.set_mode(entry.plan->mode().empty() ? "independent" : entry.plan->mode());
  }
  choice.set_lean_layers(p.lean_layers());
  choice.set_batch_size(plan.batch_size());
  choice.set_budget_bytes(entry.budgets[point]);
  return choice;
}

v1::Plan Scheduler::PlanAt(const JobEntry& entry, int point) const {
  v1::Plan plan = entry.plan->plan();
  const wv1::ChainPoint& p = entry.plan->chain(point);
  const bool same = plan.predicted_peak_bytes() == p.peak_bytes() && plan.lean_layers() == p.lean_layers();
  plan.set_budget_bytes(entry.budgets[point]);
  plan.set_usable_bytes(static_cast<int64_t>(static_cast<double>(entry.budgets[point] - plan.loader_bytes()) *
                                             (1.0 - options_.planner_margin)));
  if (same) return plan;  // the worker's own plan, with its per-layer bytes
  // Another point of the chain: per-layer choices from the chain; per-layer bytes come with the
  // worker's plan once it runs.
  plan.set_predicted_peak_bytes(p.peak_bytes());
  plan.set_fidelity(p.fidelity());
  plan.set_lean_layers(p.lean_layers());
  plan.clear_table();
  plan.clear_peak_at();
  for (int l = 0; l < plan.layers_size(); ++l) {
    v1::LayerPlan& layer = *plan.mutable_layers(l);
    const int64_t r = l < p.probes_size() ? p.probes(l) : 0;
    layer.set_probes(r);
    layer.set_kind(r > 0 ? v1::LayerPlan::XCONV : (p.lean_layers() ? v1::LayerPlan::LEAN : v1::LayerPlan::EXACT));
    layer.clear_kept_bytes();
    layer.clear_fidelity();
  }
  return plan;
}

void Scheduler::Admit(JobEntry& entry, const std::string& device, int point) {
  v1::Job& job = entry.job;
  entry.point = point;
  entry.pending_point = -1;
  entry.stopping = false;
  entry.finished_cleanly = false;
  job.set_device(device);
  job.set_budget_bytes(entry.budgets[point]);
  if (job.start_time().seconds() == 0) *job.mutable_start_time() = NowTimestamp();
  wv1::WorkerRequest request;
  wv1::TrainCall& train = *request.mutable_train();
  *train.mutable_job() = entry.context;
  train.mutable_job()->set_device(device);
  train.mutable_job()->set_device_capacity_bytes(DeviceCapacity(options_.devices, device));
  train.mutable_job()->set_budget_bytes(entry.budgets[point]);
  *train.mutable_plan() = ChoiceAt(entry, point);
  train.set_checkpoint_dir(absl::StrCat(JobDir(job.id()), "/checkpoints"));
  train.set_final_weights_path(absl::StrCat(JobDir(job.id()), "/weights.pt"));
  const std::string id = job.id();
  WorkerHandlers handlers;
  handlers.on_message = [this, id](const wv1::WorkerMessage& message) { OnWorkerMessage(id, message); };
  handlers.on_exit = [this, id](const WorkerExit& exit) { OnWorkerExit(id, exit); };
  std::string reason = absl::StrCat("started on ", device, " with a budget of ", HumanBytes(entry.budgets[point]));
  if (point != entry.requested) {
    absl::StrAppend(&reason, " (shrunk from ", HumanBytes(entry.budgets[entry.requested]), " to run beside others)");
  }
  if (job.attempts() > 0) absl::StrAppend(&reason, "; attempt ", job.attempts() + 1);
  if (job.progress().last_checkpoint_step() > 0) {
    absl::StrAppend(&reason, "; resumes from step ", job.progress().last_checkpoint_step());
  }
  absl::StatusOr<WorkerId> worker = supervisor_.Start(id, request, std::move(handlers), About(job));
  if (!worker.ok()) {
    FinishJob(entry, v1::FAILED, absl::StrCat("cannot start a worker: ", worker.status().message()));
    return;
  }
  entry.worker = *worker;
  if (metrics_ != nullptr) {
    metrics_->WorkerStarted("train");
    metrics_->Admitted(device);
    metrics_->ObserveQueueWait(SteadySeconds() - entry.queued_since);
    retiring_.erase(id);  // its earlier run's series go now: JobStarted replaces them
    metrics_->JobStarted(id, job.tenant(), device, entry.budgets[point], PlanAt(entry, point).predicted_peak_bytes());
  }
  ChangeState(entry, v1::RUNNING, reason);
  if (point != entry.requested) {
    *job.mutable_plan() = PlanAt(entry, point);
    *AddEvent(entry).mutable_plan() = job.plan();
  }
  ScheduleCheckpointTimer(entry);
}

void Scheduler::Shrink(JobEntry& entry, int point, const std::string& reason) {
  if (entry.worker == 0 || point >= entry.point) return;
  wv1::WorkerRequest request;
  wv1::Control& control = *request.mutable_control();
  control.set_action(wv1::Control::REPLAN);
  *control.mutable_plan() = ChoiceAt(entry, point);
  control.set_reason(reason);
  if (!supervisor_.Send(entry.worker, request).ok()) return;
  entry.pending_point = point;
  LogAbout(About(entry.job), spdlog::level::info, "shrinking from {} to a budget of {}: {}",
           HumanBytes(entry.budgets[entry.point]), HumanBytes(entry.budgets[point]), reason);
}

void Scheduler::Preempt(JobEntry& entry, const std::string& reason) {
  if (entry.worker == 0 || entry.stopping) return;
  wv1::WorkerRequest request;
  request.mutable_control()->set_action(wv1::Control::STOP);
  request.mutable_control()->set_reason(reason);
  if (!supervisor_.Send(entry.worker, request).ok()) return;
  entry.stopping = true;
  entry.stop_reason = reason;
  LogAbout(About(entry.job), spdlog::level::info, "preempted (it checkpoints and goes back to the queue): {}", reason);
  if (metrics_ != nullptr) metrics_->Preempted();
}

void Scheduler::ScheduleCheckpointTimer(JobEntry& entry) {
  double every = entry.job.spec().checkpoint().every_seconds();
  if (every == 0) every = options_.default_checkpoint_seconds;
  if (every < 0) return;
  entry.checkpoint_timer = std::make_unique<boost::asio::steady_timer>(
      io_, std::chrono::milliseconds(static_cast<int64_t>(every * 1000)));
  const std::string id = entry.job.id();
  entry.checkpoint_timer->async_wait([this, id](const boost::system::error_code& error) {
    if (error) return;
    auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second->worker == 0) return;
    wv1::WorkerRequest request;
    request.mutable_control()->set_action(wv1::Control::CHECKPOINT);
    request.mutable_control()->set_reason("interval");
    LogAbout(About(it->second->job), spdlog::level::debug, "asking for a checkpoint (interval)");
    supervisor_.Send(it->second->worker, request).IgnoreError();
    ScheduleCheckpointTimer(*it->second);
  });
}

// ---------------------------------------------------------------------------------------------------
// Worker messages and exits.

void Scheduler::OnWorkerMessage(const std::string& job_id, const wv1::WorkerMessage& message) {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return;
  JobEntry& entry = *it->second;
  v1::Job& job = entry.job;
  v1::Progress& progress = *job.mutable_progress();
  switch (message.kind_case()) {
    case wv1::WorkerMessage::kStep: {
      const v1::StepMetrics& step = message.step();
      progress.set_step(step.step());
      progress.set_epoch(step.epoch());
      progress.set_loss(step.loss());
      progress.set_samples_per_second(step.samples_per_second());
      if (step.total_steps() > 0) progress.set_total_steps(step.total_steps());
      progress.set_measured_peak_bytes(std::max(progress.measured_peak_bytes(), step.measured_peak_bytes()));
      progress.set_predicted_peak_bytes(step.predicted_peak_bytes());
      if (step.step_seconds() > 0 && progress.total_steps() > step.step()) {
        progress.set_eta_seconds(static_cast<double>(progress.total_steps() - step.step()) * step.step_seconds());
      } else {
        progress.set_eta_seconds(0);
      }
      if (metrics_ != nullptr) metrics_->JobStep(job_id, step, progress.total_steps());
      *AddEvent(entry).mutable_step() = step;
      break;
    }
    case wv1::WorkerMessage::kValidation: {
      const v1::ValidationMetrics& validation = message.validation();
      progress.set_metric_name(validation.metric_name());
      progress.set_metric_value(validation.metric_value());
      *AddEvent(entry).mutable_validation() = validation;
      break;
    }
    case wv1::WorkerMessage::kCheckpoint: {
      progress.set_last_checkpoint_step(message.checkpoint().step());
      v1::CheckpointWritten& written = *AddEvent(entry).mutable_checkpoint();
      written.set_step(message.checkpoint().step());
      written.set_reason(message.checkpoint().reason());
      LogAbout(About(job), spdlog::level::info, "checkpoint at step {} ({})", message.checkpoint().step(),
               message.checkpoint().reason());
      break;
    }
    case wv1::WorkerMessage::kReplanned: {
      v1::Replanned replanned = message.replanned();
      if (metrics_ != nullptr) metrics_->Replanned(entry.pending_point >= 0 ? "shrink" : "closed_loop");
      if (entry.pending_point >= 0) {
        entry.point = entry.pending_point;
        entry.pending_point = -1;
      }
      job.set_budget_bytes(replanned.new_budget_bytes() > 0 ? replanned.new_budget_bytes() : entry.budgets[entry.point]);
      if (replanned.has_plan()) *job.mutable_plan() = replanned.plan();
      progress.set_predicted_peak_bytes(job.plan().predicted_peak_bytes());
      if (metrics_ != nullptr) metrics_->JobPlanned(job_id, job.budget_bytes(), progress.predicted_peak_bytes());
      LogAbout(About(job), spdlog::level::info, "re-planned to a budget of {}, predicted peak {} ({})",
               HumanBytes(job.budget_bytes()), HumanBytes(progress.predicted_peak_bytes()), replanned.reason());
      *AddEvent(entry).mutable_replanned() = std::move(replanned);
      RequestPass();
      break;
    }
    case wv1::WorkerMessage::kPlan: {
      *job.mutable_plan() = message.plan();
      progress.set_predicted_peak_bytes(message.plan().predicted_peak_bytes());
      if (metrics_ != nullptr) metrics_->JobPlanned(job_id, 0, progress.predicted_peak_bytes());
      *AddEvent(entry).mutable_plan() = message.plan();
      break;
    }
    case wv1::WorkerMessage::kFinished:
      entry.finished_cleanly = true;
      break;
    default:
      break;
  }
  Stage(entry);
}

void Scheduler::OnWorkerExit(const std::string& job_id, const WorkerExit& exit) {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return;
  JobEntry& entry = *it->second;
  entry.worker = 0;
  entry.checkpoint_timer.reset();
  entry.cancel_timer.reset();
  entry.pending_point = -1;
  v1::Job& job = entry.job;
  const wv1::Finished& finished = exit.finished_message;
  const auto code = exit.finished ? static_cast<absl::StatusCode>(finished.code()) : absl::StatusCode::kUnknown;
  if (exit.finished && finished.step() > 0) job.mutable_progress()->set_step(finished.step());
  const bool succeeded = exit.finished && code == absl::StatusCode::kOk && !finished.stopped();
  const char* outcome = "failed";  // the worker_exits metric's label
  if (job.cancel_requested() && !succeeded) {
    outcome = "cancelled";
    FinishJob(entry, v1::CANCELLED, absl::StrCat("cancelled at step ", job.progress().step()));
  } else if (succeeded) {
    outcome = "succeeded";
    for (const auto& [name, value] : finished.final_metrics()) (*job.mutable_final_metrics())[name] = value;
    if (!finished.weights_path().empty()) {
      ArtifactRecord record;
      record.tenant = job.tenant();
      record.path = absl::StrCat("jobs/", job.id(), "/weights.pt");
      v1::ArtifactInfo& info = record.info;
      info.set_id(NewId("art-"));
      info.set_name(absl::StrCat(job.id(), "-weights.pt"));
      // A TorchScript module goes back as TorchScript (it loads in plain PyTorch); zoo nets as weights.
      info.set_kind(job.spec().model().name() == "torchscript" ? "torchscript" : "weights");
      info.set_job_id(job.id());
      *info.mutable_create_time() = NowTimestamp();
      const std::string full = absl::StrCat(options_.data_dir, "/", record.path);
      std::error_code error;
      info.set_size_bytes(static_cast<int64_t>(std::filesystem::file_size(full, error)));
      absl::StatusOr<std::string> sha = Sha256File(full);
      if (!error && sha.ok()) {
        info.set_sha256(*sha);
        if (store_.PutArtifact(record).ok()) job.set_weights_artifact_id(info.id());
      }
    }
    RemoveAll(absl::StrCat(JobDir(job.id()), "/checkpoints")).IgnoreError();
    FinishJob(entry, v1::SUCCEEDED, absl::StrCat("finished after step ", job.progress().step()));
  } else if (exit.finished && finished.stopped()) {
    outcome = "stopped";
    entry.stopping = false;
    entry.queued_since = SteadySeconds();
    entry.point = entry.requested;
    job.set_device("");
    ChangeState(entry, v1::QUEUED,
                absl::StrCat(entry.stop_reason.empty() ? "stopped" : entry.stop_reason, "; resumes from its checkpoint at step ",
                             job.progress().last_checkpoint_step()));
    entry.stop_reason.clear();
  } else if (shutting_down_) {
    outcome = "stopped";
    job.set_device("");
    ChangeState(entry, v1::QUEUED, absl::StrCat("the server shut down (", exit.reason,
                                                "); the job resumes from its checkpoint at step ",
                                                job.progress().last_checkpoint_step()));
  } else if (exit.finished && (code == absl::StatusCode::kInvalidArgument ||
                               code == absl::StatusCode::kFailedPrecondition || code == absl::StatusCode::kNotFound ||
                               code == absl::StatusCode::kOutOfRange)) {
    // The job itself is wrong (bad data, divergence): a retry would fail the same way.
    outcome = "job_error";
    v1::AttemptFailed& failed = *AddEvent(entry).mutable_attempt_failed();
    failed.set_attempt(job.attempts() + 1);
    failed.set_reason(finished.message());
    failed.set_will_retry(false);
    FinishJob(entry, v1::FAILED, finished.message());
  } else {
    const int attempt = job.attempts() + 1;
    job.set_attempts(attempt);
    std::string reason = exit.reason;
    if (!exit.finished && !exit.log_tail.empty()) absl::StrAppend(&reason, "; its log ends: ", exit.log_tail);
    const bool retry = attempt < options_.max_attempts;
    v1::AttemptFailed& failed = *AddEvent(entry).mutable_attempt_failed();
    failed.set_attempt(attempt);
    failed.set_reason(reason);
    failed.set_will_retry(retry);
    if (retry) {
      if (metrics_ != nullptr) metrics_->WorkerRestarted(exit.finished ? "error" : "crashed");
      entry.queued_since = SteadySeconds();
      entry.point = entry.requested;
      job.set_device("");
      ChangeState(entry, v1::QUEUED, absl::StrCat("attempt ", attempt, " failed (", reason, "); retrying from step ",
                                                  job.progress().last_checkpoint_step()));
    } else {
      FinishJob(entry, v1::FAILED, absl::StrCat("failed ", attempt, " attempts; the last: ", reason));
    }
  }
  if (metrics_ != nullptr) metrics_->WorkerExited("train", outcome);
  Stage(entry);
  Flush();
  if (shutting_down_) {
    bool any = false;
    for (const auto& [id, e] : jobs_) any = any || e->worker != 0;
    if (!any && shutdown_done_) {
      shutdown_timer_.reset();
      auto done = std::move(shutdown_done_);
      shutdown_done_ = nullptr;
      done();
    }
    return;
  }
  RequestPass();
}

void Scheduler::FinishJob(JobEntry& entry, v1::JobState state, const std::string& reason) {
  v1::Job& job = entry.job;
  *job.mutable_end_time() = NowTimestamp();
  if (state == v1::FAILED) job.set_failure_reason(reason);
  job.set_device("");
  job.mutable_progress()->set_eta_seconds(0);
  ChangeState(entry, state, reason);
}

absl::Status Scheduler::Refused(const char* reason, absl::Status status) const {
  if (metrics_ != nullptr) metrics_->SubmitRefused(reason);
  return status;
}

void Scheduler::RetireSeries(const std::string& job_id) {
  auto& timer = retiring_[job_id];
  timer = std::make_unique<boost::asio::steady_timer>(
      io_, std::chrono::milliseconds(static_cast<int64_t>(options_.finished_series_seconds * 1000)));
  timer->async_wait([this, job_id](const boost::system::error_code& error) {
    if (error) return;  // cancelled: the job runs again (Admit) or the scheduler is going
    metrics_->RemoveJob(job_id);
    retiring_.erase(job_id);
  });
}

// ---------------------------------------------------------------------------------------------------
// Events and commits.

v1::JobEvent& Scheduler::AddEvent(JobEntry& entry) {
  v1::Job& job = entry.job;
  job.set_last_sequence(job.last_sequence() + 1);
  v1::JobEvent& event = entry.unsaved.emplace_back();
  event.set_sequence(job.last_sequence());
  *event.mutable_time() = NowTimestamp();
  return event;
}

void Scheduler::ChangeState(JobEntry& entry, v1::JobState to, const std::string& reason) {
  v1::Job& job = entry.job;
  v1::StateChange& change = *AddEvent(entry).mutable_state();
  change.set_from_state(job.state());
  change.set_to_state(to);
  change.set_reason(reason);
  job.set_state(to);
  if (metrics_ != nullptr) {
    metrics_->JobStateChanged(job.tenant(), change.from_state(), to);
    if (change.from_state() == v1::RUNNING && to != v1::RUNNING) {
      metrics_->JobStopped(job.id());
      RetireSeries(job.id());
    }
  }
  Stage(entry);
  LogAbout(About(job), to == v1::FAILED ? spdlog::level::warn : spdlog::level::info, "{} -> {}: {}",
           StateName(change.from_state()), StateName(to), reason);
}

void Scheduler::Stage(JobEntry& entry) {
  if (!entry.staged) {
    entry.staged = true;
    staged_.push_back(entry.job.id());
  }
  if (!flush_posted_) {
    flush_posted_ = true;
    boost::asio::post(io_, [this] { Flush(); });
  }
}

void Scheduler::Flush() {
  flush_posted_ = false;
  if (staged_.empty()) return;
  std::vector<JobWrite> writes;
  std::vector<JobEntry*> entries;
  for (const std::string& id : staged_) {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    JobEntry& entry = *it->second;
    *entry.job.mutable_update_time() = NowTimestamp();
    JobWrite& write = writes.emplace_back();
    write.job = entry.job;
    write.events = entry.unsaved;
    entries.push_back(&entry);
  }
  const auto commit_start = SteadyClock::now();
  absl::Status committed = store_.Commit(writes);
  if (metrics_ != nullptr) {
    metrics_->ObserveStoreWrite(Metrics::StoreOp::kCommit,
                                std::chrono::duration<double>(SteadyClock::now() - commit_start).count());
  }
  std::vector<bool> written(writes.size(), committed.ok());
  std::vector<std::string> lost;
  if (Shared() && committed.code() == absl::StatusCode::kAborted) {
    // Some job is no longer this replica's (the store re-queued it when this replica's lease ran
    // out): each write alone, and the refused ones' jobs are let go.
    committed = absl::OkStatus();
    for (size_t i = 0; i < writes.size(); ++i) {
      absl::Status one = store_.Commit({writes[i]});
      written[i] = one.ok();
      if (one.code() == absl::StatusCode::kAborted) {
        lost.push_back(writes[i].job.id());
      } else if (!one.ok()) {
        committed = one;
      }
    }
  }
  staged_.clear();
  for (size_t i = 0; i < entries.size(); ++i) {
    if (written[i] || std::find(lost.begin(), lost.end(), writes[i].job.id()) != lost.end()) continue;
    staged_.push_back(writes[i].job.id());  // kept staged for the retry below
  }
  if (absl::Status s = committed; !s.ok()) {
    // Nothing is published until it is written: keep the changes staged and try again shortly.
    spdlog::error("store commit of {} job(s) failed: {}; retrying", staged_.size(), std::string(s.message()));
    auto retry = std::make_shared<boost::asio::steady_timer>(io_, std::chrono::milliseconds(500));
    retry->async_wait([this, retry](const boost::system::error_code&) { Flush(); });
    flush_posted_ = true;
  }
  for (size_t i = 0; i < entries.size(); ++i) {
    if (written[i]) SetSnapshot(entries[i]->job, entries[i]->order);
  }
  {
    MutexLock lock(&snapshot_mutex_);
    for (size_t i = 0; i < entries.size(); ++i) {
      if (written[i] && entries[i]->job.state() != v1::QUEUED) waiting_.erase(entries[i]->job.id());
    }
  }
  for (size_t i = 0; i < entries.size(); ++i) {
    if (!written[i]) continue;
    entries[i]->staged = false;
    entries[i]->unsaved.clear();
    publisher_(writes[i].job, writes[i].events);
  }
  for (const std::string& id : lost) LoseJob(id, "the store refused its write: another replica owns it now");
}

// ---------------------------------------------------------------------------------------------------
// Shutdown.

void Scheduler::Shutdown(double grace_seconds, std::function<void()> done) {
  boost::asio::post(io_, [this, grace_seconds, done = std::move(done)]() mutable {
    shutting_down_ = true;
    if (Shared()) {
      // Once its workers have checkpointed, the replica gives up its lease: the others take its jobs
      // at their next lease tick instead of after lease_seconds.
      lease_timer_.reset();
      done = [this, done = std::move(done)] {
        if (absl::Status s = store_.Heartbeat(options_.replica_id, 0); !s.ok()) {
          spdlog::warn("replica {}: giving up its lease failed ({}); the others take its jobs once it runs out",
                       options_.replica_id, std::string(s.message()));
        }
        done();
      };
    }
    aging_timer_.reset();
    // Planning calls end now: queued ones are refused, running planners are killed (their callers
    // get Unavailable through the exit handler).
    std::vector<std::string> queued(plan_queue_.begin(), plan_queue_.end());
    plan_queue_.clear();
    for (const std::string& key : queued) {
      OnPlanFinished(key, absl::UnavailableError("the server is shutting down; plan again shortly"));
    }
    for (auto& [key, call] : plan_calls_) {
      if (call->worker != 0) supervisor_.Kill(call->worker);
    }
    bool any = false;
    for (auto& [id, entry] : jobs_) {
      entry->checkpoint_timer.reset();
      if (entry->worker == 0) continue;
      any = true;
      if (entry->job.cancel_requested()) continue;
      entry->stop_reason = "the server is shutting down";
      wv1::WorkerRequest request;
      request.mutable_control()->set_action(wv1::Control::STOP);
      request.mutable_control()->set_reason(entry->stop_reason);
      LogAbout(About(entry->job), spdlog::level::info, "asking its worker to checkpoint and stop: {}", entry->stop_reason);
      if (!supervisor_.Send(entry->worker, request).ok()) supervisor_.Kill(entry->worker);
      entry->stopping = true;
    }
    Flush();
    if (!any) return done();
    shutdown_done_ = std::move(done);
    shutdown_timer_ = std::make_unique<boost::asio::steady_timer>(
        io_, std::chrono::milliseconds(static_cast<int64_t>(grace_seconds * 1000)));
    shutdown_timer_->async_wait([this](const boost::system::error_code& error) {
      if (error) return;
      spdlog::warn("shutdown grace period over: killing the workers still running");
      supervisor_.KillAll();
    });
  });
}

}  // namespace xtrain::server
