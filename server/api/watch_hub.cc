#include "server/api/watch_hub.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <random>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/common/logging.h"
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

// The WatchJobResponse of `event`, serialized: what every watcher of the event sends.
grpc::Slice ResponseBytes(const v1::JobEvent& event) {
  v1::WatchJobResponse response;
  *response.mutable_event() = event;
  return grpc::Slice(response.SerializeAsString());
}

// A WatchJobResponse with only `coalesced` set. Sent after an event's bytes, the two parse as one
// response (protobuf merges concatenated messages), so a watcher's count costs a few bytes of its own.
grpc::Slice CoalescedBytes(int64_t coalesced) {
  v1::WatchJobResponse response;
  response.set_coalesced(coalesced);
  return grpc::Slice(response.SerializeAsString());
}

}  // namespace

struct WatchHub::JobLog {
  // One event of the log, serialized once and shared by every watcher's writes.
  struct Entry {
    grpc::Slice response;
    bool step = false;
    std::chrono::steady_clock::time_point appended;  // when the hub got it: a step's age for coalesce_age
  };

  absl::Mutex mutex;
  std::vector<Entry> events ABSL_GUARDED_BY(mutex);     // [i] is sequence i + 1
  int64_t last_step_index ABSL_GUARDED_BY(mutex) = -1;  // index of the newest step event
  int64_t last_other_index ABSL_GUARDED_BY(mutex) = -1;  // index of the newest event that is not a step
  bool ended ABSL_GUARDED_BY(mutex) = false;            // the final event is in
  bool shut_down ABSL_GUARDED_BY(mutex) = false;
  int64_t watchers ABSL_GUARDED_BY(mutex) = 0;          // attached: the log is dropped at 0 once ended
  std::vector<Watcher*> idle ABSL_GUARDED_BY(mutex);    // caught up, nothing in flight: Publish wakes them
  // Held back by step_rate with steps unsent: Publish and the tick wake those whose turn has come,
  // and a publish of any other event wakes them all.
  std::vector<Watcher*> held ABSL_GUARDED_BY(mutex);
  std::chrono::steady_clock::time_point last_publish ABSL_GUARDED_BY(mutex);  // when events were last appended

  // Returns false for a repeat (an event both loaded from the store and published).
  bool Append(const v1::JobEvent& event, grpc::Slice response, std::chrono::steady_clock::time_point now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex) {
    if (event.sequence() != static_cast<int64_t>(events.size()) + 1) return false;
    if (event.has_step()) last_step_index = static_cast<int64_t>(events.size());
    if (!event.has_step()) last_other_index = static_cast<int64_t>(events.size());
    if (IsFinal(event)) ended = true;
    events.push_back(Entry{std::move(response), event.has_step(), now});
    return true;
  }

  // Whether a watcher whose next event is events[index] is behind (WatchHubOptions): more than
  // coalesce_lag events from the end, or that event a step older than coalesce_age while a newer step
  // exists (only then can skipping help, so only then is the clock read).
  bool BehindLocked(int64_t index, const WatchHubOptions& options) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex) {
    if (static_cast<int64_t>(events.size()) - index > options.coalesce_lag) return true;
    if (options.coalesce_age <= std::chrono::steady_clock::duration::zero()) return false;
    if (index >= last_step_index || !events[index].step) return false;
    return std::chrono::steady_clock::now() - events[index].appended > options.coalesce_age;
  }
};

// One WatchJob stream: a cursor into its job's log with at most one write in flight. At any time one
// party owns it: the thread inside NextLocked (the watch's start, its OnWriteDone, or the fan-out
// thread waking it), the log's idle list, or gRPC while its write is in flight.
class WatchHub::Watcher : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  enum class Action { kNone, kWrite, kFinish };

  Watcher(WatchHub& hub, std::shared_ptr<JobLog> log, int64_t next, std::shared_ptr<void> lease)
      : hub_(hub), log_(std::move(log)), lease_(std::move(lease)), next_(next) {}

  // Decides what to do next: a write (the event is kept for Perform), the end of the stream, or
  // nothing for now (the watcher joins the idle list). The caller performs it after releasing the
  // log's mutex.
  Action NextLocked(grpc::Status* status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(log_->mutex) {
    if (finish_called_ || in_flight_ || idle_index_ >= 0 || waking_) return Action::kNone;
    if (cancelled_) return FinishLocked(grpc::Status::CANCELLED, status);
    if (log_->shut_down) {
      return FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                       absl::StrCat("the server is shutting down; reconnect with from_sequence = ", next_)),
                          status);
    }
    const int64_t size = static_cast<int64_t>(log_->events.size());
    if (next_ > size) {
      if (log_->ended) return FinishLocked(grpc::Status::OK, status);
      idle_index_ = static_cast<int64_t>(log_->idle.size());
      log_->idle.push_back(this);
      return Action::kNone;
    }
    int64_t index = next_ - 1;
    const bool live = index >= backlog_;  // the backlog the watch asked for is never coalesced or held
    bool skip = live && log_->BehindLocked(index, hub_.options_);
    std::chrono::steady_clock::time_point now;
    const std::chrono::steady_clock::duration interval = hub_.StepInterval();
    const bool paced = live && log_->events[index].step && interval > std::chrono::steady_clock::duration::zero();
    if (paced) {
      now = std::chrono::steady_clock::now();
      if (now < next_step_due_ && index > log_->last_other_index) {
        // Only steps to send and its turn has not come (step_rate): wait on the held list for the
        // publish or tick after its turn, then send the newest step.
        idle_index_ = static_cast<int64_t>(log_->held.size());
        log_->held.push_back(this);
        held_ = true;
        return Action::kNone;
      }
      skip = true;  // its turn: the newest step, not the oldest
    }
    if (skip) {
      // Behind on live events (by count or by age), or paced: skip step events older than the newest
      // one; everything else is delivered (a reconnecting client sees one log without gaps).
      while (index < log_->last_step_index && log_->events[index].step) {
        ++index;
        ++skipped_;
      }
    }
    if (paced && log_->events[index].step) next_step_due_ = now + Jittered(interval);
    pending_ = log_->events[index].response;
    pending_coalesced_ = skipped_;
    hub_.coalesced_ += skipped_;
    skipped_ = 0;
    next_ = index + 2;
    in_flight_ = true;
    return Action::kWrite;
  }

  // Taken off the idle list by Publish or Shutdown, for the fan-out thread to wake.
  void TakeIdleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(log_->mutex) {
    idle_index_ = -1;
    waking_ = true;
  }
  // Moves the held watchers whose turn has come by `now` (all of them with `all`) to `out`, taken as by
  // TakeIdleLocked.
  static void TakeHeldLocked(JobLog& log, std::chrono::steady_clock::time_point now, bool all,
                             std::vector<Watcher*>& out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(log.mutex) {
    std::vector<Watcher*>& held = log.held;
    for (size_t i = 0; i < held.size();) {
      Watcher* watcher = held[i];
      if (!all && now < watcher->next_step_due_) {
        ++i;
        continue;
      }
      watcher->RemoveFromIdleLocked();  // moves the last one into [i]
      watcher->TakeIdleLocked();
      out.push_back(watcher);
    }
  }
  // The fan-out thread owns it again.
  void WokenLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(log_->mutex) { waking_ = false; }

  void SetBacklogLocked(int64_t size) ABSL_EXCLUSIVE_LOCKS_REQUIRED(log_->mutex) { backlog_ = size; }

  // Ends the stream with `result` (performed by the caller, once).
  Action FinishLocked(grpc::Status result, grpc::Status* status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(log_->mutex) {
    if (finish_called_) return Action::kNone;
    finish_called_ = true;
    *status = std::move(result);
    return Action::kFinish;
  }

  // Only the party that got `action` from NextLocked calls this: pending_ is its until the write starts.
  void Perform(Action action, const grpc::Status& status) {
    if (action == Action::kWrite) {
      grpc::Slice parts[2] = {std::move(pending_), pending_coalesced_ > 0 ? CoalescedBytes(pending_coalesced_) : grpc::Slice()};
      response_ = grpc::ByteBuffer(parts, pending_coalesced_ > 0 ? 2 : 1);
      HandOver(this);
      StartWrite(&response_);
    }
    if (action == Action::kFinish) {
      HandOver(this);
      Finish(status);
    }
  }

  void OnWriteDone(bool ok) override {
    TakeOver(this);
    Action action;
    grpc::Status status;
    {
      MutexLock lock(&log_->mutex);
      in_flight_ = false;
      if (!ok) cancelled_ = true;  // the stream broke: the client went away
      action = NextLocked(&status);
    }
    Perform(action, status);
  }

  void OnCancel() override {
    TakeOver(this);
    Action action = Action::kNone;
    grpc::Status status;
    {
      MutexLock lock(&log_->mutex);
      cancelled_ = true;
      // An idle watcher ends now; one in flight or being woken ends when its owner looks next.
      if (idle_index_ >= 0) {
        RemoveFromIdleLocked();
        action = FinishLocked(grpc::Status::CANCELLED, &status);
      }
    }
    Perform(action, status);
  }

  void OnDone() override {
    TakeOver(this);
    hub_.Detach(log_);
    delete this;
  }

 private:
  void RemoveFromIdleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(log_->mutex) {
    std::vector<Watcher*>& list = held_ ? log_->held : log_->idle;
    Watcher* last = list.back();
    list[idle_index_] = last;
    last->idle_index_ = idle_index_;
    list.pop_back();
    idle_index_ = -1;
    held_ = false;
  }

  // `interval` times a random factor in [0.5, 1.5): watchers that started together drift apart, so
  // the fan-out's writes spread over the interval instead of coming all at once.
  static std::chrono::steady_clock::duration Jittered(std::chrono::steady_clock::duration interval) {
    thread_local std::minstd_rand random(static_cast<uint32_t>(
        std::hash<std::thread::id>()(std::this_thread::get_id()) ^
        static_cast<size_t>(std::chrono::steady_clock::now().time_since_epoch().count())));
    return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        interval * (0.5 + static_cast<double>(random() - std::minstd_rand::min()) /
                              static_cast<double>(std::minstd_rand::max() - std::minstd_rand::min() + 1)));
  }

  WatchHub& hub_;
  std::shared_ptr<JobLog> log_;
  std::shared_ptr<void> lease_;  // released with the watcher
  int64_t next_ ABSL_GUARDED_BY(log_->mutex);             // the sequence number to send next
  bool in_flight_ ABSL_GUARDED_BY(log_->mutex) = false;   // a write is outstanding (response_ is gRPC's)
  int64_t idle_index_ ABSL_GUARDED_BY(log_->mutex) = -1;  // its place in log_->idle or held; -1 in neither
  bool waking_ ABSL_GUARDED_BY(log_->mutex) = false;      // queued for the fan-out thread
  bool finish_called_ ABSL_GUARDED_BY(log_->mutex) = false;
  bool cancelled_ ABSL_GUARDED_BY(log_->mutex) = false;
  int64_t skipped_ ABSL_GUARDED_BY(log_->mutex) = 0;      // step events skipped since the last write
  int64_t backlog_ ABSL_GUARDED_BY(log_->mutex) = 0;      // the log's size when the watch began: replayed whole
  bool held_ ABSL_GUARDED_BY(log_->mutex) = false;        // on log_->held rather than log_->idle
  // When it may next be sent a live step (step_rate); the first one goes at once.
  std::chrono::steady_clock::time_point next_step_due_ ABSL_GUARDED_BY(log_->mutex);
  grpc::Slice pending_;            // the event NextLocked chose, until Perform starts its write
  int64_t pending_coalesced_ = 0;  // its coalesced count
  grpc::ByteBuffer response_;      // the write in flight
};

WatchHub::WatchHub(JobStore& store, WatchHubOptions options)
    : store_(store), options_(options), fan_out_([this] { FanOut(); }) {}

WatchHub::~WatchHub() {
  {
    MutexLock lock(&wake_mutex_);
    stop_ = true;
    wake_cv_.Signal();
  }
  fan_out_.join();
}

std::shared_ptr<WatchHub::JobLog> WatchHub::LogFor(const std::string& job_id, const std::string& tenant) {
  MutexLock lock(&mutex_);
  auto& log = logs_[job_id];
  if (log != nullptr) return log;
  log = std::make_shared<JobLog>();
  absl::StatusOr<std::vector<v1::JobEvent>> events = store_.ReadEvents(job_id, 1);
  if (!events.ok()) {
    LogAbout({.job_id = job_id, .tenant = tenant}, spdlog::level::err, "reading the job's event log failed: {}",
             std::string(events.status().message()));
  } else {
    MutexLock log_lock(&log->mutex);
    // Stamped now, however old: loaded events are in every watch's backlog, which is never coalesced.
    const auto now = std::chrono::steady_clock::now();
    for (const v1::JobEvent& event : *events) log->Append(event, ResponseBytes(event), now);
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
  std::vector<grpc::Slice> responses;
  responses.reserve(events.size());
  for (const v1::JobEvent& event : events) responses.push_back(ResponseBytes(event));
  Wake wake{log, {}};
  bool drop = false;
  {
    MutexLock lock(&log->mutex);
    const auto now = std::chrono::steady_clock::now();
    bool appended = false;
    bool other = false;  // an event that is not a step: no watcher may be held back from it
    for (size_t i = 0; i < events.size(); ++i) {
      const bool added = log->Append(events[i], std::move(responses[i]), now);
      appended |= added;
      other |= added && !events[i].has_step();
    }
    if (appended) {
      log->last_publish = now;
      wake.watchers.swap(log->idle);
      for (Watcher* watcher : wake.watchers) watcher->TakeIdleLocked();
      Watcher::TakeHeldLocked(*log, now, other, wake.watchers);
    }
    drop = log->ended && log->watchers == 0;
  }
  if (!wake.watchers.empty()) Enqueue(std::move(wake));
  if (drop) {
    MutexLock lock(&mutex_);
    auto it = logs_.find(job.id());
    if (it != logs_.end() && it->second == log) logs_.erase(it);
  }
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* WatchHub::Watch(const std::string& job_id, const std::string& tenant,
                                                             int64_t from_sequence, std::shared_ptr<void> lease) {
  bool shut_down;
  {
    MutexLock lock(&mutex_);
    shut_down = shut_down_;
  }
  std::shared_ptr<JobLog> log = shut_down ? std::make_shared<JobLog>() : LogFor(job_id, tenant);
  const int64_t next = std::max<int64_t>(1, from_sequence);
  auto* watcher = new Watcher(*this, log, next, std::move(lease));
  HandOver(watcher);  // gRPC may call OnCancel on another thread as soon as the stream exists
  ++watchers_;
  Watcher::Action action = Watcher::Action::kNone;
  grpc::Status status;
  {
    MutexLock lock(&log->mutex);
    const int64_t size = static_cast<int64_t>(log->events.size());
    ++log->watchers;
    watcher->SetBacklogLocked(size);
    if (shut_down) log->shut_down = true;
    if (next > size + 1) {
      action = watcher->FinishLocked(
          grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                       absl::StrCat("from_sequence ", from_sequence, " is past the end of job ", job_id,
                                    "'s log, which ends at ", size, "; watch from ", size + 1, " or less")),
          &status);
    } else {
      action = watcher->NextLocked(&status);
    }
  }
  watcher->Perform(action, status);
  return watcher;
}

void WatchHub::Detach(const std::shared_ptr<JobLog>& log) {
  --watchers_;
  MutexLock lock(&mutex_);
  bool drop = false;
  {
    MutexLock log_lock(&log->mutex);
    --log->watchers;
    drop = log->ended && log->watchers == 0;
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
    Wake wake{log, {}};
    {
      MutexLock lock(&log->mutex);
      log->shut_down = true;
      wake.watchers.swap(log->idle);
      for (Watcher* watcher : wake.watchers) watcher->TakeIdleLocked();
      Watcher::TakeHeldLocked(*log, std::chrono::steady_clock::now(), /*all=*/true, wake.watchers);
    }
    if (!wake.watchers.empty()) Enqueue(std::move(wake));
  }
  // Watchers in flight end at their OnWriteDone; the idle ones end on the fan-out thread.
  MutexLock lock(&wake_mutex_);
  while (!wakes_.empty() || waking_) lock.Wait(&drained_cv_);
}

void WatchHub::Enqueue(Wake wake) {
  MutexLock lock(&wake_mutex_);
  wakes_.push_back(std::move(wake));
  wake_cv_.Signal();
}

void WatchHub::FanOut() {
  for (;;) {
    Wake wake;
    bool tick = false;  // nothing queued for a tick: wake the held watchers instead
    {
      MutexLock lock(&wake_mutex_);
      if (StepInterval() > std::chrono::steady_clock::duration::zero()) {
        // Paced: wake at least every tick, for held watchers whose job published nothing since.
        const absl::Duration period = absl::FromChrono(options_.tick);
        while (wakes_.empty() && !stop_ && !tick) tick = lock.WaitWithTimeout(&wake_cv_, period);
      } else {
        while (wakes_.empty() && !stop_) lock.Wait(&wake_cv_);
      }
      if (wakes_.empty() && stop_) return;
      if (!wakes_.empty()) {
        tick = false;
        wake = std::move(wakes_.front());
        wakes_.pop_front();
      }
      waking_ = true;
    }
    if (tick) {
      WakeHeld();
    } else {
      WakeAll(wake);
    }
    MutexLock lock(&wake_mutex_);
    waking_ = false;
    if (wakes_.empty()) drained_cv_.SignalAll();
  }
}

std::chrono::steady_clock::duration WatchHub::StepInterval() const {
  if (options_.step_rate <= 0) return std::chrono::steady_clock::duration::zero();
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(static_cast<double>(watchers_.load()) / options_.step_rate));
}

void WatchHub::WakeHeld() {
  std::vector<std::shared_ptr<JobLog>> logs;
  {
    MutexLock lock(&mutex_);
    for (auto& [id, log] : logs_) logs.push_back(log);
  }
  for (const std::shared_ptr<JobLog>& log : logs) {
    Wake wake{log, {}};
    {
      MutexLock lock(&log->mutex);
      // While a job publishes, its publishes wake the held watchers whose turn has come, so that the
      // writes of many watchers go out together (the transport packs each connection's into one
      // send); the tick serves a job that has gone quiet.
      const auto now = std::chrono::steady_clock::now();
      if (now - log->last_publish < options_.tick) continue;
      Watcher::TakeHeldLocked(*log, now, /*all=*/false, wake.watchers);
    }
    if (!wake.watchers.empty()) WakeAll(wake);
  }
}

void WatchHub::WakeAll(const Wake& wake) {
  const size_t batch = static_cast<size_t>(std::max(1, options_.wake_batch));
  std::vector<std::pair<Watcher::Action, grpc::Status>> actions;
  for (size_t begin = 0; begin < wake.watchers.size(); begin += batch) {
    const size_t end = std::min(wake.watchers.size(), begin + batch);
    actions.assign(end - begin, {Watcher::Action::kNone, grpc::Status::OK});
    {
      MutexLock lock(&wake.log->mutex);
      for (size_t i = begin; i < end; ++i) {
        wake.watchers[i]->WokenLocked();
        actions[i - begin].first = wake.watchers[i]->NextLocked(&actions[i - begin].second);
      }
    }
    // A watcher may be gone once its Finish is performed: nothing touches it after Perform.
    for (size_t i = begin; i < end; ++i) wake.watchers[i]->Perform(actions[i - begin].first, actions[i - begin].second);
  }
}

}  // namespace xtrain::server
