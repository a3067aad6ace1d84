#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "xtrain/v1/training_service.pb.h"

namespace xtrain::server {

// A file the service keeps under its data dir: uploaded weights, a job's trained weights.
struct ArtifactRecord {
  xtrain::v1::ArtifactInfo info;  // id, name, kind, size, sha256, job, create time
  std::string tenant;             // who may read it
  std::string path;               // relative to the data dir
};

// One job's changes in a transaction: its new snapshot and the events appended to its log.
struct JobWrite {
  xtrain::v1::Job job;                     // the whole job as it is after the change
  std::vector<xtrain::v1::JobEvent> events;  // sequences continue the log: last_sequence + 1, + 2, ...
};

// A change to a job that a server of a shared store announced (JobStore::Listen).
struct JobChange {
  enum class Kind {
    kCommitted,        // inserted, claimed or committed: its snapshot or log changed
    kCancelRequested,  // RequestCancel: its owner should cancel it
    kRequeued,         // RequeueOrphans took it from a lost replica
    kResync,           // notifications may have been missed (a lost connection): read every job again
  };
  Kind kind = Kind::kCommitted;
  std::string job_id;  // empty for kResync
};

// The durable truth of the service (DESIGN.md §3): jobs, their event logs, artifact records. The server
// writes every change here before it publishes it. Thread-safe: every method may be called from any
// thread; writes are serialized, reads do not wait for writes.
class JobStore {
 public:
  virtual ~JobStore() = default;

  // Inserts a new job and its first events. AlreadyExists when the id, or the pair (tenant,
  // client_request_id) with a non-empty request id, is taken (the message names the existing job id).
  virtual absl::Status InsertJob(const JobWrite& write) = 0;
  // Applies the writes in one transaction, all or nothing. NotFound for a job never inserted;
  // FailedPrecondition when an event's sequence does not continue its job's log (no gap, no repeat).
  virtual absl::Status Commit(const std::vector<JobWrite>& writes) = 0;
  // Every job's latest snapshot in insertion order (the server's state at start).
  virtual absl::StatusOr<std::vector<xtrain::v1::Job>> LoadJobs() = 0;
  // The job a tenant created with `client_request_id`, if any.
  virtual absl::StatusOr<std::optional<xtrain::v1::Job>> FindByRequestId(absl::string_view tenant,
                                                                        absl::string_view client_request_id) = 0;
  // The job's events with sequence >= from_sequence, in order, at most `limit` (0 = all).
  virtual absl::StatusOr<std::vector<xtrain::v1::JobEvent>> ReadEvents(absl::string_view job_id,
                                                                      int64_t from_sequence,
                                                                      int64_t limit = 0) = 0;

  // Records an artifact. AlreadyExists for a taken id.
  virtual absl::Status PutArtifact(const ArtifactRecord& record) = 0;
  // NotFound for an unknown id.
  virtual absl::StatusOr<ArtifactRecord> GetArtifact(absl::string_view id) = 0;
  // Artifacts made by or for a job (for garbage collection), oldest first.
  virtual absl::StatusOr<std::vector<ArtifactRecord>> ListArtifacts(absl::string_view job_id) = 0;
  // The bytes of every artifact of `tenant` (uploads, weights, checkpoints): its artifact quota's use.
  virtual absl::StatusOr<int64_t> TenantArtifactBytes(absl::string_view tenant) = 0;
  // Removes the record (the caller removes the file). Deleting a missing id is OK: GC is idempotent.
  virtual absl::Status DeleteArtifact(absl::string_view id) = 0;

  // --- Several servers on one store (PostgreSQL; DESIGN.md §3 "Scale-out") ---------------------------
  // A shared store knows which replica runs each job (Job.replica, empty: unclaimed). Commit refuses,
  // with Aborted, a write whose job.replica differs from the stored owner: a replica whose
  // jobs were taken from it (its lease ran out) can no longer change them. The embedded store has one
  // server: Shared() is false and the methods below are Unimplemented.
  virtual bool Shared() const { return false; }
  // Renews `replica`'s lease: it counts as alive for `lease_seconds` from now.
  virtual absl::Status Heartbeat(absl::string_view replica, double lease_seconds);
  // Up to `max` queued, unclaimed jobs (highest priority, then oldest, first; or only `job_id` when
  // given), now owned by `replica`; rows another replica is claiming at that moment are skipped.
  virtual absl::StatusOr<std::vector<xtrain::v1::Job>> ClaimJobs(absl::string_view replica, int max,
                                                                 absl::string_view job_id = "");
  // Unfinished jobs of replicas whose lease ran out go back to the queue, unclaimed; a running one gets
  // a state event (RUNNING -> QUEUED) that says why. Returns them as they are now.
  virtual absl::StatusOr<std::vector<xtrain::v1::Job>> RequeueOrphans();
  // One job as last committed (its cancel_requested also set by RequestCancel). NotFound.
  virtual absl::StatusOr<xtrain::v1::Job> ReadJob(absl::string_view job_id);
  // Asks the replica that owns the job to cancel it (it sees the request through Listen).
  virtual absl::Status RequestCancel(absl::string_view job_id);
  // Calls `listener` on the store's own thread after any server changes a job (this one included);
  // called once, before use. `listener` must not block.
  virtual void Listen(std::function<void(const JobChange& change)> listener);
};

// How the SQLite store opens its file.
struct SqliteStoreOptions {
  bool synchronous_full = false;  // fsync every commit (power-loss safe); NORMAL survives process kills
  int busy_timeout_ms = 5000;     // wait this long for a lock held by another connection
};

// The embedded store: one SQLite file in WAL mode, schema versioned and migrated at open. Fails with
// FailedPrecondition when another process holds the file (one server per store file) or Unavailable
// when it cannot be opened, each with a sentence that says why.
absl::StatusOr<std::unique_ptr<JobStore>> OpenSqliteJobStore(const std::string& path,
                                                             const SqliteStoreOptions& options = {});

// The shared store: a PostgreSQL database named by a libpq URL (postgresql://user:pass@host:5432/db),
// schema versioned and migrated at open (one replica migrates; the others wait for it). Unavailable
// when the server cannot be reached, with libpq's reason and the URL without its password.
absl::StatusOr<std::unique_ptr<JobStore>> OpenPostgresJobStore(const std::string& url);

// The store a server's settings name: PostgreSQL for a postgres:// or postgresql:// URL, else the
// SQLite file <data_dir>/xtrain.db. InvalidArgument for another scheme.
absl::StatusOr<std::unique_ptr<JobStore>> OpenJobStore(const std::string& url, const std::string& data_dir);

}  // namespace xtrain::server
