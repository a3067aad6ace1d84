// The shared job store on PostgreSQL (libpqxx 6): several xtrain-server replicas on one database.
// Jobs are claimed with SELECT ... FOR UPDATE SKIP LOCKED, replicas hold leases they renew, every change
// to a job is announced with NOTIFY on the channel `xtrain_jobs` (payload: the job id), which Listen()
// hears on a connection of its own.
#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/match.h"
#include "google/protobuf/timestamp.pb.h"
#include "server/common/mutex.h"
#include "server/store/job_store.h"

namespace xtrain::server {
namespace {

namespace v1 = xtrain::v1;

// Migration i takes the schema from version i to i + 1. Append only: a released migration never changes.
constexpr const char* kMigrations[] = {
    // 1: jobs (with the replica that owns each), per-job event logs, artifact records, replica leases.
    R"sql(
      CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        client_request_id TEXT NOT NULL,
        state INTEGER NOT NULL,
        priority INTEGER NOT NULL,
        create_order BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
        owner TEXT NOT NULL DEFAULT '',            -- the replica running it; '' = unclaimed
        cancel_wanted BOOLEAN NOT NULL DEFAULT FALSE,  -- a cancel asked on another replica
        job BYTEA NOT NULL
      );
      CREATE UNIQUE INDEX jobs_request_id ON jobs (tenant, client_request_id) WHERE client_request_id <> '';
      CREATE INDEX jobs_claimable ON jobs (priority DESC, create_order) WHERE owner = '';
      CREATE TABLE events (
        job_id TEXT NOT NULL REFERENCES jobs (id),
        sequence BIGINT NOT NULL,
        event BYTEA NOT NULL,
        PRIMARY KEY (job_id, sequence)
      );
      CREATE TABLE artifacts (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        job_id TEXT NOT NULL,
        path TEXT NOT NULL,
        size_bytes BIGINT NOT NULL,
        create_order BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
        info BYTEA NOT NULL
      );
      CREATE INDEX artifacts_job ON artifacts (job_id, create_order);
      CREATE INDEX artifacts_tenant ON artifacts (tenant);
      CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        lease_until TIMESTAMPTZ NOT NULL
      );
    )sql",
};
constexpr int kSchemaVersion = static_cast<int>(std::size(kMigrations));
// Serializes migrations of replicas that start together (pg_advisory_xact_lock's key).
constexpr int64_t kMigrationLock = 0x787472616e;  // "xtran"
constexpr int kPoolSize = 4;
constexpr const char* kChannel = "xtrain_jobs";

bool Terminal(int state) { return state == v1::SUCCEEDED || state == v1::FAILED || state == v1::CANCELLED; }

// The URL without its password, for messages and logs.
std::string Redacted(const std::string& url) {
  const size_t scheme = url.find("://");
  const size_t at = url.find('@');
  if (scheme == std::string::npos || at == std::string::npos || at < scheme) return url;
  const size_t colon = url.find(':', scheme + 3);
  if (colon == std::string::npos || colon > at) return url;
  return absl::StrCat(url.substr(0, colon + 1), "***", url.substr(at));
}

// The canonical code of a libpqxx exception (SQLSTATE classes: 23 integrity, 40 rollback, 53 resources,
// 08 connection, 57 operator intervention such as a server shutting down).
absl::Status FromException(const std::exception& e, absl::string_view what) {
  absl::StatusCode code = absl::StatusCode::kInternal;
  if (dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr ||
      dynamic_cast<const pqxx::in_doubt_error*>(&e) != nullptr) {
    code = absl::StatusCode::kUnavailable;
  } else if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e); sql != nullptr) {
    const std::string state = sql->sqlstate();
    if (absl::StartsWith(state, "23")) code = absl::StatusCode::kFailedPrecondition;
    if (absl::StartsWith(state, "40") || absl::StartsWith(state, "08") || absl::StartsWith(state, "57")) {
      code = absl::StatusCode::kUnavailable;
    }
    if (absl::StartsWith(state, "53")) code = absl::StatusCode::kResourceExhausted;
  }
  std::string message = e.what();
  while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
  return absl::Status(code, absl::StrCat("job store (PostgreSQL): ", what, ": ", message));
}

template <typename Message>
absl::Status Parse(const pqxx::field& field, Message* message, absl::string_view what) {
  const pqxx::binarystring bytes(field);
  if (message->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat("job store (PostgreSQL): ", what, " does not parse as ",
                                          Message::descriptor()->full_name()));
}

pqxx::binarystring Bytes(const google::protobuf::MessageLite& message) {
  return pqxx::binarystring(message.SerializeAsString());
}

absl::Status CheckSequence(absl::string_view job_id, int64_t last, int64_t sequence) {
  if (sequence == last + 1) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("job ", job_id, ": event sequence ", sequence,
                                                    " does not continue its log, whose last sequence is ", last,
                                                    " (expected ", last + 1, ")"));
}

google::protobuf::Timestamp Now() {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  google::protobuf::Timestamp time;
  time.set_seconds(std::chrono::duration_cast<std::chrono::seconds>(now).count());
  time.set_nanos(static_cast<int32_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now).count() % 1000000000));
  return time;
}

class PostgresJobStore : public JobStore {
 public:
  explicit PostgresJobStore(std::string url) : url_(std::move(url)) {}
  ~PostgresJobStore() override {
    stop_ = true;
    if (listener_thread_.joinable()) listener_thread_.join();
  }

  absl::Status Open() {
    return Run("migrate the schema", [&](pqxx::work& tx) -> absl::Status {
      tx.exec_params("SELECT pg_advisory_xact_lock($1)", kMigrationLock);
      tx.exec(
          "CREATE TABLE IF NOT EXISTS schema_version ("
          "  version INTEGER PRIMARY KEY,"
          "  applied_time TIMESTAMPTZ NOT NULL DEFAULT now())");
      pqxx::row row = tx.exec1("SELECT COALESCE(MAX(version), 0) FROM schema_version");
      const int version = row[0].as<int>();
      if (version > kSchemaVersion) {
        return absl::FailedPreconditionError(absl::StrCat(
            "its schema version is ", version, ", newer than this xtrain-server knows (", kSchemaVersion,
            "): run the newer xtrain-server that wrote it"));
      }
      for (int next = version; next < kSchemaVersion; ++next) {
        tx.exec(kMigrations[next]);
        tx.exec_params("INSERT INTO schema_version (version) VALUES ($1)", next + 1);
      }
      return absl::OkStatus();
    });
  }

  bool Shared() const override { return true; }

  absl::Status InsertJob(const JobWrite& write) override {
    const v1::Job& job = write.job;
    if (job.id().empty()) return absl::InvalidArgumentError("a job needs an id");
    return Run("insert a job", [&](pqxx::work& tx) -> absl::Status {
      if (!tx.exec_params("SELECT 1 FROM jobs WHERE id = $1", job.id()).empty()) {
        return absl::AlreadyExistsError(absl::StrCat("job ", job.id(), " already exists"));
      }
      if (!job.client_request_id().empty()) {
        pqxx::result taken = tx.exec_params("SELECT id FROM jobs WHERE tenant = $1 AND client_request_id = $2",
                                            job.tenant(), job.client_request_id());
        if (!taken.empty()) {
          return absl::AlreadyExistsError(absl::StrCat("tenant '", job.tenant(), "' already created job ",
                                                       taken[0][0].c_str(), " with client_request_id '",
                                                       job.client_request_id(), "'"));
        }
      }
      tx.exec_params(
          "INSERT INTO jobs (id, tenant, client_request_id, state, priority, owner, job) "
          "VALUES ($1, $2, $3, $4, $5, $6, $7)",
          job.id(), job.tenant(), job.client_request_id(), static_cast<int>(job.state()),
          job.spec().priority(), job.replica(), Bytes(job));
      if (absl::Status s = InsertEvents(tx, write, 0); !s.ok()) return s;
      Notify(tx, 'c', job.id());
      return absl::OkStatus();
    });
  }

  absl::Status Commit(const std::vector<JobWrite>& writes) override {
    if (writes.empty()) return absl::OkStatus();
    return Run("commit", [&](pqxx::work& tx) -> absl::Status {
      for (const JobWrite& write : writes) {
        const v1::Job& job = write.job;
        pqxx::result row = tx.exec_params(
            "SELECT tenant, client_request_id, owner, "
            "  (SELECT COALESCE(MAX(sequence), 0) FROM events WHERE job_id = $1) "
            "FROM jobs WHERE id = $1 FOR UPDATE",
            job.id());
        if (row.empty()) return absl::NotFoundError(absl::StrCat("job '", job.id(), "' was never inserted"));
        if (row[0][0].as<std::string>() != job.tenant() || row[0][1].as<std::string>() != job.client_request_id()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "job ", job.id(), ": its tenant and client_request_id cannot change (stored '",
              row[0][0].as<std::string>(), "' and '", row[0][1].as<std::string>(), "')"));
        }
        const std::string owner = row[0][2].as<std::string>();
        if (owner != job.replica()) {
          return absl::AbortedError(absl::StrCat(
              "job ", job.id(), " is owned by ",
              owner.empty() ? std::string("no replica (it was re-queued)") : absl::StrCat("replica ", owner), ", not by ",
              job.replica().empty() ? std::string("an unclaimed writer") : absl::StrCat("replica ", job.replica()),
              ": this replica's lease ran out and the job went back to the queue"));
        }
        if (absl::Status s = InsertEvents(tx, write, row[0][3].as<int64_t>()); !s.ok()) return s;
        tx.exec_params("UPDATE jobs SET state = $2, priority = $3, job = $4 WHERE id = $1", job.id(),
                       static_cast<int>(job.state()), job.spec().priority(), Bytes(job));
        Notify(tx, 'c', job.id());
      }
      return absl::OkStatus();
    });
  }

  absl::StatusOr<std::vector<v1::Job>> LoadJobs() override {
    std::vector<v1::Job> jobs;
    absl::Status status = Run("load the jobs", [&](pqxx::work& tx) -> absl::Status {
      for (const pqxx::row& row : tx.exec("SELECT id, job, cancel_wanted FROM jobs ORDER BY create_order")) {
        v1::Job& job = jobs.emplace_back();
        if (absl::Status s = Parse(row[1], &job, absl::StrCat("job ", row[0].c_str())); !s.ok()) return s;
        if (row[2].as<bool>()) job.set_cancel_requested(true);
      }
      return absl::OkStatus();
    });
    if (!status.ok()) return status;
    return jobs;
  }

  absl::StatusOr<std::optional<v1::Job>> FindByRequestId(absl::string_view tenant,
                                                         absl::string_view client_request_id) override {
    if (client_request_id.empty()) return std::nullopt;
    std::optional<v1::Job> found;
    absl::Status status = Run("find a request id", [&](pqxx::work& tx) -> absl::Status {
      pqxx::result rows = tx.exec_params("SELECT id, job FROM jobs WHERE tenant = $1 AND client_request_id = $2",
                                         std::string(tenant), std::string(client_request_id));
      if (rows.empty()) return absl::OkStatus();
      found.emplace();
      return Parse(rows[0][1], &*found, absl::StrCat("job ", rows[0][0].c_str()));
    });
    if (!status.ok()) return status;
    return found;
  }

  absl::StatusOr<std::vector<v1::JobEvent>> ReadEvents(absl::string_view job_id, int64_t from_sequence,
                                                       int64_t limit) override {
    if (limit < 0) return absl::InvalidArgumentError(absl::StrCat("ReadEvents: limit ", limit, " is negative"));
    std::vector<v1::JobEvent> events;
    absl::Status status = Run("read events", [&](pqxx::work& tx) -> absl::Status {
      const std::string id(job_id);
      pqxx::result rows =
          limit > 0 ? tx.exec_params("SELECT sequence, event FROM events WHERE job_id = $1 AND sequence >= $2 "
                                     "ORDER BY sequence LIMIT $3",
                                     id, from_sequence, limit)
                    : tx.exec_params("SELECT sequence, event FROM events WHERE job_id = $1 AND sequence >= $2 "
                                     "ORDER BY sequence",
                                     id, from_sequence);
      for (const pqxx::row& row : rows) {
        absl::Status s = Parse(row[1], &events.emplace_back(), absl::StrCat("job ", id, "'s event ", row[0].c_str()));
        if (!s.ok()) return s;
      }
      if (events.empty() && tx.exec_params("SELECT 1 FROM jobs WHERE id = $1", id).empty()) {
        return absl::NotFoundError(absl::StrCat("job '", id, "' does not exist"));
      }
      return absl::OkStatus();
    });
    if (!status.ok()) return status;
    return events;
  }

  absl::Status PutArtifact(const ArtifactRecord& record) override {
    const v1::ArtifactInfo& info = record.info;
    if (info.id().empty()) return absl::InvalidArgumentError("an artifact needs an id");
    return Run("record an artifact", [&](pqxx::work& tx) -> absl::Status {
      if (!tx.exec_params("SELECT 1 FROM artifacts WHERE id = $1", info.id()).empty()) {
        return absl::AlreadyExistsError(absl::StrCat("artifact ", info.id(), " already exists"));
      }
      tx.exec_params(
          "INSERT INTO artifacts (id, tenant, job_id, path, size_bytes, info) VALUES ($1, $2, $3, $4, $5, $6)",
          info.id(), record.tenant, info.job_id(), record.path, info.size_bytes(), Bytes(info));
      return absl::OkStatus();
    });
  }

  absl::StatusOr<ArtifactRecord> GetArtifact(absl::string_view id) override {
    ArtifactRecord record;
    absl::Status status = Run("read an artifact", [&](pqxx::work& tx) -> absl::Status {
      pqxx::result rows = tx.exec_params("SELECT tenant, path, info FROM artifacts WHERE id = $1", std::string(id));
      if (rows.empty()) return absl::NotFoundError(absl::StrCat("artifact '", id, "' does not exist"));
      record.tenant = rows[0][0].as<std::string>();
      record.path = rows[0][1].as<std::string>();
      return Parse(rows[0][2], &record.info, absl::StrCat("artifact ", id));
    });
    if (!status.ok()) return status;
    return record;
  }

  absl::StatusOr<std::vector<ArtifactRecord>> ListArtifacts(absl::string_view job_id) override {
    std::vector<ArtifactRecord> records;
    absl::Status status = Run("list artifacts", [&](pqxx::work& tx) -> absl::Status {
      for (const pqxx::row& row : tx.exec_params(
               "SELECT id, tenant, path, info FROM artifacts WHERE job_id = $1 ORDER BY create_order",
               std::string(job_id))) {
        ArtifactRecord& record = records.emplace_back();
        record.tenant = row[1].as<std::string>();
        record.path = row[2].as<std::string>();
        if (absl::Status s = Parse(row[3], &record.info, absl::StrCat("artifact ", row[0].c_str())); !s.ok()) return s;
      }
      return absl::OkStatus();
    });
    if (!status.ok()) return status;
    return records;
  }

  absl::StatusOr<int64_t> TenantArtifactBytes(absl::string_view tenant) override {
    int64_t bytes = 0;
    absl::Status status = Run("sum a tenant's artifacts", [&](pqxx::work& tx) -> absl::Status {
      bytes = tx.exec_params1("SELECT COALESCE(SUM(size_bytes), 0) FROM artifacts WHERE tenant = $1",
                              std::string(tenant))[0]
                  .as<int64_t>();
      return absl::OkStatus();
    });
    if (!status.ok()) return status;
    return bytes;
  }

  absl::Status DeleteArtifact(absl::string_view id) override {
    return Run("delete an artifact", [&](pqxx::work& tx) -> absl::Status {
      tx.exec_params("DELETE FROM artifacts WHERE id = $1", std::string(id));
      return absl::OkStatus();
    });
  }

  absl::Status Heartbeat(absl::string_view replica, double lease_seconds) override {
    return Run("renew the lease", [&](pqxx::work& tx) -> absl::Status {
      tx.exec_params(
          "INSERT INTO replicas (id, lease_until) VALUES ($1, now() + make_interval(secs => $2)) "
          "ON CONFLICT (id) DO UPDATE SET lease_until = EXCLUDED.lease_until",
          std::string(replica), lease_seconds);
      return absl::OkStatus();
    });
  }

  absl::StatusOr<std::vector<v1::Job>> ClaimJobs(absl::string_view replica, int max,
                                                 absl::string_view job_id) override {
    std::vector<v1::Job> claimed;
    if (max <= 0 || replica.empty()) return claimed;
    absl::Status status = Run("claim jobs", [&](pqxx::work& tx) -> absl::Status {
      const int queued = v1::QUEUED;
      pqxx::result rows =
          job_id.empty()
              ? tx.exec_params("SELECT id, job FROM jobs WHERE owner = '' AND state = $1 "
                               "ORDER BY priority DESC, create_order LIMIT $2 FOR UPDATE SKIP LOCKED",
                               queued, max)
              : tx.exec_params("SELECT id, job FROM jobs WHERE owner = '' AND state = $1 AND id = $2 "
                               "FOR UPDATE SKIP LOCKED",
                               queued, std::string(job_id));
      for (const pqxx::row& row : rows) {
        v1::Job& job = claimed.emplace_back();
        if (absl::Status s = Parse(row[1], &job, absl::StrCat("job ", row[0].c_str())); !s.ok()) return s;
        job.set_replica(std::string(replica));
        tx.exec_params("UPDATE jobs SET owner = $2, job = $3 WHERE id = $1", job.id(), job.replica(), Bytes(job));
        Notify(tx, 'c', job.id());
      }
      return absl::OkStatus();
    });
    if (!status.ok()) return status;
    return claimed;
  }

  absl::StatusOr<std::vector<v1::Job>> RequeueOrphans() override {
    std::vector<v1::Job> requeued;
    absl::Status status = Run("re-queue the jobs of lost replicas", [&](pqxx::work& tx) -> absl::Status {
      pqxx::result rows = tx.exec(
          "SELECT j.id, j.job, j.owner, "
          "  (SELECT COALESCE(MAX(sequence), 0) FROM events WHERE job_id = j.id), "
          "  (SELECT lease_until FROM replicas WHERE id = j.owner)::TEXT "
          "FROM jobs j WHERE j.owner <> '' AND j.state NOT IN (4, 5, 6) AND NOT EXISTS "
          "  (SELECT 1 FROM replicas r WHERE r.id = j.owner AND r.lease_until > now()) "
          "FOR UPDATE OF j SKIP LOCKED");
      for (const pqxx::row& row : rows) {
        v1::Job& job = requeued.emplace_back();
        if (absl::Status s = Parse(row[1], &job, absl::StrCat("job ", row[0].c_str())); !s.ok()) return s;
        if (Terminal(job.state())) continue;
        const std::string owner = row[2].as<std::string>();
        int64_t last = row[3].as<int64_t>();
        JobWrite write;
        if (job.state() == v1::RUNNING) {
          v1::JobEvent& event = write.events.emplace_back();
          event.set_sequence(++last);
          *event.mutable_time() = Now();
          v1::StateChange& change = *event.mutable_state();
          change.set_from_state(v1::RUNNING);
          change.set_to_state(v1::QUEUED);
          change.set_reason(absl::StrCat(
              "replica ", owner, " stopped renewing its lease (",
              row[4].is_null() ? "it never took one" : absl::StrCat("it ran out at ", row[4].c_str()),
              "); the job resumes from its checkpoint at step ", job.progress().last_checkpoint_step(),
              " on another replica"));
          job.set_state(v1::QUEUED);
          job.set_last_sequence(last);
        }
        job.set_replica("");
        job.set_device("");
        *job.mutable_update_time() = Now();
        write.job = job;
        if (absl::Status s = InsertEvents(tx, write, row[3].as<int64_t>()); !s.ok()) return s;
        tx.exec_params("UPDATE jobs SET owner = '', state = $2, job = $3 WHERE id = $1", job.id(),
                       static_cast<int>(job.state()), Bytes(job));
        Notify(tx, 'r', job.id());
      }
      return absl::OkStatus();
    });
    if (!status.ok()) return status;
    return requeued;
  }

  absl::StatusOr<v1::Job> ReadJob(absl::string_view job_id) override {
    v1::Job job;
    absl::Status status = Run("read a job", [&](pqxx::work& tx) -> absl::Status {
      pqxx::result rows = tx.exec_params("SELECT job, cancel_wanted FROM jobs WHERE id = $1", std::string(job_id));
      if (rows.empty()) return absl::NotFoundError(absl::StrCat("job '", job_id, "' does not exist"));
      if (absl::Status s = Parse(rows[0][0], &job, absl::StrCat("job ", job_id)); !s.ok()) return s;
      if (rows[0][1].as<bool>()) job.set_cancel_requested(true);
      return absl::OkStatus();
    });
    if (!status.ok()) return status;
    return job;
  }

  absl::Status RequestCancel(absl::string_view job_id) override {
    return Run("ask for a cancel", [&](pqxx::work& tx) -> absl::Status {
      pqxx::result rows =
          tx.exec_params("UPDATE jobs SET cancel_wanted = TRUE WHERE id = $1 RETURNING id", std::string(job_id));
      if (rows.empty()) return absl::NotFoundError(absl::StrCat("job '", job_id, "' does not exist"));
      Notify(tx, 'x', std::string(job_id));
      return absl::OkStatus();
    });
  }

  void Listen(std::function<void(const JobChange&)> listener) override {
    listener_ = std::move(listener);
    listener_thread_ = std::thread([this] { ListenLoop(); });
  }

  const std::string& url() const { return url_; }

 private:
  // Hands every notification on the channel to the listener.
  class Receiver : public pqxx::notification_receiver {
   public:
    Receiver(pqxx::connection_base& connection, std::function<void(const JobChange&)>* listener)
        : pqxx::notification_receiver(connection, kChannel), listener_(listener) {}
    // Payloads are "<kind>:<job id>" (Notify).
    void operator()(const std::string& payload, int) override {
      if (payload.size() < 2 || payload[1] != ':') return;
      JobChange change;
      change.kind = payload[0] == 'x'   ? JobChange::Kind::kCancelRequested
                    : payload[0] == 'r' ? JobChange::Kind::kRequeued
                                        : JobChange::Kind::kCommitted;
      change.job_id = payload.substr(2);
      (*listener_)(change);
    }

   private:
    std::function<void(const JobChange&)>* listener_;
  };

  // Listens until the store closes; after a lost connection, reconnects and tells the listener ""
  // (notifications may have been missed: read everything again).
  void ListenLoop() {
    bool lost = false;
    while (!stop_) {
      try {
        pqxx::connection connection(url_);
        Receiver receiver(connection, &listener_);
        if (lost) listener_(JobChange{JobChange::Kind::kResync, ""});
        while (!stop_) connection.await_notification(0, 200000);
      } catch (const std::exception&) {
        lost = true;
        for (int i = 0; i < 10 && !stop_; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
  }

  // Announces a change to `job_id` when the transaction commits: 'c' committed, 'x' cancel requested,
  // 'r' re-queued.
  static void Notify(pqxx::work& tx, char kind, const std::string& job_id) {
    tx.exec_params("SELECT pg_notify($1, $2)", kChannel, absl::StrCat(std::string(1, kind), ":", job_id));
  }

  // The events in one statement (a round trip per event made a 100-event commit take 30 ms).
  absl::Status InsertEvents(pqxx::work& tx, const JobWrite& write, int64_t last_sequence) {
    if (write.events.empty()) return absl::OkStatus();
    const std::string id = absl::StrCat("'", tx.esc(write.job.id()), "'");  // quote() trips GCC 12's -Wrestrict
    std::vector<std::string> rows;
    std::string bytes;
    for (const v1::JobEvent& event : write.events) {
      if (absl::Status s = CheckSequence(write.job.id(), last_sequence, event.sequence()); !s.ok()) return s;
      last_sequence = event.sequence();
      bytes.clear();
      event.SerializeToString(&bytes);
      rows.push_back(absl::StrCat(
          "(", id, ", ", event.sequence(), ", ",
          tx.quote_raw(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()), ")"));
    }
    const std::string sql =
        absl::StrCat("INSERT INTO events (job_id, sequence, event) VALUES ", absl::StrJoin(rows, ", "));
    tx.exec(sql);
    return absl::OkStatus();
  }

  // Runs `body` in one transaction on a pooled connection: committed when it returns OK, rolled back
  // otherwise; libpqxx's exceptions become statuses, and a broken connection is not pooled again.
  absl::Status Run(absl::string_view what, const std::function<absl::Status(pqxx::work&)>& body) {
    std::unique_ptr<pqxx::connection> connection;
    {
      MutexLock lock(&mu_);
      if (!idle_.empty()) {
        connection = std::move(idle_.back());
        idle_.pop_back();
      }
    }
    absl::Status status;
    try {
      if (connection == nullptr) connection = std::make_unique<pqxx::connection>(url_);
      pqxx::work tx(*connection);
      status = body(tx);
      if (status.ok()) tx.commit();
    } catch (const std::exception& e) {
      status = FromException(e, what);
      if (!status.ok() && status.code() == absl::StatusCode::kUnavailable) connection.reset();
    }
    if (connection != nullptr && connection->is_open()) {
      MutexLock lock(&mu_);
      if (idle_.size() < kPoolSize) idle_.push_back(std::move(connection));
    }
    return status;
  }

  const std::string url_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_ ABSL_GUARDED_BY(mu_);
  std::function<void(const JobChange&)> listener_;
  std::thread listener_thread_;
  std::atomic<bool> stop_{false};
};

}  // namespace

absl::StatusOr<std::unique_ptr<JobStore>> OpenPostgresJobStore(const std::string& url) {
  auto store = std::make_unique<PostgresJobStore>(url);
  if (absl::Status status = store->Open(); !status.ok()) {
    return absl::Status(status.code() == absl::StatusCode::kFailedPrecondition ? status.code()
                                                                                : absl::StatusCode::kUnavailable,
                        absl::StrCat("cannot open the job store ", Redacted(url), ": ", status.message()));
  }
  return std::unique_ptr<JobStore>(std::move(store));
}

}  // namespace xtrain::server
