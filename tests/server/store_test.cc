// The job store's contract (server/store/job_store.h) on a real file, for every implementation, and the
// SQLite store's own promises: one server per file, clear refusals of files it cannot use.
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pqxx/pqxx>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "server/store/job_store.h"
#include "server/store/sqlite_job_store.h"
#include "tests/server/http_client.h"
#include "tests/server/postgres_test_util.h"

namespace xtrain::server {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using xtrain::v1::ArtifactInfo;
using xtrain::v1::Job;
using xtrain::v1::JobEvent;
using xtrain::v1::JobState;

// A fresh directory, removed with everything in it when the test ends, failed or not.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "xtrain-store-test-XXXXXX").string();
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) fs::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A store implementation under test: `open` opens, or opens again, the store kept in a directory.
struct StoreBackend {
  std::string name;
  std::function<absl::StatusOr<std::unique_ptr<JobStore>>(const std::string& dir)> open;
};

void PrintTo(const StoreBackend& backend, std::ostream* os) { *os << backend.name; }

// The database of a test directory: its name, lower case, letters, digits and _.
std::string DatabaseName(const std::string& dir) {
  std::string name = absl::AsciiStrToLower(fs::path(dir).filename().string());
  for (char& c : name) c = absl::ascii_isalnum(c) ? c : '_';
  return name;
}

// The PostgreSQL store of a test directory: a database of the process's server named after the
// directory, made at its first open.
absl::StatusOr<std::unique_ptr<JobStore>> OpenPostgresFor(const std::string& dir) {
  static std::set<std::string>* made = new std::set<std::string>();
  std::string error;
  PostgresServer* server = SharedPostgres(&error);
  if (server == nullptr) return absl::FailedPreconditionError(error);
  const std::string name = DatabaseName(dir);
  if (made->insert(name).second) {
    absl::StatusOr<std::string> url = server->CreateDatabase(name);
    if (!url.ok()) return url.status();
  }
  return OpenPostgresJobStore(server->Url(name));
}

std::vector<StoreBackend> Backends() {
  return {{"sqlite", [](const std::string& dir) { return OpenSqliteJobStore(dir + "/jobs.db"); }},
          {"postgres", OpenPostgresFor}};
}

// Equal messages: compared by their deterministic encodings (maps in key order), which the generated code
// writes. Reflection-based comparison (MessageDifferencer) is avoided: in the ThreadSanitizer build the
// system's uninstrumented libprotobuf sees map fields with another layout than the instrumented code.
::testing::AssertionResult ProtoEq(const google::protobuf::Message& expected,
                                   const google::protobuf::Message& actual) {
  const auto encode = [](const google::protobuf::Message& message) {
    std::string bytes;
    google::protobuf::io::StringOutputStream output(&bytes);
    google::protobuf::io::CodedOutputStream coded(&output);
    coded.SetSerializationDeterministic(true);
    message.SerializeToCodedStream(&coded);
    coded.Trim();
    return bytes;
  };
  if (expected.GetTypeName() == actual.GetTypeName() && encode(expected) == encode(actual)) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "expected " << expected.ShortDebugString() << "\n  actual "
                                       << actual.ShortDebugString();
}

google::protobuf::Timestamp Time(int64_t seconds) {
  google::protobuf::Timestamp time;
  time.set_seconds(seconds);
  time.set_nanos(123456789);
  return time;
}

// A job with every top-level field set (and nested ones in the spec and plan), so a round trip
// that drops or garbles any of them shows.
Job FullJob(const std::string& id, const std::string& tenant, const std::string& request_id) {
  Job job;
  job.set_id(id);
  job.set_tenant(tenant);
  job.set_replica("replica-0");
  xtrain::v1::JobSpec* spec = job.mutable_spec();
  spec->set_display_name("resnet on fashion-mnist \xE2\x9C\x93");
  spec->mutable_model()->set_name("resnet18");
  spec->mutable_model()->set_width(16);
  spec->mutable_model()->add_freeze("features.0");
  spec->mutable_dataset()->set_kind(xtrain::v1::DatasetSpec::MNIST);
  spec->mutable_dataset()->set_path("fashion-mnist");
  spec->mutable_training()->set_lr(0.05);
  spec->mutable_training()->set_seed(18446744073709551615ull);
  spec->mutable_memory()->set_budget_bytes(int64_t{33} << 30);
  spec->set_priority(-7);
  (*spec->mutable_labels())["team"] = "vision";
  (*spec->mutable_labels())["run"] = "7";
  job.set_state(xtrain::v1::RUNNING);
  xtrain::v1::Plan* plan = job.mutable_plan();
  plan->set_batch_size(64);
  plan->set_predicted_peak_bytes(33'620'000);
  plan->set_fidelity(0.8125);
  xtrain::v1::LayerPlan* layer = plan->add_layers();
  layer->set_path("layer1.0.conv1");
  layer->set_kind(xtrain::v1::LayerPlan::XCONV);
  layer->set_probes(16);
  plan->set_table(std::string("a table\0with a zero byte", 24));
  job.mutable_progress()->set_step(120);
  job.mutable_progress()->set_loss(0.4375);
  job.set_queue_position(3);
  job.set_waiting_reason("needs cpu: 12 MiB missing");
  job.set_device("cpu");
  job.set_attempts(2);
  job.set_failure_reason("worker killed by signal 9");
  job.set_client_request_id(request_id);
  *job.mutable_create_time() = Time(1'700'000'000);
  *job.mutable_start_time() = Time(1'700'000'010);
  *job.mutable_end_time() = Time(1'700'000'020);
  *job.mutable_update_time() = Time(1'700'000'030);
  (*job.mutable_final_metrics())["accuracy"] = 0.8575;
  job.set_weights_artifact_id("art-weights");
  job.set_cancel_requested(true);
  job.set_last_sequence(2);
  job.set_budget_bytes(int64_t{32} << 20);
  return job;
}

// A small job: what most tests need.
Job NewJob(const std::string& id, const std::string& request_id = "") {
  Job job;
  job.set_id(id);
  job.set_tenant("team-a");
  job.set_client_request_id(request_id);
  job.set_state(xtrain::v1::QUEUED);
  return job;
}

JobEvent StateEvent(int64_t sequence, JobState from, JobState to) {
  JobEvent event;
  event.set_sequence(sequence);
  *event.mutable_time() = Time(1'700'000'000 + sequence);
  event.mutable_state()->set_from_state(from);
  event.mutable_state()->set_to_state(to);
  event.mutable_state()->set_reason(absl::StrCat("reason ", sequence));
  return event;
}

JobEvent StepEvent(int64_t sequence, int64_t step) {
  JobEvent event;
  event.set_sequence(sequence);
  *event.mutable_time() = Time(1'700'000'000 + sequence);
  event.mutable_step()->set_step(step);
  event.mutable_step()->set_loss(1.0 / static_cast<double>(step + 1));
  event.mutable_step()->add_probes(16);
  event.mutable_step()->add_probes(0);
  return event;
}

// Step events numbered first..last.
std::vector<JobEvent> StepEvents(int64_t first, int64_t last) {
  std::vector<JobEvent> events;
  for (int64_t sequence = first; sequence <= last; ++sequence) events.push_back(StepEvent(sequence, sequence * 10));
  return events;
}

// The job after `events`: what the server would commit with them.
JobWrite Advance(Job job, std::vector<JobEvent> events) {
  if (!events.empty()) job.set_last_sequence(events.back().sequence());
  job.mutable_progress()->set_step(job.progress().step() + static_cast<int64_t>(events.size()));
  return JobWrite{std::move(job), std::move(events)};
}

std::vector<int64_t> Sequences(const std::vector<JobEvent>& events) {
  std::vector<int64_t> sequences;
  for (const JobEvent& event : events) sequences.push_back(event.sequence());
  return sequences;
}

std::vector<std::string> Ids(const std::vector<Job>& jobs) {
  std::vector<std::string> ids;
  for (const Job& job : jobs) ids.push_back(job.id());
  return ids;
}

ArtifactRecord Artifact(const std::string& id, const std::string& job_id, int64_t size) {
  ArtifactRecord record;
  record.info.set_id(id);
  record.info.set_name(absl::StrCat(id, ".pt"));
  record.info.set_kind(job_id.empty() ? "upload" : "weights");
  record.info.set_size_bytes(size);
  record.info.set_sha256(std::string(64, 'c'));
  record.info.set_job_id(job_id);
  *record.info.mutable_create_time() = Time(1'700'000'000 + size);
  record.tenant = "team-a";
  record.path = absl::StrCat("artifacts/", id);
  return record;
}

::testing::AssertionResult RecordEq(const ArtifactRecord& expected, const ArtifactRecord& actual) {
  if (expected.tenant != actual.tenant) {
    return ::testing::AssertionFailure() << "tenant " << actual.tenant << " != " << expected.tenant;
  }
  if (expected.path != actual.path) {
    return ::testing::AssertionFailure() << "path " << actual.path << " != " << expected.path;
  }
  return ProtoEq(expected.info, actual.info);
}

// Every test gets a fresh store in a fresh directory; tests that reopen it call Reopen().
class Store : public ::testing::TestWithParam<StoreBackend> {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty()) << "no temporary directory";
    absl::StatusOr<std::unique_ptr<JobStore>> store = GetParam().open(dir_.path());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }

  // Closes the store, then opens it again from its files.
  void Reopen() {
    store_.reset();
    absl::StatusOr<std::unique_ptr<JobStore>> store = GetParam().open(dir_.path());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }

  std::vector<Job> Jobs() {
    absl::StatusOr<std::vector<Job>> jobs = store_->LoadJobs();
    EXPECT_TRUE(jobs.ok()) << jobs.status();
    return jobs.ok() ? *jobs : std::vector<Job>{};
  }
  std::vector<JobEvent> Events(const std::string& job_id, int64_t from = 0, int64_t limit = 0) {
    absl::StatusOr<std::vector<JobEvent>> events = store_->ReadEvents(job_id, from, limit);
    EXPECT_TRUE(events.ok()) << events.status();
    return events.ok() ? *events : std::vector<JobEvent>{};
  }

  TempDir dir_;
  std::unique_ptr<JobStore> store_;
};

INSTANTIATE_TEST_SUITE_P(, Store, ::testing::ValuesIn(Backends()),
                         [](const ::testing::TestParamInfo<StoreBackend>& info) { return info.param.name; });

TEST_P(Store, InsertThenLoadKeepsEveryField) {
  Job full = FullJob("job-b", "team-a", "req-1");
  // The helper must set every field of Job, or this test would not cover them all.
  std::vector<const google::protobuf::FieldDescriptor*> set_fields;
  full.GetReflection()->ListFields(full, &set_fields);
  ASSERT_EQ(set_fields.size(), static_cast<size_t>(Job::descriptor()->field_count()));
  std::vector<JobEvent> events = {StateEvent(1, xtrain::v1::JOB_STATE_UNSPECIFIED, xtrain::v1::QUEUED),
                                  StepEvent(2, 0)};
  ASSERT_TRUE(store_->InsertJob({full, events}).ok());
  // Inserted after, listed after, though its id sorts first.
  Job small = NewJob("job-a");
  ASSERT_TRUE(store_->InsertJob({small, {}}).ok());

  std::vector<Job> jobs = Jobs();
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_TRUE(ProtoEq(full, jobs[0]));
  EXPECT_TRUE(ProtoEq(small, jobs[1]));
  std::vector<JobEvent> read = Events("job-b");
  ASSERT_EQ(read.size(), 2u);
  EXPECT_TRUE(ProtoEq(events[0], read[0]));
  EXPECT_TRUE(ProtoEq(events[1], read[1]));
  EXPECT_TRUE(Events("job-a").empty());

  absl::StatusOr<std::optional<Job>> found = store_->FindByRequestId("team-a", "req-1");
  ASSERT_TRUE(found.ok()) << found.status();
  ASSERT_TRUE(found->has_value());
  EXPECT_TRUE(ProtoEq(full, **found));
  found = store_->FindByRequestId("team-b", "req-1");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_FALSE(found->has_value()) << "another tenant's request id matched";
  found = store_->FindByRequestId("team-a", "");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_FALSE(found->has_value()) << "an empty request id matched a job";
}

TEST_P(Store, InsertRefusesTakenIdOrRequestIdNamingTheExistingJob) {
  ASSERT_TRUE(store_->InsertJob({NewJob("job-1", "req-1"), {}}).ok());

  absl::Status status = store_->InsertJob({NewJob("job-2", "req-1"), StepEvents(1, 2)});
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists) << status;
  EXPECT_THAT(status.message(), HasSubstr("job-1"));
  status = store_->InsertJob({NewJob("job-1", "req-other"), {}});
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists) << status;
  EXPECT_THAT(status.message(), HasSubstr("job-1"));

  // The same request id from another tenant, and jobs without one, are distinct jobs.
  Job other_tenant = NewJob("job-3", "req-1");
  other_tenant.set_tenant("team-b");
  EXPECT_TRUE(store_->InsertJob({other_tenant, {}}).ok());
  EXPECT_TRUE(store_->InsertJob({NewJob("job-4"), {}}).ok());
  EXPECT_TRUE(store_->InsertJob({NewJob("job-5"), {}}).ok());

  EXPECT_THAT(Ids(Jobs()), ElementsAre("job-1", "job-3", "job-4", "job-5"));
  // The refused insert left no events behind.
  EXPECT_EQ(store_->ReadEvents("job-2", 0).status().code(), absl::StatusCode::kNotFound);
}

TEST_P(Store, InsertRefusesALogThatDoesNotStartAtOne) {
  for (std::vector<JobEvent> events : {StepEvents(2, 3), std::vector<JobEvent>{StepEvent(1, 0), StepEvent(1, 0)},
                                       std::vector<JobEvent>{StepEvent(1, 0), StepEvent(3, 0)}}) {
    absl::Status status = store_->InsertJob({NewJob("job-1", "req-1"), events});
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  }
  EXPECT_TRUE(Jobs().empty());
  absl::StatusOr<std::optional<Job>> found = store_->FindByRequestId("team-a", "req-1");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_FALSE(found->has_value());
  // The id and request id are still free.
  EXPECT_TRUE(store_->InsertJob({NewJob("job-1", "req-1"), StepEvents(1, 1)}).ok());
}

TEST_P(Store, CommitAppendsEventsAndReplacesSnapshots) {
  Job a = NewJob("job-a");
  Job b = NewJob("job-b");
  ASSERT_TRUE(store_->InsertJob({a, StepEvents(1, 1)}).ok());
  ASSERT_TRUE(store_->InsertJob({b, {}}).ok());

  a.set_state(xtrain::v1::RUNNING);
  JobWrite a1 = Advance(a, StepEvents(2, 3));
  JobWrite b1 = Advance(b, StepEvents(1, 2));
  // A second write of the same job in one commit continues the first.
  JobWrite a2 = Advance(a1.job, StepEvents(4, 4));
  a2.job.set_state(xtrain::v1::SUCCEEDED);
  ASSERT_TRUE(store_->Commit({a1, b1, a2}).ok());
  // A snapshot-only write (no events) is a write too.
  JobWrite b2 = Advance(b1.job, {});
  b2.job.set_device("cpu");
  ASSERT_TRUE(store_->Commit({b2}).ok());
  EXPECT_TRUE(store_->Commit({}).ok());

  std::vector<Job> jobs = Jobs();
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_TRUE(ProtoEq(a2.job, jobs[0]));
  EXPECT_TRUE(ProtoEq(b2.job, jobs[1]));
  EXPECT_THAT(Sequences(Events("job-a")), ElementsAre(1, 2, 3, 4));
  EXPECT_THAT(Sequences(Events("job-b")), ElementsAre(1, 2));
  EXPECT_TRUE(ProtoEq(a1.events[1], Events("job-a")[2]));
}

TEST_P(Store, CommitRejectsGapsAndRepeatsAndAppliesNothing) {
  const JobWrite a_insert = Advance(NewJob("job-a"), StepEvents(1, 3));
  const JobWrite b_insert = Advance(NewJob("job-b"), StepEvents(1, 1));
  ASSERT_TRUE(store_->InsertJob(a_insert).ok());
  ASSERT_TRUE(store_->InsertJob(b_insert).ok());
  const Job& a = a_insert.job;
  const Job& b = b_insert.job;

  JobWrite b_ok = Advance(b, StepEvents(2, 3));
  b_ok.job.set_state(xtrain::v1::RUNNING);
  // The stale snapshot says the log ends at 1; the stored log ends at 3: the store goes by the log.
  Job stale = a;
  stale.set_last_sequence(1);
  const std::vector<std::vector<JobWrite>> refused = {
      {b_ok, Advance(a, StepEvents(5, 5))},                       // a gap
      {b_ok, Advance(a, StepEvents(3, 4))},                       // a repeat
      {b_ok, Advance(stale, StepEvents(2, 2))},                   // a repeat the snapshot would allow
      {b_ok, Advance(a, {StepEvent(4, 0), StepEvent(6, 0)})},     // a gap inside one write
      {b_ok, Advance(b_ok.job, StepEvents(3, 3))},                // a repeat of an earlier write's event
  };
  for (const std::vector<JobWrite>& writes : refused) {
    absl::Status status = store_->Commit(writes);
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
    EXPECT_THAT(status.message(), HasSubstr("sequence"));
  }
  absl::Status status = store_->Commit({b_ok, Advance(NewJob("job-never"), StepEvents(1, 1))});
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr("job-never"));

  // Nothing of the refused commits is stored: not b's events, not b's snapshot.
  std::vector<Job> jobs = Jobs();
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_TRUE(ProtoEq(a, jobs[0]));
  EXPECT_TRUE(ProtoEq(b, jobs[1]));
  EXPECT_THAT(Sequences(Events("job-a")), ElementsAre(1, 2, 3));
  EXPECT_THAT(Sequences(Events("job-b")), ElementsAre(1));
  // The store takes the next good commit.
  ASSERT_TRUE(store_->Commit({b_ok, Advance(a, StepEvents(4, 4))}).ok());
  EXPECT_THAT(Sequences(Events("job-a")), ElementsAre(1, 2, 3, 4));
  EXPECT_THAT(Sequences(Events("job-b")), ElementsAre(1, 2, 3));
}

TEST_P(Store, RefusesEmptyIdsAndAChangedTenantOrRequestId) {
  EXPECT_EQ(store_->InsertJob({NewJob(""), {}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->PutArtifact(Artifact("", "job-a", 1)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Jobs().empty());

  // A job's tenant and request id are its identity for idempotent submits: a commit cannot move it.
  ASSERT_TRUE(store_->InsertJob({NewJob("job-a", "req-1"), {}}).ok());
  JobWrite moved = Advance(NewJob("job-a", "req-1"), StepEvents(1, 1));
  moved.job.set_tenant("team-b");
  EXPECT_EQ(store_->Commit({moved}).code(), absl::StatusCode::kInvalidArgument);
  JobWrite renamed = Advance(NewJob("job-a", "req-2"), StepEvents(1, 1));
  EXPECT_EQ(store_->Commit({renamed}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Events("job-a").empty());
  absl::StatusOr<std::optional<Job>> found = store_->FindByRequestId("team-a", "req-1");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_TRUE(found->has_value());
}

TEST_P(Store, ReadEventsFromASequenceWithALimit) {
  std::vector<JobEvent> events = StepEvents(1, 10);
  ASSERT_TRUE(store_->InsertJob({NewJob("job-a"), events}).ok());
  ASSERT_TRUE(store_->InsertJob({NewJob("job-b"), StepEvents(1, 4)}).ok());

  EXPECT_THAT(Sequences(Events("job-a", 4, 3)), ElementsAre(4, 5, 6));
  EXPECT_THAT(Sequences(Events("job-a", 8, 100)), ElementsAre(8, 9, 10));
  EXPECT_THAT(Sequences(Events("job-a", 9)), ElementsAre(9, 10));
  EXPECT_EQ(Events("job-a", 0).size(), 10u);
  EXPECT_EQ(Events("job-a", 1).size(), 10u);
  EXPECT_EQ(Events("job-a", 0, 2).size(), 2u);
  EXPECT_TRUE(Events("job-a", 11).empty()) << "past the end of the log is an empty read";
  std::vector<JobEvent> read = Events("job-a", 7, 1);
  ASSERT_EQ(read.size(), 1u);
  EXPECT_TRUE(ProtoEq(events[6], read[0]));

  EXPECT_EQ(store_->ReadEvents("job-missing", 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ReadEvents("job-a", 0, -1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(Store, ArtifactsPutGetListDelete) {
  // Ids that sort against their order of creation: lists go by creation.
  const std::vector<ArtifactRecord> records = {Artifact("art-z", "job-a", 1), Artifact("art-m", "job-b", 2),
                                               Artifact("art-a", "job-a", 3), Artifact("art-upload", "", 4)};
  for (const ArtifactRecord& record : records) ASSERT_TRUE(store_->PutArtifact(record).ok()) << record.info.id();
  absl::Status status = store_->PutArtifact(Artifact("art-z", "job-c", 5));
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists) << status;

  for (const ArtifactRecord& record : records) {
    absl::StatusOr<ArtifactRecord> got = store_->GetArtifact(record.info.id());
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(RecordEq(record, *got));
  }
  EXPECT_EQ(store_->GetArtifact("art-missing").status().code(), absl::StatusCode::kNotFound);

  absl::StatusOr<std::vector<ArtifactRecord>> listed = store_->ListArtifacts("job-a");
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_TRUE(RecordEq(records[0], (*listed)[0]));
  EXPECT_TRUE(RecordEq(records[2], (*listed)[1]));
  listed = store_->ListArtifacts("job-none");
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_TRUE(listed->empty());

  EXPECT_TRUE(store_->DeleteArtifact("art-z").ok());
  EXPECT_TRUE(store_->DeleteArtifact("art-z").ok()) << "a second delete is not an error";
  EXPECT_TRUE(store_->DeleteArtifact("art-never").ok());
  EXPECT_EQ(store_->GetArtifact("art-z").status().code(), absl::StatusCode::kNotFound);
  listed = store_->ListArtifacts("job-a");
  ASSERT_TRUE(listed.ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_TRUE(RecordEq(records[2], (*listed)[0]));
  // The id is free again.
  EXPECT_TRUE(store_->PutArtifact(Artifact("art-z", "job-c", 6)).ok());
}

TEST_P(Store, TenantArtifactBytesSumsThatTenantsArtifactsOnly) {
  ArtifactRecord other = Artifact("art-b", "", 7);
  other.tenant = "team-b";
  for (const ArtifactRecord& record : {Artifact("art-a1", "job-a", 100), Artifact("art-a2", "", 250), other}) {
    ASSERT_TRUE(store_->PutArtifact(record).ok()) << record.info.id();
  }
  EXPECT_EQ(*store_->TenantArtifactBytes("team-a"), 350);
  EXPECT_EQ(*store_->TenantArtifactBytes("team-b"), 7);
  EXPECT_EQ(*store_->TenantArtifactBytes("team-c"), 0);
  ASSERT_TRUE(store_->DeleteArtifact("art-a2").ok());
  EXPECT_EQ(*store_->TenantArtifactBytes("team-a"), 100);
}

TEST_P(Store, ReopenKeepsEverything) {
  Job full = FullJob("job-a", "team-a", "req-1");
  ASSERT_TRUE(store_->InsertJob({full, StepEvents(1, 2)}).ok());
  JobWrite write = Advance(full, StepEvents(3, 5));
  ASSERT_TRUE(store_->Commit({write}).ok());
  ArtifactRecord record = Artifact("art-1", "job-a", 10);
  ASSERT_TRUE(store_->PutArtifact(record).ok());

  Reopen();
  std::vector<Job> jobs = Jobs();
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_TRUE(ProtoEq(write.job, jobs[0]));
  EXPECT_THAT(Sequences(Events("job-a")), ElementsAre(1, 2, 3, 4, 5));
  absl::StatusOr<ArtifactRecord> got = store_->GetArtifact("art-1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(RecordEq(record, *got));
  // The reopened store goes on where the log ended and still knows the request id.
  EXPECT_TRUE(store_->Commit({Advance(write.job, StepEvents(6, 6))}).ok());
  EXPECT_EQ(store_->InsertJob({NewJob("job-b", "req-1"), {}}).code(), absl::StatusCode::kAlreadyExists);
}

// A server killed the moment a commit returns: the commit is there when the next server opens the store.
TEST_P(Store, CommitSurvivesSigkillRightAfterItReturns) {
  store_.reset();
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The child: no gtest here; it reports by exit code, or waits to be killed once it has committed.
    close(ready[0]);
    absl::StatusOr<std::unique_ptr<JobStore>> store = GetParam().open(dir_.path());
    if (!store.ok()) _exit(2);
    if (!(*store)->InsertJob({NewJob("job-a", "req-1"), StepEvents(1, 1)}).ok()) _exit(3);
    JobWrite commit = Advance(NewJob("job-a", "req-1"), StepEvents(2, 500));
    commit.job.set_state(xtrain::v1::RUNNING);
    if (!(*store)->Commit({commit}).ok()) _exit(4);
    const char committed = 'c';
    if (write(ready[1], &committed, 1) != 1) _exit(5);
    for (;;) pause();
  }
  close(ready[1]);
  char byte = 0;
  const ssize_t n = read(ready[0], &byte, 1);
  close(ready[0]);
  kill(child, SIGKILL);
  int wait_status = 0;
  ASSERT_EQ(waitpid(child, &wait_status, 0), child);
  ASSERT_EQ(n, 1) << "the child failed before committing, exit code "
                  << (WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1);
  ASSERT_TRUE(WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGKILL);

  absl::StatusOr<std::unique_ptr<JobStore>> store = GetParam().open(dir_.path());
  ASSERT_TRUE(store.ok()) << "the killed server's store does not reopen: " << store.status();
  store_ = std::move(*store);
  std::vector<Job> jobs = Jobs();
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].state(), xtrain::v1::RUNNING);
  EXPECT_EQ(jobs[0].last_sequence(), 500);
  std::vector<JobEvent> events = Events("job-a");
  ASSERT_EQ(events.size(), 500u);
  EXPECT_EQ(events.back().sequence(), 500);
  EXPECT_EQ(events.back().step().step(), 5000);
}

// Writers commit step events to their own jobs while readers check what they see is whole: a log with no
// gap, never shorter than the snapshot read before it, snapshots that never go back.
TEST_P(Store, ConcurrentReadersAndWritersSeeWholeCommits) {
  constexpr int kWriters = 2;
  constexpr int kJobsPerWriter = 2;
  constexpr int kCommits = 120;
  constexpr int kEventsPerWrite = 3;
  constexpr int kReaders = 6;  // more than the SQLite store's pool of readers
  for (int w = 0; w < kWriters; ++w) {
    for (int j = 0; j < kJobsPerWriter; ++j) {
      const std::string id = absl::StrCat("job-", w, "-", j);
      ASSERT_TRUE(store_->InsertJob({NewJob(id, absl::StrCat("req-", id)), {}}).ok());
    }
  }
  std::atomic<int> writers_running{kWriters};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      // Readers stop once every writer is done, failed or not.
      struct Done {
        std::atomic<int>* running;
        ~Done() { running->fetch_sub(1); }
      } done{&writers_running};
      std::vector<Job> jobs;
      for (int j = 0; j < kJobsPerWriter; ++j) {
        const std::string id = absl::StrCat("job-", w, "-", j);
        jobs.push_back(NewJob(id, absl::StrCat("req-", id)));
      }
      for (int c = 0; c < kCommits; ++c) {
        std::vector<JobWrite> writes;
        for (Job& job : jobs) {
          JobWrite write = Advance(job, StepEvents(job.last_sequence() + 1, job.last_sequence() + kEventsPerWrite));
          job = write.job;
          writes.push_back(std::move(write));
        }
        ASSERT_TRUE(store_->Commit(writes).ok());
        if (c % 20 == 0) {
          const std::string id = absl::StrCat("art-", w, "-", c);
          ASSERT_TRUE(store_->PutArtifact(Artifact(id, jobs[0].id(), c)).ok());
          if (c % 40 == 0) {
            ASSERT_TRUE(store_->DeleteArtifact(id).ok());
          }
        }
      }
    });
  }
  std::atomic<int64_t> reads{0};
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&, r] {
      std::map<std::string, int64_t> seen_step;
      bool last_round = false;
      while (!last_round) {
        last_round = writers_running.load() == 0;
        absl::StatusOr<std::vector<Job>> jobs = store_->LoadJobs();
        ASSERT_TRUE(jobs.ok()) << jobs.status();
        ASSERT_EQ(jobs->size(), static_cast<size_t>(kWriters * kJobsPerWriter));
        for (const Job& job : *jobs) {
          EXPECT_GE(job.progress().step(), seen_step[job.id()]) << job.id() << " went back";
          seen_step[job.id()] = job.progress().step();
          EXPECT_EQ(job.last_sequence(), job.progress().step()) << "a snapshot from two commits";
          absl::StatusOr<std::vector<JobEvent>> events = store_->ReadEvents(job.id(), r % 2 == 0 ? 1 : 0);
          ASSERT_TRUE(events.ok()) << events.status();
          ASSERT_GE(static_cast<int64_t>(events->size()), job.last_sequence()) << job.id();
          for (size_t i = 0; i < events->size(); ++i) {
            ASSERT_EQ((*events)[i].sequence(), static_cast<int64_t>(i) + 1) << job.id() << " has a gap";
          }
          EXPECT_EQ(events->size() % kEventsPerWrite, 0u) << job.id() << ": half a commit";
        }
        absl::StatusOr<std::optional<Job>> found = store_->FindByRequestId("team-a", "req-job-1-1");
        ASSERT_TRUE(found.ok()) << found.status();
        EXPECT_TRUE(found->has_value());
        absl::StatusOr<std::vector<ArtifactRecord>> artifacts = store_->ListArtifacts("job-0-0");
        ASSERT_TRUE(artifacts.ok()) << artifacts.status();
        reads.fetch_add(1);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_GT(reads.load(), kReaders);

  for (const Job& job : Jobs()) {
    EXPECT_EQ(job.last_sequence(), kCommits * kEventsPerWrite) << job.id();
    EXPECT_EQ(Events(job.id()).size(), static_cast<size_t>(kCommits * kEventsPerWrite)) << job.id();
  }
  absl::StatusOr<std::vector<ArtifactRecord>> artifacts = store_->ListArtifacts("job-0-0");
  ASSERT_TRUE(artifacts.ok()) << artifacts.status();
  EXPECT_EQ(artifacts->size(), 3u) << "put at commits 0, 20, ..., 100; those at 0, 40 and 80 deleted";
}

// The CPU time this process has used, all threads.
std::chrono::nanoseconds ProcessCpuTime() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return std::chrono::seconds(now.tv_sec) + std::chrono::nanoseconds(now.tv_nsec);
}

// A sanity bound only, loose enough never to flake; the store's speed is a benchmark's business. 100
// commits of 100 writes, then every log read back in reads of 1,000 events, in under 10 s of CPU time
// (which a busy machine does not stretch; a sanitizer build uses about 1.5 s here) and 30 s of wall time.
TEST_P(Store, TenThousandEventsWrittenAndReadBackWithinTenSeconds) {
  constexpr int kJobs = 10;
  constexpr int kCommits = 100;
  constexpr int kWritesPerCommit = 100;
  std::vector<Job> jobs;
  for (int j = 0; j < kJobs; ++j) {
    jobs.push_back(NewJob(absl::StrCat("job-", j)));
    ASSERT_TRUE(store_->InsertJob({jobs.back(), {}}).ok());
  }
  const auto start = std::chrono::steady_clock::now();
  const auto start_cpu = ProcessCpuTime();
  for (int c = 0; c < kCommits; ++c) {
    std::vector<JobWrite> writes;
    for (int w = 0; w < kWritesPerCommit; ++w) {
      Job& job = jobs[w % kJobs];
      JobWrite write = Advance(job, StepEvents(job.last_sequence() + 1, job.last_sequence() + 1));
      job = write.job;
      writes.push_back(std::move(write));
    }
    ASSERT_TRUE(store_->Commit(writes).ok());
  }
  const auto written = std::chrono::steady_clock::now();
  int64_t read = 0;
  for (const Job& job : jobs) {
    std::vector<JobEvent> events = Events(job.id(), 1, 1000);
    ASSERT_EQ(events.size(), 1000u);
    EXPECT_EQ(events.back().sequence(), 1000);
    EXPECT_EQ(events.back().step().step(), 10000);
    read += static_cast<int64_t>(events.size());
  }
  const auto done = std::chrono::steady_clock::now();
  const auto cpu = ProcessCpuTime() - start_cpu;
  EXPECT_EQ(read, kCommits * kWritesPerCommit);
  const auto ms = [](auto duration) {
    return std::chrono::duration_cast<std::chrono::duration<double, std::milli>>(duration).count();
  };
  std::cout << "10,000 events: " << ms(written - start) << " ms to commit (100 x 100 writes), "
            << ms(done - written) << " ms to read back (10 x 1,000); " << ms(cpu) << " ms of CPU\n";
  EXPECT_LT(cpu, std::chrono::seconds(10));
  EXPECT_LT(done - start, std::chrono::seconds(30));
}

// ----------------------------------------------------------------------------------------------------
// The SQLite store's own promises.

class SqliteStore : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(dir_.path().empty()) << "no temporary directory"; }

  std::string path() const { return dir_.path() + "/jobs.db"; }

  // Runs `sql` on the file with SQLite itself, behind the store's back.
  void Sql(const std::string& sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path().c_str(), &db), SQLITE_OK);
    char* error = nullptr;
    const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
    EXPECT_EQ(rc, SQLITE_OK) << (error != nullptr ? error : "");
    sqlite3_free(error);
    sqlite3_close(db);
  }
  // The first column of the first row of `sql`, as text.
  std::string SqlValue(const std::string& sql) {
    sqlite3* db = nullptr;
    std::string value;
    EXPECT_EQ(sqlite3_open(path().c_str(), &db), SQLITE_OK);
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW) {
      const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
      if (text != nullptr) value = text;
    }
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return value;
  }

  TempDir dir_;
};

TEST_F(SqliteStore, SecondOpenerIsRefusedUntilTheFirstCloses) {
  absl::StatusOr<std::unique_ptr<JobStore>> first = OpenSqliteJobStore(path());
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE((*first)->InsertJob({NewJob("job-a"), {}}).ok());

  absl::StatusOr<std::unique_ptr<JobStore>> second = OpenSqliteJobStore(path());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
  EXPECT_THAT(second.status().message(), HasSubstr(path()));

  // Another process is refused at once and told which process holds the file.
  int report[2];
  ASSERT_EQ(pipe(report), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(report[0]);
    absl::StatusOr<std::unique_ptr<JobStore>> store = OpenSqliteJobStore(path());
    const std::string text = absl::StrCat(static_cast<int>(store.status().code()), " ", store.status().message());
    _exit(write(report[1], text.data(), text.size()) == static_cast<ssize_t>(text.size()) ? 0 : 1);
  }
  close(report[1]);
  std::string text;
  char buffer[512];
  for (ssize_t n; (n = read(report[0], buffer, sizeof(buffer))) > 0;) text.append(buffer, n);
  close(report[0]);
  int wait_status = 0;
  ASSERT_EQ(waitpid(child, &wait_status, 0), child);
  EXPECT_THAT(text, HasSubstr(absl::StrCat(static_cast<int>(absl::StatusCode::kFailedPrecondition), " ")));
  EXPECT_THAT(text, HasSubstr("in use by another xtrain-server"));
  EXPECT_THAT(text, HasSubstr(absl::StrCat("pid ", getpid())));

  // The refusals changed nothing; once the first closes, the next opener gets the store whole.
  first->reset();
  second = OpenSqliteJobStore(path());
  ASSERT_TRUE(second.ok()) << second.status();
  absl::StatusOr<std::vector<Job>> jobs = (*second)->LoadJobs();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  EXPECT_THAT(Ids(*jobs), ElementsAre("job-a"));
}

TEST_F(SqliteStore, FileThatIsNotADatabaseIsRefusedWithASentence) {
  {
    std::ofstream file(path());
    for (int i = 0; i < 512; ++i) file << "this is a log file, not a job store\n";
  }
  absl::StatusOr<std::unique_ptr<JobStore>> store = OpenSqliteJobStore(path());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable) << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr("cannot open the job store " + path()));
  EXPECT_THAT(store.status().message(), HasSubstr("not a database"));
  // The refused open left the file as it was.
  EXPECT_EQ(fs::file_size(path()), 512u * 36u);
}

TEST_F(SqliteStore, DamagedDatabaseIsRefusedWithASentence) {
  {
    absl::StatusOr<std::unique_ptr<JobStore>> store = OpenSqliteJobStore(path());
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->InsertJob({NewJob("job-a"), StepEvents(1, 50)}).ok());
  }
  // Keep SQLite's 100-byte header, overwrite the rest: the schema page no longer reads.
  const auto size = fs::file_size(path());
  ASSERT_GT(size, 100u);
  {
    std::fstream file(path(), std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(100);
    file << std::string(size - 100, '\xA5');
  }
  absl::StatusOr<std::unique_ptr<JobStore>> store = OpenSqliteJobStore(path());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable) << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr("cannot open the job store " + path()));
  EXPECT_THAT(store.status().message(), HasSubstr("malformed"));
}

TEST_F(SqliteStore, PathThatCannotBeOpenedIsRefusedWithASentence) {
  // A directory where the file should be.
  ASSERT_TRUE(fs::create_directory(path()));
  absl::StatusOr<std::unique_ptr<JobStore>> store = OpenSqliteJobStore(path());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable) << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr("cannot open the job store " + path()));
  // A folder that does not exist.
  const std::string missing = dir_.path() + "/no-such-folder/jobs.db";
  store = OpenSqliteJobStore(missing);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable) << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr(missing));
}

TEST_F(SqliteStore, UnreadableFileIsRefusedWithASentence) {
  if (geteuid() == 0) {
    GTEST_SKIP() << "root reads any file";
  }
  {
    absl::StatusOr<std::unique_ptr<JobStore>> store = OpenSqliteJobStore(path());
    ASSERT_TRUE(store.ok()) << store.status();
  }
  ASSERT_EQ(chmod(path().c_str(), 0), 0);
  absl::StatusOr<std::unique_ptr<JobStore>> store = OpenSqliteJobStore(path());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable) << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr("cannot open the job store " + path()));
}

TEST_F(SqliteStore, NewerSchemaIsRefusedAndLeftAlone) {
  {
    absl::StatusOr<std::unique_ptr<JobStore>> store = OpenSqliteJobStore(path());
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->InsertJob({NewJob("job-a"), {}}).ok());
  }
  const int newer = kSqliteSchemaVersion + 1;
  Sql(absl::StrCat("INSERT INTO schema_version (version) VALUES (", newer, ")"));

  absl::StatusOr<std::unique_ptr<JobStore>> store = OpenSqliteJobStore(path());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr(path()));
  EXPECT_THAT(store.status().message(), HasSubstr(absl::StrCat("schema version is ", newer)));
  EXPECT_EQ(SqlValue("SELECT MAX(version) FROM schema_version"), absl::StrCat(newer));
  EXPECT_EQ(SqlValue("SELECT COUNT(*) FROM jobs"), "1");
}

TEST_F(SqliteStore, OpenMigratesOnceAndUsesWal) {
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<std::unique_ptr<JobStore>> store = OpenSqliteJobStore(path());
    ASSERT_TRUE(store.ok()) << store.status();
  }
  EXPECT_EQ(SqlValue("SELECT COUNT(*) FROM schema_version"), absl::StrCat(kSqliteSchemaVersion));
  EXPECT_EQ(SqlValue("SELECT MAX(version) FROM schema_version"), absl::StrCat(kSqliteSchemaVersion));
  EXPECT_EQ(SqlValue("PRAGMA journal_mode"), "wal");
}


// ---------------------------------------------------------------------------------------------------
// The PostgreSQL store's promises to several replicas (DESIGN.md §3 "Scale-out"): claims, leases,
// fencing, notifications, schema versions.

class PostgresStore : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty()) << "no temporary directory";
    // The first open makes the directory's database; later opens are the other replicas.
    absl::StatusOr<std::unique_ptr<JobStore>> store = OpenPostgresFor(dir_.path());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  std::unique_ptr<JobStore> Replica() {
    absl::StatusOr<std::unique_ptr<JobStore>> store = OpenPostgresFor(dir_.path());
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }
  std::string Url() const { return SharedPostgres()->Url(DatabaseName(dir_.path())); }

  TempDir dir_;
  std::unique_ptr<JobStore> store_;
};

TEST_F(PostgresStore, ReplicasClaimEachQueuedJobOnceHighestPriorityFirst) {
  constexpr int kJobs = 60;
  for (int i = 0; i < kJobs; ++i) {
    Job job = NewJob(absl::StrCat("job-", i));
    job.mutable_spec()->set_priority(i == 37 ? 50 : 0);
    ASSERT_TRUE(store_->InsertJob({job, {}}).ok());
  }
  Job done = NewJob("job-done");
  done.set_state(xtrain::v1::SUCCEEDED);
  ASSERT_TRUE(store_->InsertJob({done, {}}).ok());
  // The highest priority first, then the oldest.
  absl::StatusOr<std::vector<Job>> first = store_->ClaimJobs("replica-0", 2);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->size(), 2u);
  EXPECT_EQ((*first)[0].id(), "job-37");
  EXPECT_EQ((*first)[1].id(), "job-0");
  EXPECT_EQ((*first)[0].replica(), "replica-0");

  // Four replicas claim the rest at once, one to three at a time: each job exactly once.
  std::vector<std::unique_ptr<JobStore>> replicas;
  for (int r = 0; r < 4; ++r) replicas.push_back(Replica());
  std::vector<std::vector<std::string>> claimed(replicas.size());
  std::vector<std::thread> threads;
  std::atomic<bool> failed{false};
  for (size_t r = 0; r < replicas.size(); ++r) {
    threads.emplace_back([&, r] {
      for (int round = 0;; ++round) {
        absl::StatusOr<std::vector<Job>> jobs =
            replicas[r]->ClaimJobs(absl::StrCat("replica-", r + 1), 1 + (round + static_cast<int>(r)) % 3);
        if (!jobs.ok()) {
          failed = true;
          return;
        }
        if (jobs->empty()) return;
        for (const Job& job : *jobs) claimed[r].push_back(job.id());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  ASSERT_FALSE(failed);
  std::map<std::string, int> times;
  for (const auto& ids : claimed) {
    for (const std::string& id : ids) ++times[id];
  }
  EXPECT_EQ(times.size(), static_cast<size_t>(kJobs - 2));
  for (const auto& [id, n] : times) EXPECT_EQ(n, 1) << id << " was claimed " << n << " times";
  EXPECT_EQ(times.count("job-done"), 0u) << "a finished job was claimed";
  // The store agrees: every job now names the replica that claimed it.
  std::map<std::string, std::string> owner;
  for (size_t r = 0; r < claimed.size(); ++r) {
    for (const std::string& id : claimed[r]) owner[id] = absl::StrCat("replica-", r + 1);
  }
  const std::vector<Job> all = store_->LoadJobs().value();
  for (const Job& job : all) {
    if (owner.count(job.id())) {
      EXPECT_EQ(job.replica(), owner[job.id()]) << job.id();
    }
  }
  // Nothing is left, and a claim of a claimed job by id takes nothing.
  EXPECT_TRUE(store_->ClaimJobs("replica-0", 10)->empty());
  EXPECT_TRUE(store_->ClaimJobs("replica-0", 1, "job-5")->empty());
}

TEST_F(PostgresStore, ALostReplicasJobIsRequeuedWithAnEventAndItsLateWritesAreRefused) {
  std::unique_ptr<JobStore> a = Replica();
  std::unique_ptr<JobStore> b = Replica();
  ASSERT_TRUE(a->Heartbeat("replica-a", 0.5).ok());
  ASSERT_TRUE(b->Heartbeat("replica-b", 60).ok());
  ASSERT_TRUE(store_->InsertJob({NewJob("job-a"), {StateEvent(1, xtrain::v1::JOB_STATE_UNSPECIFIED, xtrain::v1::QUEUED)}}).ok());
  ASSERT_TRUE(store_->InsertJob({NewJob("job-b"), {StateEvent(1, xtrain::v1::JOB_STATE_UNSPECIFIED, xtrain::v1::QUEUED)}}).ok());
  Job job_a = a->ClaimJobs("replica-a", 1, "job-a").value().at(0);
  Job job_b = b->ClaimJobs("replica-b", 1, "job-b").value().at(0);
  // Both run; a checkpoint at step 40 of job-a.
  for (Job* job : {&job_a, &job_b}) {
    job->set_state(xtrain::v1::RUNNING);
    job->set_device("cpu");
    job->mutable_progress()->set_last_checkpoint_step(40);
  }
  JobWrite run_a = Advance(job_a, {StateEvent(2, xtrain::v1::QUEUED, xtrain::v1::RUNNING)});
  ASSERT_TRUE(a->Commit({run_a}).ok());
  ASSERT_TRUE(b->Commit({Advance(job_b, {StateEvent(2, xtrain::v1::QUEUED, xtrain::v1::RUNNING)})}).ok());
  // A writer that is not the owner is refused, whoever it is.
  JobWrite foreign = Advance(run_a.job, StepEvents(3, 3));
  foreign.job.set_replica("replica-b");
  EXPECT_EQ(b->Commit({foreign}).code(), absl::StatusCode::kAborted);

  // While a's lease holds, nothing is re-queued.
  absl::StatusOr<std::vector<Job>> none = b->RequeueOrphans();
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  absl::StatusOr<std::vector<Job>> requeued = b->RequeueOrphans();
  ASSERT_TRUE(requeued.ok()) << requeued.status();
  ASSERT_EQ(requeued->size(), 1u) << "only the lost replica's job goes back";
  const Job& back = (*requeued)[0];
  EXPECT_EQ(back.id(), "job-a");
  EXPECT_EQ(back.state(), xtrain::v1::QUEUED);
  EXPECT_EQ(back.replica(), "");
  EXPECT_EQ(back.device(), "");
  EXPECT_EQ(back.last_sequence(), 3);
  // The log goes on with the reason, no gap.
  std::vector<JobEvent> events = store_->ReadEvents("job-a", 1).value();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[2].sequence(), 3);
  EXPECT_EQ(events[2].state().from_state(), xtrain::v1::RUNNING);
  EXPECT_EQ(events[2].state().to_state(), xtrain::v1::QUEUED);
  EXPECT_THAT(events[2].state().reason(), HasSubstr("replica replica-a stopped renewing its lease"));
  EXPECT_THAT(events[2].state().reason(), HasSubstr("checkpoint at step 40"));
  // The lost replica's late write is refused and changes nothing.
  absl::Status late = a->Commit({Advance(run_a.job, StepEvents(3, 3))});
  EXPECT_EQ(late.code(), absl::StatusCode::kAborted) << late;
  EXPECT_THAT(std::string(late.message()), HasSubstr("re-queued"));
  EXPECT_EQ(store_->ReadEvents("job-a", 1).value().size(), 3u);
  // Another replica claims it and goes on from the log's end.
  Job again = b->ClaimJobs("replica-b", 5).value().at(0);
  EXPECT_EQ(again.id(), "job-a");
  EXPECT_EQ(again.last_sequence(), 3);
  EXPECT_TRUE(b->Commit({Advance(again, StepEvents(4, 4))}).ok());
  // job-b, whose replica is alive, kept its owner.
  EXPECT_EQ(store_->ReadJob("job-b")->replica(), "replica-b");
}

TEST_F(PostgresStore, EveryReplicaHearsEachChangeAndCancelRequests) {
  std::unique_ptr<JobStore> listener = Replica();
  // std::mutex, not absl::Mutex: Debian's Abseil is not TSan-built, and this test runs under TSan in CI.
  std::mutex mu;
  std::vector<std::string> heard;  // "<kind> <job id>"
  listener->Listen([&](const JobChange& change) {
    std::lock_guard<std::mutex> lock(mu);
    heard.push_back(absl::StrCat(static_cast<int>(change.kind), " ", change.job_id));
  });
  const auto wait_for = [&](size_t n) {
    for (int i = 0; i < 100; ++i) {
      {
        std::lock_guard<std::mutex> lock(mu);
        if (heard.size() >= n) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  };
  // Give the listener time to LISTEN before the first change.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_TRUE(store_->InsertJob({NewJob("job-x"), {}}).ok());
  ASSERT_TRUE(wait_for(1));
  Job claimed = store_->ClaimJobs("replica-0", 1).value().at(0);
  ASSERT_TRUE(wait_for(2));
  ASSERT_TRUE(store_->Commit({Advance(claimed, StepEvents(1, 2))}).ok());
  ASSERT_TRUE(wait_for(3));
  EXPECT_FALSE(store_->ReadJob("job-x")->cancel_requested());
  ASSERT_TRUE(store_->RequestCancel("job-x").ok());
  ASSERT_TRUE(wait_for(4));
  {
    std::lock_guard<std::mutex> lock(mu);
    // Inserted, claimed, committed (kCommitted = 0), then a cancel asked (kCancelRequested = 1).
    EXPECT_THAT(heard, ElementsAre("0 job-x", "0 job-x", "0 job-x", "1 job-x"));
  }
  EXPECT_TRUE(store_->ReadJob("job-x")->cancel_requested());
  EXPECT_EQ(store_->RequestCancel("job-nope").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ReadJob("job-nope").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(PostgresStore, NewerSchemaIsRefusedAndAnUnreachableServerSaysWhereWithoutThePassword) {
  store_.reset();
  {
    pqxx::connection connection(Url());
    pqxx::work tx(connection);
    tx.exec("INSERT INTO schema_version (version) VALUES (99)");
    tx.commit();
  }
  absl::StatusOr<std::unique_ptr<JobStore>> newer = OpenPostgresJobStore(Url());
  ASSERT_EQ(newer.status().code(), absl::StatusCode::kFailedPrecondition) << newer.status();
  EXPECT_THAT(std::string(newer.status().message()), HasSubstr("schema version is 99"));

  absl::StatusOr<std::unique_ptr<JobStore>> away =
      OpenPostgresJobStore(absl::StrCat("postgresql://xtrain:s3cret@127.0.0.1:", testing::FreePort(), "/none"));
  ASSERT_EQ(away.status().code(), absl::StatusCode::kUnavailable) << away.status();
  EXPECT_THAT(std::string(away.status().message()), HasSubstr("127.0.0.1"));
  EXPECT_THAT(std::string(away.status().message()), ::testing::Not(HasSubstr("s3cret")));
  EXPECT_EQ(OpenJobStore("mysql://x", "/tmp").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace xtrain::server
