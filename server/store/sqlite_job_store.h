#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/store/job_store.h"

namespace xtrain::server {

class SqliteConnection;  // one sqlite3 handle and its cached prepared statements (sqlite_job_store.cc)

// The schema version this code writes; a file with a newer one is refused at open (FailedPrecondition).
inline constexpr int kSqliteSchemaVersion = 1;

// The embedded job store (DESIGN.md §3): one SQLite file in WAL mode. One writer connection serializes
// every write behind a mutex; reads run on a small pool of read-only connections, so they see the last
// committed state and never wait for a write. A flock on "<path>.lock" keeps a second process (or a
// second store in this one) off the file while this store is open; the kernel drops it when the
// process dies, so a killed server never blocks its restart.
class SqliteJobStore final : public JobStore {
 public:
  // Locks, opens and migrates the file; see OpenSqliteJobStore (job_store.h) for the errors. A file
  // whose schema version is newer than kSqliteSchemaVersion is refused with FailedPrecondition.
  static absl::StatusOr<std::unique_ptr<SqliteJobStore>> Open(const std::string& path,
                                                              const SqliteStoreOptions& options = {});
  ~SqliteJobStore() override;

  SqliteJobStore(const SqliteJobStore&) = delete;
  SqliteJobStore& operator=(const SqliteJobStore&) = delete;

  absl::Status InsertJob(const JobWrite& write) override;
  absl::Status Commit(const std::vector<JobWrite>& writes) override;
  absl::StatusOr<std::vector<xtrain::v1::Job>> LoadJobs() override;
  absl::StatusOr<std::optional<xtrain::v1::Job>> FindByRequestId(absl::string_view tenant,
                                                                absl::string_view client_request_id) override;
  absl::StatusOr<std::vector<xtrain::v1::JobEvent>> ReadEvents(absl::string_view job_id, int64_t from_sequence,
                                                              int64_t limit = 0) override;

  absl::Status PutArtifact(const ArtifactRecord& record) override;
  absl::StatusOr<ArtifactRecord> GetArtifact(absl::string_view id) override;
  absl::StatusOr<std::vector<ArtifactRecord>> ListArtifacts(absl::string_view job_id) override;
  absl::StatusOr<int64_t> TenantArtifactBytes(absl::string_view tenant) override;
  absl::Status DeleteArtifact(absl::string_view id) override;

 private:
  class ReaderLease;  // a pooled reader connection, handed back when the lease ends

  SqliteJobStore(std::string path, SqliteStoreOptions options, int lock_fd, std::unique_ptr<SqliteConnection> writer);

  // Takes an idle reader connection, opening one while fewer than the pool's size are open.
  absl::StatusOr<ReaderLease> AcquireReader();
  void ReleaseReader(std::unique_ptr<SqliteConnection> reader);

  // The bodies of InsertJob and Commit, run inside the writer's transaction.
  absl::Status InsertJobLocked(const JobWrite& write) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  absl::Status ApplyWriteLocked(const JobWrite& write) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  absl::Status InsertEventsLocked(const JobWrite& write, int64_t last_sequence)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  const std::string path_;
  const SqliteStoreOptions options_;
  const int lock_fd_;  // holds the flock on "<path>.lock" until the destructor closes it

  absl::Mutex write_mu_;
  std::unique_ptr<SqliteConnection> writer_ ABSL_GUARDED_BY(write_mu_);

  absl::Mutex read_mu_;
  std::vector<std::unique_ptr<SqliteConnection>> idle_readers_ ABSL_GUARDED_BY(read_mu_);
  int open_readers_ ABSL_GUARDED_BY(read_mu_) = 0;  // idle and leased
  absl::CondVar reader_returned_;                    // signalled when a reader goes back to the pool
};

}  // namespace xtrain::server
