#pragma once

#include <cstdint>
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

}  // namespace xtrain::server
