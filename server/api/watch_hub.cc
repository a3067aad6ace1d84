#include "server/api/watch_hub.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/common/mutex.h"
#include "spdlog/spdlog.h"

namespace xtrain::server {
namespace v1 = ::xtrain::v1;

namespace {

bool IsFinal(const v1::JobEvent& event) {
  if (!event.has_state()) return false;
  const v1::JobState to = event.state().to_state();
  return to == v1::SUCCEEDED || to == v1::FAILED || to == v1::CANCELLED;
}

}  // namespace

struct WatchHub::JobLog {
  absl::Mutex mutex;
  std::vector<std::shared_ptr<const v1::JobEvent>> events ABSL_GUARDED_BY(mutex);  // [i]->sequence() == i + 1
  int64_t last_step_index ABSL_GUARDED_BY(mutex) = -1;  // index of the newest step event
  bool ended ABSL_GUARDED_BY(mutex) = false;            // the final event is in
  bool shut_down ABSL_GUARDED_BY(mutex) = false;
  std::set<Watcher*> watchers ABSL_GUARDED_BY(mutex);

  void Append(std::shared_ptr<const v1::JobEvent> event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex) {
    if (event->sequence() != static_cast<int64_t>(events.size()) + 1) return;  // a repeat (loaded and published)
    if (event->has_step()) last_step_index = static_cast<int64_t>(events.size());
    if (IsFinal(*event)) ended = true;
    events.push_back(std::move(event));
  }
};

// One WatchJob stream: a cursor into its job's log with at most one write in flight.
class WatchHub::Watcher : public grpc::ServerWriteReactor<v1::WatchJobResponse> {
 public:
  enum class Action { kNone, kWrite, kFinish };

  Watcher(WatchHub& hub, std::shared_ptr<JobLog> log, int64_t next) : hub_(hub), log_(std::move(log)), next_(next) {}

  // Decides what to do next; the caller performs it after releasing the log's mutex.
  Action NextLocked(int64_t coalesce_lag, grpc::Status* status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(log_->mutex) {
    if (finish_called_ || in_flight_) return Action::kNone;
    if (cancelled_) return FinishLocked(grpc::Status::CANCELLED, status);
    if (log_->shut_down) {
      return FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                       absl::StrCat("the server is shutting down; reconnect with from_sequence = ", next_)),
                          status);
    }
    const int64_t size = static_cast<int64_t>(log_->events.size());
    if (next_ > size) {
      return log_->ended ? FinishLocked(grpc::Status::OK, status) : Action::kNone;
    }
    int64_t index = next_ - 1;
    if (index >= backlog_ && size - index > coalesce_lag) {
      // Behind on live events: skip step events older than the newest one; everything else is
      // delivered. The backlog the watch asked for is never coalesced (a reconnecting client sees
      // one log without gaps).
      while (index < log_->last_step_index && log_->events[index]->has_step()) {
        ++index;
        ++skipped_;
      }
    }
    response_.Clear();
    *response_.mutable_event() = *log_->events[index];
    response_.set_coalesced(skipped_);
    hub_.coalesced_ += skipped_;
    skipped_ = 0;
    next_ = index + 2;
    in_flight_ = true;
    return Action::kWrite;
  }

  void SetBacklogLocked(int64_t size) ABSL_EXCLUSIVE_LOCKS_REQUIRED(log_->mutex) { backlog_ = size; }

  void Perform(Action action, const grpc::Status& status) {
    if (action == Action::kWrite) StartWrite(&response_);
    if (action == Action::kFinish) Finish(status);
  }

  void OnWriteDone(bool ok) override {
    Action action;
    grpc::Status status;
    {
      MutexLock lock(&log_->mutex);
      in_flight_ = false;
      if (!ok) cancelled_ = true;  // the stream broke: the client went away
      action = NextLocked(hub_.options_.coalesce_lag, &status);
    }
    Perform(action, status);
  }

  void OnCancel() override {
    Action action;
    grpc::Status status;
    {
      MutexLock lock(&log_->mutex);
      cancelled_ = true;
      action = NextLocked(hub_.options_.coalesce_lag, &status);
    }
    Perform(action, status);
  }

  void OnDone() override {
    hub_.Detach(log_, this);
    delete this;
  }

  // Ends the stream with `result` (performed by the caller, once).
  Action FinishLocked(grpc::Status result, grpc::Status* status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(log_->mutex) {
    if (finish_called_) return Action::kNone;
    finish_called_ = true;
    *status = std::move(result);
    return Action::kFinish;
  }

 private:

  WatchHub& hub_;
  std::shared_ptr<JobLog> log_;
  int64_t next_;                 // the sequence number to send next
  bool in_flight_ = false;       // a write is outstanding (response_ belongs to gRPC)
  bool finish_called_ = false;
  bool cancelled_ = false;
  int64_t skipped_ = 0;          // step events skipped since the last write
  int64_t backlog_ = 0;          // the log's size when the watch began: replayed whole
  v1::WatchJobResponse response_;
};

WatchHub::WatchHub(JobStore& store, WatchHubOptions options) : store_(store), options_(options) {}

WatchHub::~WatchHub() = default;

std::shared_ptr<WatchHub::JobLog> WatchHub::LogFor(const std::string& job_id) {
  MutexLock lock(&mutex_);
  auto& log = logs_[job_id];
  if (log != nullptr) return log;
  log = std::make_shared<JobLog>();
  absl::StatusOr<std::vector<v1::JobEvent>> events = store_.ReadEvents(job_id, 1);
  if (!events.ok()) {
    spdlog::error("reading the event log of job {} failed: {}", job_id, std::string(events.status().message()));
  } else {
    MutexLock log_lock(&log->mutex);
    for (v1::JobEvent& event : *events) log->Append(std::make_shared<const v1::JobEvent>(std::move(event)));
  }
  return log;
}

void WatchHub::Publish(const v1::Job& job, const std::vector<v1::JobEvent>& events) {
  if (events.empty()) return;
  std::shared_ptr<JobLog> log;
  {
    MutexLock lock(&mutex_);
    auto it = logs_.find(job.id());
    if (it == logs_.end()) return;  // nobody watches: the store has it for later watchers
    log = it->second;
  }
  std::vector<std::pair<Watcher*, grpc::Status>> finishes;
  std::vector<Watcher*> writes;
  bool drop = false;
  {
    MutexLock lock(&log->mutex);
    for (const v1::JobEvent& event : events) log->Append(std::make_shared<const v1::JobEvent>(event));
    for (Watcher* watcher : log->watchers) {
      grpc::Status status;
      const Watcher::Action action = watcher->NextLocked(options_.coalesce_lag, &status);
      if (action == Watcher::Action::kWrite) writes.push_back(watcher);
      if (action == Watcher::Action::kFinish) finishes.emplace_back(watcher, std::move(status));
    }
    drop = log->ended && log->watchers.empty();
  }
  for (Watcher* watcher : writes) watcher->Perform(Watcher::Action::kWrite, grpc::Status::OK);
  for (auto& [watcher, status] : finishes) watcher->Perform(Watcher::Action::kFinish, status);
  if (drop) {
    MutexLock lock(&mutex_);
    logs_.erase(job.id());
  }
}

grpc::ServerWriteReactor<v1::WatchJobResponse>* WatchHub::Watch(const std::string& job_id, int64_t from_sequence) {
  bool shut_down;
  {
    MutexLock lock(&mutex_);
    shut_down = shut_down_;
  }
  std::shared_ptr<JobLog> log = shut_down ? std::make_shared<JobLog>() : LogFor(job_id);
  const int64_t next = std::max<int64_t>(1, from_sequence);
  auto* watcher = new Watcher(*this, log, next);
  ++watchers_;
  Watcher::Action action = Watcher::Action::kNone;
  grpc::Status status;
  {
    MutexLock lock(&log->mutex);
    const int64_t size = static_cast<int64_t>(log->events.size());
    log->watchers.insert(watcher);
    watcher->SetBacklogLocked(size);
    if (shut_down) log->shut_down = true;
    if (next > size + 1) {
      action = watcher->FinishLocked(
          grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                       absl::StrCat("from_sequence ", from_sequence, " is past the end of job ", job_id,
                                    "'s log, which ends at ", size, "; watch from ", size + 1, " or less")),
          &status);
    } else {
      action = watcher->NextLocked(options_.coalesce_lag, &status);
    }
  }
  watcher->Perform(action, status);
  return watcher;
}

void WatchHub::Detach(const std::shared_ptr<JobLog>& log, Watcher* watcher) {
  --watchers_;
  MutexLock lock(&mutex_);
  bool drop = false;
  {
    MutexLock log_lock(&log->mutex);
    log->watchers.erase(watcher);
    drop = log->ended && log->watchers.empty();
  }
  if (drop) {
    for (auto it = logs_.begin(); it != logs_.end(); ++it) {
      if (it->second == log) {
        logs_.erase(it);
        break;
      }
    }
  }
}

void WatchHub::Shutdown() {
  std::vector<std::shared_ptr<JobLog>> logs;
  {
    MutexLock lock(&mutex_);
    shut_down_ = true;
    for (auto& [id, log] : logs_) logs.push_back(log);
  }
  for (const std::shared_ptr<JobLog>& log : logs) {
    std::vector<std::pair<Watcher*, grpc::Status>> finishes;
    {
      MutexLock lock(&log->mutex);
      log->shut_down = true;
      for (Watcher* watcher : log->watchers) {
        grpc::Status status;
        if (watcher->NextLocked(options_.coalesce_lag, &status) == Watcher::Action::kFinish) {
          finishes.emplace_back(watcher, std::move(status));
        }
      }
    }
    for (auto& [watcher, status] : finishes) watcher->Perform(Watcher::Action::kFinish, status);
  }
}

}  // namespace xtrain::server
