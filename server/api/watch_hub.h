#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/store/job_store.h"
#include "xtrain/v1/training_service.pb.h"

namespace xtrain::server {

struct WatchHubOptions {
  // A watcher this many events behind the log's end skips step events published after it connected
  // (keeping the newest) until it catches up; the backlog it asked for is replayed whole, and state
  // changes, plans, validations, checkpoints and the final event are never skipped.
  int64_t coalesce_lag = 16;
};

// WatchJob's publisher (STYLE.md: one write in flight per stream, newest value wins, Finish exactly
// once). Each job's event log is held once, shared by its watchers; a watcher is a cursor into it, so
// a slow watcher costs no memory and never slows training or other watchers. Logs load from the store
// on the first watch and grow with Publish (called after the store has the events).
class WatchHub {
 public:
  WatchHub(JobStore& store, WatchHubOptions options = {});
  ~WatchHub();
  WatchHub(const WatchHub&) = delete;
  WatchHub& operator=(const WatchHub&) = delete;

  // Appends committed events (the scheduler's Publisher). Any thread.
  void Publish(const xtrain::v1::Job& job, const std::vector<xtrain::v1::JobEvent>& events);
  // A reactor streaming `job_id`'s log from `from_sequence`, then live; it finishes OK after the
  // job's final event. `last_sequence` and `terminal` are the job's as the caller read them (after its
  // access checks): from_sequence past last_sequence + 1 is OUT_OF_RANGE.
  grpc::ServerWriteReactor<xtrain::v1::WatchJobResponse>* Watch(const std::string& job_id, int64_t from_sequence);
  // Ends every stream with UNAVAILABLE and a sentence saying where to reconnect from; later watches
  // are refused the same way.
  void Shutdown();

  int64_t watchers() const { return watchers_.load(); }
  int64_t events_coalesced() const { return coalesced_.load(); }

 private:
  class Watcher;
  struct JobLog;
  std::shared_ptr<JobLog> LogFor(const std::string& job_id);
  void Detach(const std::shared_ptr<JobLog>& log, Watcher* watcher);

  JobStore& store_;
  const WatchHubOptions options_;
  absl::Mutex mutex_;
  std::map<std::string, std::shared_ptr<JobLog>> logs_ ABSL_GUARDED_BY(mutex_);
  bool shut_down_ ABSL_GUARDED_BY(mutex_) = false;
  std::atomic<int64_t> watchers_{0};
  std::atomic<int64_t> coalesced_{0};
};

}  // namespace xtrain::server
