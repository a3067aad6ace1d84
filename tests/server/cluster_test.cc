// Two xtrain-server processes on one PostgreSQL database and one shared data dir (DESIGN.md §3
// "Scale-out"): jobs spread over both, none runs twice, any replica answers for any job, and a replica
// killed with SIGKILL loses its job to the other, which resumes it from its checkpoint while a watcher
// on the survivor sees one unbroken log.
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/server/postgres_test_util.h"
#include "tests/server/service_test_util.h"
#include "tests/server/watch_contract.h"

namespace xtrain::server::testing {
namespace {

namespace v1 = xtrain::v1;
using ::testing::HasSubstr;

// Leases: long where nothing is killed (a loaded machine, sanitizer builds, must not make a live replica
// look dead), short where the takeover is the test.
constexpr int kLongLeaseSeconds = 30;
constexpr int kLeaseSeconds = 4;

// A replica: its own name and port file, the shared store and data dir, one slot.
std::vector<std::string> ReplicaFlags(const std::string& url, const std::string& dir, const std::string& id,
                                      int lease_seconds) {
  return {"--store-url", url, "--replica-id", id, "--lease-seconds", absl::StrCat(lease_seconds),
          "--device", "cpu:capacity=2GiB:slots=1", "--port-file", absl::StrCat(dir, "/", id, ".port"),
          "--checkpoint-seconds", "1"};
}

// The job's state changes, "FROM->TO: reason", in log order.
std::vector<std::string> StateChanges(const std::vector<v1::WatchJobResponse>& log) {
  std::vector<std::string> changes;
  for (const v1::WatchJobResponse& r : log) {
    if (!r.event().has_state()) continue;
    changes.push_back(absl::StrCat(v1::JobState_Name(r.event().state().from_state()), "->",
                                   v1::JobState_Name(r.event().state().to_state()), ": ",
                                   r.event().state().reason()));
  }
  return changes;
}

int Count(const std::vector<std::string>& changes, const std::string& prefix) {
  int n = 0;
  for (const std::string& c : changes) n += c.rfind(prefix, 0) == 0;
  return n;
}

class Cluster : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    PostgresServer* postgres = SharedPostgres(&error);
    ASSERT_NE(postgres, nullptr) << error;
    absl::StatusOr<std::string> url = postgres->CreateDatabase(absl::StrCat("cluster_", std::random_device()()));
    ASSERT_TRUE(url.ok()) << url.status();
    url_ = *url;
    data_dir_ = dir_.path() + "/shared";
    data_root_ = dir_.path() + "/data";
    std::filesystem::create_directories(data_root_);
  }
  std::unique_ptr<ServerProcess> Replica(const std::string& id, int lease_seconds) {
    return std::make_unique<ServerProcess>(data_dir_, data_root_, ReplicaFlags(url_, dir_.path(), id, lease_seconds));
  }

  TempDir dir_;
  std::string url_, data_dir_, data_root_;
};

TEST_F(Cluster, JobsSpreadOverTwoReplicasEachRunsOnceAndAnyReplicaAnswersForAny) {
  std::map<std::string, std::unique_ptr<ServerProcess>> replicas;
  for (const char* id : {"replica-a", "replica-b"}) {
    replicas[id] = Replica(id, kLongLeaseSeconds);
    ASSERT_TRUE(replicas[id]->serving()) << id;
  }
  // All submitted to one replica: the other claims its share (one slot each).
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(Submit(replicas["replica-a"]->stub(), TinyJob(40, 5)).job().id());
  std::set<std::string> ran_on;
  for (const std::string& id : ids) {
    // Read through the replica the job was not submitted to.
    const v1::Job job = WaitForEnd(replicas["replica-b"]->stub(), id, std::chrono::seconds(300));
    ASSERT_EQ(job.state(), v1::SUCCEEDED) << id << ": " << job.failure_reason();
    EXPECT_EQ(job.attempts(), 0) << id;
    EXPECT_EQ(job.progress().step(), 40) << id;
    ASSERT_TRUE(replicas.count(job.replica())) << id << " names replica '" << job.replica() << "'";
    ran_on.insert(job.replica());
    // The same job through both replicas.
    const v1::Job other = WaitForEnd(replicas["replica-a"]->stub(), id, std::chrono::seconds(60));
    EXPECT_EQ(other.last_sequence(), job.last_sequence()) << id;
    EXPECT_EQ(other.replica(), job.replica()) << id;
    // One run: queued, claimed and started once, succeeded once; the log whole from either replica.
    for (auto& [name, replica] : replicas) {
      grpc::Status status;
      const std::vector<v1::WatchJobResponse> log = WatchToEnd(replica->stub(), id, 0, &status);
      EXPECT_TRUE(status.ok()) << name << ": " << status.error_message();
      EXPECT_TRUE(FollowsWatchContract(log, 0, job.last_sequence())) << id << " through " << name;
      ASSERT_FALSE(log.empty());
      EXPECT_EQ(log.back().event().sequence(), job.last_sequence()) << id << " through " << name;
      const std::vector<std::string> changes = StateChanges(log);
      EXPECT_EQ(Count(changes, "QUEUED->RUNNING"), 1) << id << ": " << ::testing::PrintToString(changes);
      EXPECT_EQ(Count(changes, "RUNNING->SUCCEEDED"), 1) << id;
    }
  }
  EXPECT_EQ(ran_on.size(), 2u) << "all six jobs ran on one replica";
  // ListJobs on either replica lists all six.
  for (auto& [name, replica] : replicas) {
    grpc::ClientContext context;
    v1::ListJobsRequest request;
    request.set_page_size(100);
    v1::ListJobsResponse response;
    ASSERT_TRUE(replica->stub().ListJobs(&context, request, &response).ok());
    EXPECT_EQ(response.jobs_size(), 6) << name;
  }
}

TEST_F(Cluster, AReplicaKilledMidJobLosesItToTheOtherWhichResumesItUnderOneUnbrokenLog) {
  std::map<std::string, std::unique_ptr<ServerProcess>> replicas;
  for (const char* id : {"replica-a", "replica-b"}) {
    replicas[id] = Replica(id, kLeaseSeconds);
    ASSERT_TRUE(replicas[id]->serving()) << id;
  }
  // Steps of some tens of milliseconds, a checkpoint every 10.
  v1::JobSpec spec = TinyJob(/*max_steps=*/300, /*epochs=*/1000);
  spec.mutable_model()->set_width(8);
  spec.mutable_dataset()->set_synthetic_size(48);
  spec.mutable_checkpoint()->set_every_steps(10);
  const std::string id = Submit(replicas["replica-a"]->stub(), spec).job().id();
  const v1::Job running = WaitFor(replicas["replica-a"]->stub(), id, [](const v1::Job& j) {
    return j.state() == v1::RUNNING && j.progress().last_checkpoint_step() >= 20;
  });
  ASSERT_EQ(running.state(), v1::RUNNING);
  const std::string victim = running.replica();
  ASSERT_TRUE(replicas.count(victim)) << "running on '" << victim << "'";
  const std::string survivor = victim == "replica-a" ? "replica-b" : "replica-a";

  // A watcher on the survivor from the start of the log, through the kill, to the end.
  grpc::Status watch_status;
  std::vector<v1::WatchJobResponse> watched;
  std::thread watcher([&] { watched = WatchToEnd(replicas[survivor]->stub(), id, 1, &watch_status); });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const int64_t step_at_kill = running.progress().step();
  replicas[victim]->Stop(SIGKILL);
  const auto killed = std::chrono::steady_clock::now();

  const v1::Job resumed = WaitFor(replicas[survivor]->stub(), id, [&](const v1::Job& j) {
    return j.replica() == survivor && j.state() == v1::RUNNING;
  });
  const double takeover = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  const v1::Job done = WaitForEnd(replicas[survivor]->stub(), id, std::chrono::seconds(300));
  watcher.join();
  ASSERT_EQ(done.state(), v1::SUCCEEDED) << done.failure_reason();
  EXPECT_EQ(done.replica(), survivor);
  EXPECT_EQ(done.progress().step(), 300);
  EXPECT_EQ(done.attempts(), 0) << "a lost replica is not the job's failure";
  std::printf("replica %s killed (its job last read at step %lld); %s ran the job again %.2f s later (lease %d s); "
              "it ended at step %lld\n",
              victim.c_str(), static_cast<long long>(step_at_kill), survivor.c_str(), takeover, kLeaseSeconds,
              static_cast<long long>(done.progress().step()));
  EXPECT_LT(takeover, 4.0 * kLeaseSeconds + 30) << "the survivor took too long to take the job over";

  // The survivor's watcher saw one log: from 1 to the end, no gap, no repeat, ending with success.
  EXPECT_TRUE(watch_status.ok()) << watch_status.error_message();
  EXPECT_TRUE(FollowsWatchContract(watched, 1, 0)) << "the log seen on the survivor has a gap or a repeat";
  ASSERT_FALSE(watched.empty());
  EXPECT_EQ(watched.front().event().sequence(), 1);
  EXPECT_EQ(watched.back().event().sequence(), done.last_sequence());
  const std::vector<std::string> changes = StateChanges(watched);
  EXPECT_EQ(Count(changes, "QUEUED->RUNNING"), 2) << ::testing::PrintToString(changes);
  EXPECT_EQ(Count(changes, "RUNNING->SUCCEEDED"), 1) << ::testing::PrintToString(changes);
  ASSERT_EQ(Count(changes, "RUNNING->QUEUED"), 1) << ::testing::PrintToString(changes);
  for (const std::string& change : changes) {
    if (change.rfind("RUNNING->QUEUED", 0) != 0) continue;
    EXPECT_THAT(change, HasSubstr(absl::StrCat("replica ", victim, " stopped renewing its lease")));
    EXPECT_THAT(change, HasSubstr("resumes from its checkpoint at step"));
  }
  // It resumed from a checkpoint, not from the start: the second run's first step follows one.
  int64_t first_step_after = -1;
  bool requeued = false;
  for (const v1::WatchJobResponse& r : watched) {
    if (r.event().has_state() && r.event().state().to_state() == v1::QUEUED && r.event().state().from_state() == v1::RUNNING) requeued = true;
    if (requeued && r.event().has_step()) {
      first_step_after = r.event().step().step();
      break;
    }
  }
  EXPECT_GT(first_step_after, 20) << "the survivor did not resume from the checkpoint";
  // The survivor's store view of the whole log agrees with what the watcher saw.
  grpc::Status status;
  const std::vector<v1::WatchJobResponse> whole = WatchToEnd(replicas[survivor]->stub(), id, 0, &status);
  EXPECT_TRUE(FollowsWatchContract(whole, 0, done.last_sequence(), StepsOf(whole)));
}

}  // namespace
}  // namespace xtrain::server::testing
