#include "server/store/sqlite_job_store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <utility>

#include "absl/base/config.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "server/common/mutex.h"


namespace xtrain::server {
namespace {

// Reader connections open at most; a read waits for an idle one beyond that.
constexpr int kReaderPoolSize = 4;

// Migration i takes the schema from version i to i + 1. Append only: a released migration never changes.
constexpr const char* kMigrations[] = {
    // 1: jobs with their snapshots, per-job event logs, artifact records.
    R"sql(
      CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        client_request_id TEXT NOT NULL,
        state INTEGER NOT NULL,
        create_order INTEGER NOT NULL UNIQUE,
        job BLOB NOT NULL
      );
      CREATE UNIQUE INDEX jobs_request_id ON jobs (tenant, client_request_id) WHERE client_request_id <> '';
      CREATE TABLE events (
        job_id TEXT NOT NULL REFERENCES jobs (id),
        sequence INTEGER NOT NULL,
        event BLOB NOT NULL,
        PRIMARY KEY (job_id, sequence)
      );
      CREATE TABLE artifacts (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        job_id TEXT NOT NULL,
        path TEXT NOT NULL,
        create_order INTEGER NOT NULL UNIQUE,
        info BLOB NOT NULL
      );
      CREATE INDEX artifacts_job ON artifacts (job_id, create_order);
    )sql",
};
static_assert(std::size(kMigrations) == kSqliteSchemaVersion, "one migration per schema version");

using Locked = MutexLock;

// How every error about the file starts.
std::string ErrorPrefix(absl::string_view path) { return absl::StrCat("job store ", path, ": "); }

// The canonical code for an SQLite result code.
absl::StatusCode CodeOf(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_PERM:
      return absl::StatusCode::kUnavailable;
    case SQLITE_FULL:
      return absl::StatusCode::kResourceExhausted;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::StatusCode::kDataLoss;
    case SQLITE_CONSTRAINT:
      return absl::StatusCode::kFailedPrecondition;
    default:
      return absl::StatusCode::kInternal;
  }
}

class Statement;

}  // namespace

// One sqlite3 handle, used by one thread at a time (the store's locks see to it), with its prepared
// statements cached by their SQL text.
class SqliteConnection {
 public:
  static absl::StatusOr<std::unique_ptr<SqliteConnection>> Open(const std::string& path, int flags,
                                                                int busy_timeout_ms) {
    sqlite3* db = nullptr;
    int rc = sqlite3_open_v2(path.c_str(), &db, flags | SQLITE_OPEN_NOMUTEX, nullptr);
    auto connection = std::unique_ptr<SqliteConnection>(new SqliteConnection(path, db));
    if (rc != SQLITE_OK) return connection->Error(rc, "opening it");
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, busy_timeout_ms);
    return connection;
  }

  ~SqliteConnection() {
    for (auto& [sql, stmt] : statements_) sqlite3_finalize(stmt);
    sqlite3_close(db_);
  }

  // The cached statement for `sql`, prepared on first use. Not reentrant: one use of a text at a time.
  absl::StatusOr<Statement> Prepare(const char* sql);

  // Runs one or more statements that return no rows (pragmas, migrations).
  absl::Status Exec(const char* sql, absl::string_view what) {
    int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
    return rc == SQLITE_OK ? absl::OkStatus() : Error(rc, what);
  }

  // A status for result code `rc` of `what`: the file, what failed and SQLite's message.
  absl::Status Error(int rc, absl::string_view what) const {
    const char* message = db_ != nullptr ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    return absl::Status(CodeOf(rc), absl::StrCat(ErrorPrefix(path_), what, ": ", message));
  }

  sqlite3* db() const { return db_; }

 private:
  SqliteConnection(std::string path, sqlite3* db) : path_(std::move(path)), db_(db) {}

  const std::string path_;
  sqlite3* const db_;
  absl::flat_hash_map<std::string, sqlite3_stmt*> statements_;
};

namespace {

// A cached statement in use: bind, step, read columns; reset and unbound when it goes out of scope.
// Text and blobs are bound without a copy: they must outlive the last Step().
class Statement {
 public:
  Statement(const SqliteConnection* connection, sqlite3_stmt* stmt) : connection_(connection), stmt_(stmt) {}
  Statement(Statement&& other) noexcept
      : connection_(other.connection_), stmt_(std::exchange(other.stmt_, nullptr)), bind_rc_(other.bind_rc_) {}
  Statement& operator=(Statement&&) = delete;
  ~Statement() {
    if (stmt_ == nullptr) return;
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

  Statement& Bind(int index, int64_t value) {
    Check(sqlite3_bind_int64(stmt_, index, value));
    return *this;
  }
  Statement& Bind(int index, absl::string_view text) {
    // A null pointer would bind SQL NULL; an empty text is "".
    Check(sqlite3_bind_text(stmt_, index, text.empty() ? "" : text.data(), static_cast<int>(text.size()),
                            SQLITE_STATIC));
    return *this;
  }
  Statement& BindBlob(int index, absl::string_view bytes) {
    Check(sqlite3_bind_blob(stmt_, index, bytes.empty() ? "" : bytes.data(), static_cast<int>(bytes.size()),
                            SQLITE_STATIC));
    return *this;
  }

  // True while a row is ready, false when done.
  absl::StatusOr<bool> Step() {
    if (bind_rc_ != SQLITE_OK) return connection_->Error(bind_rc_, "bind");
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return connection_->Error(rc, sqlite3_sql(stmt_));
  }
  // Steps a statement that returns no rows.
  absl::Status Run() {
    absl::StatusOr<bool> row = Step();
    return row.status();
  }

  bool IsNull(int column) const { return sqlite3_column_type(stmt_, column) == SQLITE_NULL; }
  int64_t Int(int column) const { return sqlite3_column_int64(stmt_, column); }
  absl::string_view Text(int column) const {
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, column));
    return absl::string_view(text == nullptr ? "" : text, sqlite3_column_bytes(stmt_, column));
  }
  absl::string_view Blob(int column) const {
    const auto* blob = static_cast<const char*>(sqlite3_column_blob(stmt_, column));
    return absl::string_view(blob == nullptr ? "" : blob, sqlite3_column_bytes(stmt_, column));
  }

 private:
  void Check(int rc) {
    if (bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  }

  const SqliteConnection* connection_;
  sqlite3_stmt* stmt_;
  int bind_rc_ = SQLITE_OK;
};

}  // namespace

absl::StatusOr<Statement> SqliteConnection::Prepare(const char* sql) {
  auto it = statements_.find(sql);
  if (it == statements_.end()) {
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
    if (rc != SQLITE_OK) return Error(rc, sql);
    it = statements_.emplace(sql, stmt).first;
  }
  return Statement(this, it->second);
}

namespace {

// A write transaction on the writer connection: BEGIN IMMEDIATE, then COMMIT, or ROLLBACK when it ends
// uncommitted, so a failed write leaves nothing behind.
class Transaction {
 public:
  explicit Transaction(SqliteConnection* connection) : connection_(connection) {}
  ~Transaction() {
    // SQLite may have rolled back already (an I/O error, a full disk): then there is nothing to undo.
    if (open_ && !sqlite3_get_autocommit(connection_->db())) {
      connection_->Exec("ROLLBACK", "rollback").IgnoreError();
    }
  }

  absl::Status Begin() {
    absl::StatusOr<Statement> begin = connection_->Prepare("BEGIN IMMEDIATE");
    if (!begin.ok()) return begin.status();
    absl::Status status = begin->Run();
    open_ = status.ok();
    return status;
  }
  absl::Status Commit() {
    absl::StatusOr<Statement> commit = connection_->Prepare("COMMIT");
    if (!commit.ok()) return commit.status();
    absl::Status status = commit->Run();
    if (status.ok()) open_ = false;
    return status;
  }

 private:
  SqliteConnection* const connection_;
  bool open_ = false;
};

template <typename Message>
absl::Status Parse(absl::string_view bytes, Message* message, absl::string_view what) {
  if (message->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat(what, " does not parse as ", Message::descriptor()->full_name()));
}

// Prefixes a status's message with the store's path, keeping its code.
absl::Status InStore(const std::string& path, const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(ErrorPrefix(path), status.message()));
}

// "<path>.lock", locked for this process; closes nothing on failure.
absl::StatusOr<int> LockStoreFile(const std::string& path) {
  const std::string lock_path = path + ".lock";
  int fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat("cannot open the job store ", path, ": cannot open its lock file ",
                                               lock_path, ": ", std::strerror(errno)));
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    char buffer[32] = {};
    ssize_t n = pread(fd, buffer, sizeof(buffer) - 1, 0);
    close(fd);
    if (error != EWOULDBLOCK) {
      return absl::UnavailableError(
          absl::StrCat("cannot lock the job store ", path, " (", lock_path, "): ", std::strerror(error)));
    }
    int64_t holder = 0;
    std::string who = "pid unknown";
    if (n > 0 && absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::string_view(buffer, n)), &holder)) {
      who = holder == getpid() ? absl::StrCat("another store in this process, pid ", holder)
                               : absl::StrCat("pid ", holder);
    }
    return absl::FailedPreconditionError(
        absl::StrCat("the job store ", path, " is in use by another xtrain-server (", who,
                     "); stop that server or give this one another data directory"));
  }
  // Who holds it, for the message above; the lock, not this text, is what keeps others out.
  const std::string pid = absl::StrCat(getpid(), "\n");
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    // Only the message of a refused opener loses its pid.
  }
  return fd;
}

// Brings the schema to kSqliteSchemaVersion in one transaction; refuses a file from newer code.
absl::Status Migrate(SqliteConnection* connection) {
  Transaction transaction(connection);
  absl::Status status = transaction.Begin();
  if (!status.ok()) return status;
  status = connection->Exec(
      "CREATE TABLE IF NOT EXISTS schema_version ("
      "  version INTEGER PRIMARY KEY,"
      "  applied_time TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
      "create schema_version");
  if (!status.ok()) return status;
  int64_t version = 0;
  {
    absl::StatusOr<Statement> select = connection->Prepare("SELECT MAX(version) FROM schema_version");
    if (!select.ok()) return select.status();
    absl::StatusOr<bool> row = select->Step();
    if (!row.ok()) return row.status();
    if (*row && !select->IsNull(0)) version = select->Int(0);
  }
  if (version > kSqliteSchemaVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("its schema version is ", version, ", newer than this xtrain-server knows (",
                     kSqliteSchemaVersion, "): run the newer xtrain-server that wrote it"));
  }
  for (int64_t next = version; next < kSqliteSchemaVersion; ++next) {
    status = connection->Exec(kMigrations[next], absl::StrCat("migrate to schema version ", next + 1));
    if (!status.ok()) return status;
    absl::StatusOr<Statement> record = connection->Prepare("INSERT INTO schema_version (version) VALUES (?1)");
    if (!record.ok()) return record.status();
    status = record->Bind(1, next + 1).Run();
    if (!status.ok()) return status;
  }
  return transaction.Commit();
}

// The step in a log: `sequence` must follow `last`.
absl::Status CheckSequence(absl::string_view job_id, int64_t last, int64_t sequence) {
  if (sequence == last + 1) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("job ", job_id, ": event sequence ", sequence,
                                                    " does not continue its log, whose last sequence is ", last,
                                                    " (expected ", last + 1, ")"));
}

}  // namespace

// A reader connection taken from the pool; hands it back when the lease ends.
class SqliteJobStore::ReaderLease {
 public:
  ReaderLease(SqliteJobStore* store, std::unique_ptr<SqliteConnection> connection)
      : store_(store), connection_(std::move(connection)) {}
  ReaderLease(ReaderLease&& other) noexcept = default;
  ReaderLease& operator=(ReaderLease&&) = delete;
  ~ReaderLease() {
    if (connection_ != nullptr) store_->ReleaseReader(std::move(connection_));
  }

  SqliteConnection* operator->() const { return connection_.get(); }

 private:
  SqliteJobStore* store_;
  std::unique_ptr<SqliteConnection> connection_;
};

absl::StatusOr<std::unique_ptr<JobStore>> OpenSqliteJobStore(const std::string& path,
                                                             const SqliteStoreOptions& options) {
  absl::StatusOr<std::unique_ptr<SqliteJobStore>> store = SqliteJobStore::Open(path, options);
  if (!store.ok()) return store.status();
  return std::unique_ptr<JobStore>(std::move(*store));
}

absl::StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Open(const std::string& path,
                                                                     const SqliteStoreOptions& options) {
  if (path.empty()) return absl::InvalidArgumentError("the job store needs a file path");
  absl::StatusOr<int> lock_fd = LockStoreFile(path);
  if (!lock_fd.ok()) return lock_fd.status();
  // Unlocks on failure, after the connections below are closed (they are destroyed first).
  struct Unlock {
    int fd;
    ~Unlock() {
      if (fd >= 0) close(fd);
    }
  } unlock{*lock_fd};
  // Any failure below: a sentence naming the file; Unavailable unless the code says more (a newer schema).
  auto fail = [&](const absl::Status& status) {
    absl::StatusCode code =
        status.code() == absl::StatusCode::kFailedPrecondition ? status.code() : absl::StatusCode::kUnavailable;
    return absl::Status(code, absl::StrCat("cannot open the job store ", path, ": ",
                                           absl::StripPrefix(status.message(), ErrorPrefix(path))));
  };

  absl::StatusOr<std::unique_ptr<SqliteConnection>> writer =
      SqliteConnection::Open(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, options.busy_timeout_ms);
  if (!writer.ok()) return fail(writer.status());
  if (sqlite3_db_readonly((*writer)->db(), "main") == 1) {
    return fail(absl::UnavailableError("the file is read-only"));
  }
  // The first read of the file: a file that is not a database fails here.
  {
    absl::StatusOr<Statement> wal = (*writer)->Prepare("PRAGMA journal_mode = WAL");
    absl::StatusOr<bool> row = wal.ok() ? wal->Step() : absl::StatusOr<bool>(wal.status());
    if (!row.ok()) return fail((*writer)->Error(sqlite3_errcode((*writer)->db()), "reading it"));
    if (!*row || wal->Text(0) != "wal") {
      return fail(absl::UnavailableError(absl::StrCat("it cannot use WAL mode (journal mode ",
                                                      *row ? wal->Text(0) : "unknown", ")")));
    }
  }
  absl::Status status = (*writer)->Exec(
      options.synchronous_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL", "set synchronous");
  if (status.ok()) status = (*writer)->Exec("PRAGMA foreign_keys = ON", "enable foreign keys");
  if (status.ok()) status = Migrate(writer->get());
  if (!status.ok()) return fail(status);

  auto store = std::unique_ptr<SqliteJobStore>(new SqliteJobStore(path, options, *lock_fd, std::move(*writer)));
  unlock.fd = -1;  // the store holds the lock now
  // Open the first reader now, so a file readers cannot use fails at open rather than at the first read.
  absl::StatusOr<ReaderLease> reader = store->AcquireReader();
  if (!reader.ok()) {
    return absl::UnavailableError(absl::StrCat("cannot open the job store ", path, ": ",
                                               absl::StripPrefix(reader.status().message(), ErrorPrefix(path))));
  }
  return store;
}

SqliteJobStore::SqliteJobStore(std::string path, SqliteStoreOptions options, int lock_fd,
                               std::unique_ptr<SqliteConnection> writer)
    : path_(std::move(path)), options_(options), lock_fd_(lock_fd), writer_(std::move(writer)) {}

SqliteJobStore::~SqliteJobStore() {
  {
    Locked lock(&read_mu_);
    idle_readers_.clear();
  }
  {
    Locked lock(&write_mu_);
    writer_.reset();
  }
  // Unlock only once the file is closed, so the next opener finds it whole.
  close(lock_fd_);
}

absl::StatusOr<SqliteJobStore::ReaderLease> SqliteJobStore::AcquireReader() {
  {
    Locked lock(&read_mu_);
    while (idle_readers_.empty() && open_readers_ >= kReaderPoolSize) lock.Wait(&reader_returned_);
    if (!idle_readers_.empty()) {
      std::unique_ptr<SqliteConnection> reader = std::move(idle_readers_.back());
      idle_readers_.pop_back();
      return ReaderLease(this, std::move(reader));
    }
    ++open_readers_;
  }
  absl::StatusOr<std::unique_ptr<SqliteConnection>> reader =
      SqliteConnection::Open(path_, SQLITE_OPEN_READONLY, options_.busy_timeout_ms);
  if (!reader.ok()) {
    Locked lock(&read_mu_);
    --open_readers_;
    reader_returned_.Signal();  // a waiter may open one in its place
    return reader.status();
  }
  return ReaderLease(this, std::move(*reader));
}

void SqliteJobStore::ReleaseReader(std::unique_ptr<SqliteConnection> reader) {
  Locked lock(&read_mu_);
  idle_readers_.push_back(std::move(reader));
  reader_returned_.Signal();
}

absl::Status SqliteJobStore::InsertJob(const JobWrite& write) {
  Locked lock(&write_mu_);
  Transaction transaction(writer_.get());
  absl::Status status = transaction.Begin();
  if (status.ok()) status = InsertJobLocked(write);
  if (status.ok()) status = transaction.Commit();
  return status;
}

absl::Status SqliteJobStore::InsertJobLocked(const JobWrite& write) {
  const xtrain::v1::Job& job = write.job;
  if (job.id().empty()) return absl::InvalidArgumentError("a job needs an id");
  {
    absl::StatusOr<Statement> taken = writer_->Prepare("SELECT 1 FROM jobs WHERE id = ?1");
    if (!taken.ok()) return taken.status();
    absl::StatusOr<bool> row = taken->Bind(1, job.id()).Step();
    if (!row.ok()) return row.status();
    if (*row) return absl::AlreadyExistsError(absl::StrCat("job ", job.id(), " already exists"));
  }
  if (!job.client_request_id().empty()) {
    absl::StatusOr<Statement> taken =
        writer_->Prepare("SELECT id FROM jobs WHERE tenant = ?1 AND client_request_id = ?2");
    if (!taken.ok()) return taken.status();
    absl::StatusOr<bool> row = taken->Bind(1, job.tenant()).Bind(2, job.client_request_id()).Step();
    if (!row.ok()) return row.status();
    if (*row) {
      return absl::AlreadyExistsError(absl::StrCat("tenant '", job.tenant(), "' already created job ",
                                                   taken->Text(0), " with client_request_id '",
                                                   job.client_request_id(), "'"));
    }
  }
  const std::string blob = job.SerializeAsString();
  absl::StatusOr<Statement> insert = writer_->Prepare(
      "INSERT INTO jobs (id, tenant, client_request_id, state, create_order, job) "
      "VALUES (?1, ?2, ?3, ?4, (SELECT IFNULL(MAX(create_order), 0) + 1 FROM jobs), ?5)");
  if (!insert.ok()) return insert.status();
  absl::Status status = insert->Bind(1, job.id())
                            .Bind(2, job.tenant())
                            .Bind(3, job.client_request_id())
                            .Bind(4, static_cast<int64_t>(job.state()))
                            .BindBlob(5, blob)
                            .Run();
  if (!status.ok()) return status;
  return InsertEventsLocked(write, /*last_sequence=*/0);
}

absl::Status SqliteJobStore::InsertEventsLocked(const JobWrite& write, int64_t last_sequence) {
  std::string blob;
  for (const xtrain::v1::JobEvent& event : write.events) {
    absl::Status status = CheckSequence(write.job.id(), last_sequence, event.sequence());
    if (!status.ok()) return status;
    last_sequence = event.sequence();
    blob.clear();
    event.SerializeToString(&blob);
    absl::StatusOr<Statement> insert =
        writer_->Prepare("INSERT INTO events (job_id, sequence, event) VALUES (?1, ?2, ?3)");
    if (!insert.ok()) return insert.status();
    status = insert->Bind(1, write.job.id()).Bind(2, event.sequence()).BindBlob(3, blob).Run();
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status SqliteJobStore::Commit(const std::vector<JobWrite>& writes) {
  if (writes.empty()) return absl::OkStatus();
  Locked lock(&write_mu_);
  Transaction transaction(writer_.get());
  absl::Status status = transaction.Begin();
  for (const JobWrite& write : writes) {
    if (!status.ok()) break;
    status = ApplyWriteLocked(write);
  }
  if (status.ok()) status = transaction.Commit();
  return status;
}

absl::Status SqliteJobStore::ApplyWriteLocked(const JobWrite& write) {
  const xtrain::v1::Job& job = write.job;
  // The log's end as stored (earlier writes of this transaction included), not the caller's snapshot.
  int64_t last_sequence = 0;
  {
    absl::StatusOr<Statement> select = writer_->Prepare(
        "SELECT tenant, client_request_id, (SELECT IFNULL(MAX(sequence), 0) FROM events WHERE job_id = ?1) "
        "FROM jobs WHERE id = ?1");
    if (!select.ok()) return select.status();
    absl::StatusOr<bool> row = select->Bind(1, job.id()).Step();
    if (!row.ok()) return row.status();
    if (!*row) return absl::NotFoundError(absl::StrCat("job '", job.id(), "' was never inserted"));
    if (select->Text(0) != job.tenant() || select->Text(1) != job.client_request_id()) {
      return absl::InvalidArgumentError(absl::StrCat("job ", job.id(),
                                                     ": its tenant and client_request_id cannot change (stored '",
                                                     select->Text(0), "' and '", select->Text(1), "')"));
    }
    last_sequence = select->Int(2);
  }
  absl::Status status = InsertEventsLocked(write, last_sequence);
  if (!status.ok()) return status;
  const std::string blob = job.SerializeAsString();
  absl::StatusOr<Statement> update = writer_->Prepare("UPDATE jobs SET state = ?2, job = ?3 WHERE id = ?1");
  if (!update.ok()) return update.status();
  return update->Bind(1, job.id()).Bind(2, static_cast<int64_t>(job.state())).BindBlob(3, blob).Run();
}

absl::StatusOr<std::vector<xtrain::v1::Job>> SqliteJobStore::LoadJobs() {
  absl::StatusOr<ReaderLease> reader = AcquireReader();
  if (!reader.ok()) return reader.status();
  absl::StatusOr<Statement> select = (*reader)->Prepare("SELECT id, job FROM jobs ORDER BY create_order");
  if (!select.ok()) return select.status();
  std::vector<xtrain::v1::Job> jobs;
  for (;;) {
    absl::StatusOr<bool> row = select->Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    absl::Status status = Parse(select->Blob(1), &jobs.emplace_back(), absl::StrCat("job ", select->Text(0)));
    if (!status.ok()) return InStore(path_, status);
  }
  return jobs;
}

absl::StatusOr<std::optional<xtrain::v1::Job>> SqliteJobStore::FindByRequestId(
    absl::string_view tenant, absl::string_view client_request_id) {
  // An empty request id names no job: submits without one are never deduplicated.
  if (client_request_id.empty()) return std::nullopt;
  absl::StatusOr<ReaderLease> reader = AcquireReader();
  if (!reader.ok()) return reader.status();
  absl::StatusOr<Statement> select =
      (*reader)->Prepare("SELECT id, job FROM jobs WHERE tenant = ?1 AND client_request_id = ?2");
  if (!select.ok()) return select.status();
  absl::StatusOr<bool> row = select->Bind(1, tenant).Bind(2, client_request_id).Step();
  if (!row.ok()) return row.status();
  if (!*row) return std::nullopt;
  xtrain::v1::Job job;
  absl::Status status = Parse(select->Blob(1), &job, absl::StrCat("job ", select->Text(0)));
  if (!status.ok()) return InStore(path_, status);
  return job;
}

absl::StatusOr<std::vector<xtrain::v1::JobEvent>> SqliteJobStore::ReadEvents(absl::string_view job_id,
                                                                             int64_t from_sequence, int64_t limit) {
  if (limit < 0) return absl::InvalidArgumentError(absl::StrCat("ReadEvents: limit ", limit, " is negative"));
  absl::StatusOr<ReaderLease> reader = AcquireReader();
  if (!reader.ok()) return reader.status();
  std::vector<xtrain::v1::JobEvent> events;
  {
    absl::StatusOr<Statement> select = (*reader)->Prepare(
        "SELECT sequence, event FROM events WHERE job_id = ?1 AND sequence >= ?2 ORDER BY sequence LIMIT ?3");
    if (!select.ok()) return select.status();
    select->Bind(1, job_id).Bind(2, from_sequence).Bind(3, limit > 0 ? limit : int64_t{-1});
    for (;;) {
      absl::StatusOr<bool> row = select->Step();
      if (!row.ok()) return row.status();
      if (!*row) break;
      absl::Status status = Parse(select->Blob(1), &events.emplace_back(),
                                  absl::StrCat("job ", job_id, "'s event ", select->Int(0)));
      if (!status.ok()) return InStore(path_, status);
    }
  }
  if (!events.empty()) return events;
  // Nothing past the end of a log is normal (a watcher that is up to date); an unknown job is not.
  absl::StatusOr<Statement> exists = (*reader)->Prepare("SELECT 1 FROM jobs WHERE id = ?1");
  if (!exists.ok()) return exists.status();
  absl::StatusOr<bool> row = exists->Bind(1, job_id).Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::NotFoundError(absl::StrCat("job '", job_id, "' does not exist"));
  return events;
}

absl::Status SqliteJobStore::PutArtifact(const ArtifactRecord& record) {
  const xtrain::v1::ArtifactInfo& info = record.info;
  if (info.id().empty()) return absl::InvalidArgumentError("an artifact needs an id");
  Locked lock(&write_mu_);
  {
    absl::StatusOr<Statement> taken = writer_->Prepare("SELECT 1 FROM artifacts WHERE id = ?1");
    if (!taken.ok()) return taken.status();
    absl::StatusOr<bool> row = taken->Bind(1, info.id()).Step();
    if (!row.ok()) return row.status();
    if (*row) return absl::AlreadyExistsError(absl::StrCat("artifact ", info.id(), " already exists"));
  }
  const std::string blob = info.SerializeAsString();
  absl::StatusOr<Statement> insert = writer_->Prepare(
      "INSERT INTO artifacts (id, tenant, job_id, path, create_order, info) "
      "VALUES (?1, ?2, ?3, ?4, (SELECT IFNULL(MAX(create_order), 0) + 1 FROM artifacts), ?5)");
  if (!insert.ok()) return insert.status();
  return insert->Bind(1, info.id())
      .Bind(2, record.tenant)
      .Bind(3, info.job_id())
      .Bind(4, record.path)
      .BindBlob(5, blob)
      .Run();
}

absl::StatusOr<ArtifactRecord> SqliteJobStore::GetArtifact(absl::string_view id) {
  absl::StatusOr<ReaderLease> reader = AcquireReader();
  if (!reader.ok()) return reader.status();
  absl::StatusOr<Statement> select = (*reader)->Prepare("SELECT tenant, path, info FROM artifacts WHERE id = ?1");
  if (!select.ok()) return select.status();
  absl::StatusOr<bool> row = select->Bind(1, id).Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::NotFoundError(absl::StrCat("artifact '", id, "' does not exist"));
  ArtifactRecord record;
  record.tenant = std::string(select->Text(0));
  record.path = std::string(select->Text(1));
  absl::Status status = Parse(select->Blob(2), &record.info, absl::StrCat("artifact ", id));
  if (!status.ok()) return InStore(path_, status);
  return record;
}

absl::StatusOr<std::vector<ArtifactRecord>> SqliteJobStore::ListArtifacts(absl::string_view job_id) {
  absl::StatusOr<ReaderLease> reader = AcquireReader();
  if (!reader.ok()) return reader.status();
  absl::StatusOr<Statement> select = (*reader)->Prepare(
      "SELECT id, tenant, path, info FROM artifacts WHERE job_id = ?1 ORDER BY create_order");
  if (!select.ok()) return select.status();
  select->Bind(1, job_id);
  std::vector<ArtifactRecord> records;
  for (;;) {
    absl::StatusOr<bool> row = select->Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    ArtifactRecord& record = records.emplace_back();
    record.tenant = std::string(select->Text(1));
    record.path = std::string(select->Text(2));
    absl::Status status = Parse(select->Blob(3), &record.info, absl::StrCat("artifact ", select->Text(0)));
    if (!status.ok()) return InStore(path_, status);
  }
  return records;
}

absl::StatusOr<int64_t> SqliteJobStore::TenantArtifactBytes(absl::string_view tenant) {
  absl::StatusOr<ReaderLease> reader = AcquireReader();
  if (!reader.ok()) return reader.status();
  absl::StatusOr<Statement> select = (*reader)->Prepare("SELECT id, info FROM artifacts WHERE tenant = ?1");
  if (!select.ok()) return select.status();
  select->Bind(1, tenant);
  int64_t bytes = 0;
  for (;;) {
    absl::StatusOr<bool> row = select->Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    xtrain::v1::ArtifactInfo info;
    absl::Status status = Parse(select->Blob(1), &info, absl::StrCat("artifact ", select->Text(0)));
    if (!status.ok()) return InStore(path_, status);
    bytes += info.size_bytes();
  }
  return bytes;
}

absl::Status SqliteJobStore::DeleteArtifact(absl::string_view id) {
  Locked lock(&write_mu_);
  absl::StatusOr<Statement> remove = writer_->Prepare("DELETE FROM artifacts WHERE id = ?1");
  if (!remove.ok()) return remove.status();
  return remove->Bind(1, id).Run();
}

}  // namespace xtrain::server
