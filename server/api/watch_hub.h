#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/store/job_store.h"
#include "xtrain/v1/training_service.pb.h"

namespace xtrain::server {

// A watcher behind on events published after it connected skips the step events older than the newest
// step (counting them in its next response's `coalesced`); it is behind when either rule below holds.
// The backlog a watch asked for is replayed whole, and state changes, plans, validations, checkpoints
// and the final event are never skipped.
struct WatchHubOptions {
  // Behind: its next event is more than this many events from the log's end.
  int64_t coalesce_lag = 16;
  // Behind: its next event is a step published longer ago than this (the lag it would show), so lag
  // does not grow with the event rate. Zero or negative turns this rule off.
  std::chrono::steady_clock::duration coalesce_age = std::chrono::milliseconds(50);
  // Live step events sent per second over all the hub's watchers: the fan-out's CPU budget. Each
  // watcher gets a step at most about every (watchers / step_rate) seconds (jittered so that watchers
  // do not all write at once), and then the newest one, the skipped ones counted in `coalesced`: with
  // more watchers than the machine can send every step to, each still gets fresh steps, rather than
  // every step late. Other events are never held back. Zero or negative: no limit.
  double step_rate = 0;
  // How often the fan-out thread sends the newest step to watchers held back by step_rate whose job
  // has published nothing since (a publish wakes them too).
  std::chrono::steady_clock::duration tick = std::chrono::milliseconds(100);
  // Idle watchers woken under one lock acquisition by the fan-out thread.
  int wake_batch = 256;
};

// WatchJob's publisher (STYLE.md: one write in flight per stream, newest value wins, Finish exactly
// once). Each job's event log is held once, shared by its watchers, each event serialized once: a
// watcher is a cursor into the log, so a slow watcher costs no memory and never slows training or
// other watchers. A watcher pulls its next event when its write completes (on gRPC's threads), skipping
// to the newest step when it is behind by count or by age (WatchHubOptions): one that keeps up (pulls
// each step within coalesce_age of its publishing) sees every step, unless step_rate holds it back. A
// held watcher waits on its own list with its next step unsent, woken by the publish or tick after its
// turn has come: a publish costs a watcher whose turn has not come one comparison. Publish only appends and hands the
// watchers that were idle to the hub's fan-out thread, which starts their writes, so the scheduler's
// thread never writes to 10,000 streams. Logs load from the store on the first watch and grow with
// Publish (called after the store has the events).
class WatchHub {
 public:
  WatchHub(JobStore& store, WatchHubOptions options = {});
  ~WatchHub();  // after the gRPC server that ran the streams has stopped
  WatchHub(const WatchHub&) = delete;
  WatchHub& operator=(const WatchHub&) = delete;

  // Appends committed events (the scheduler's Publisher). Any thread.
  void Publish(const xtrain::v1::Job& job, const std::vector<xtrain::v1::JobEvent>& events);
  // A reactor streaming the log of `job_id` (of `tenant`, named in the server's log) from `from_sequence`,
  // then live; it finishes OK after the job's
  // final event. The stream's messages are serialized WatchJobResponses (WatchJob is a raw method, so
  // that watchers share each event's bytes). `from_sequence` past the log's end + 1 is OUT_OF_RANGE.
  // `lease` is held until the stream's reactor is done (a quota's hold, say).
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Watch(const std::string& job_id, const std::string& tenant,
                                                    int64_t from_sequence, std::shared_ptr<void> lease = nullptr);
  // Ends every stream with UNAVAILABLE and a sentence saying where to reconnect from, and returns once
  // the idle ones have been finished; later watches are refused the same way.
  void Shutdown();

  const WatchHubOptions& options() const { return options_; }
  int64_t watchers() const { return watchers_.load(); }
  int64_t events_coalesced() const { return coalesced_.load(); }

 private:
  class Watcher;
  struct JobLog;
  // Watchers of `log` taken off its idle list, for the fan-out thread to wake.
  struct Wake {
    std::shared_ptr<JobLog> log;
    std::vector<Watcher*> watchers;
  };

  std::shared_ptr<JobLog> LogFor(const std::string& job_id, const std::string& tenant);
  void Detach(const std::shared_ptr<JobLog>& log);
  void Enqueue(Wake wake);
  void FanOut();  // the fan-out thread
  void WakeAll(const Wake& wake);
  void WakeHeld();  // the tick: wakes the held watchers whose turn has come
  // The least time between two steps to one watcher under step_rate; zero without a limit.
  std::chrono::steady_clock::duration StepInterval() const;

  JobStore& store_;
  const WatchHubOptions options_;
  absl::Mutex mutex_;
  std::map<std::string, std::shared_ptr<JobLog>> logs_ ABSL_GUARDED_BY(mutex_);
  bool shut_down_ ABSL_GUARDED_BY(mutex_) = false;
  std::atomic<int64_t> watchers_{0};
  std::atomic<int64_t> coalesced_{0};

  absl::Mutex wake_mutex_;
  absl::CondVar wake_cv_;     // work queued, or stop
  absl::CondVar drained_cv_;  // the queue emptied and its wakes are done
  std::deque<Wake> wakes_ ABSL_GUARDED_BY(wake_mutex_);
  bool waking_ ABSL_GUARDED_BY(wake_mutex_) = false;  // the fan-out thread is working on a Wake
  bool stop_ ABSL_GUARDED_BY(wake_mutex_) = false;
  std::thread fan_out_;
};

}  // namespace xtrain::server
