// Kill loops (issue 11): a workload of several jobs (priorities, a cancel) while the real xtrain-server
// is SIGKILLed at random moments 20 times and restarted on the same store, and again while its workers
// are SIGKILLed at random. Afterwards every job ends as it would have without the kills, and a watcher
// that reconnected after every kill from its last sequence number saw each job's log exactly as the
// store holds it: no event missing, none repeated; and after every kill each kept checkpoint loads.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/server/service_test_util.h"
#include "tests/server/watch_contract.h"

namespace xtrain::server::testing {
namespace {
namespace v1 = ::xtrain::v1;

constexpr int kKills = 20;


// The workload: three jobs that run to their last step (priorities 0, 5 and -5, thousands of steps with
// a checkpoint every 250, so that kills land while they train) and one, last in the queue and long
// (800,000 steps), that the client cancels halfway through the kills.
struct Workload {
  std::vector<std::string> ids;  // [3] is cancelled
  std::map<std::string, int64_t> steps;

  void Submit(v1::TrainingService::Stub& stub) {
    const int priorities[] = {0, 5, -5, -10};
    const int64_t max_steps[] = {3000, 2000, 2500, 0};
    for (int i = 0; i < 4; ++i) {
      v1::JobSpec spec = TinyJob(max_steps[i], /*epochs=*/100000);  // 8 steps an epoch
      spec.set_priority(priorities[i]);
      spec.mutable_checkpoint()->set_every_steps(250);
      spec.set_display_name(absl::StrCat("kill-loop-", i));
      const std::string id = testing::Submit(stub, spec, absl::StrCat("kill-loop-", i)).job().id();
      ids.push_back(id);
      steps[id] = max_steps[i];
    }
  }
};

// What one watcher per job has read, across reconnections: it resumes from its last sequence + 1.
struct Follower {
  std::map<std::string, std::vector<v1::WatchJobResponse>> seen;

  // Reads each job's log from where it stopped until the server goes away (or the job's log ends).
  void Follow(v1::TrainingService::Stub& stub, const std::vector<std::string>& ids, std::chrono::milliseconds for_at_most) {
    std::vector<std::thread> threads;
    std::vector<std::vector<v1::WatchJobResponse>> got(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      const int64_t next = seen[ids[i]].empty() ? 0 : seen[ids[i]].back().event().sequence() + 1;
      threads.emplace_back([&, i, next] {
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + for_at_most);
        v1::WatchJobRequest request;
        request.set_job_id(ids[i]);
        request.set_from_sequence(next);
        auto reader = stub.WatchJob(&context, request);
        v1::WatchJobResponse response;
        while (reader->Read(&response)) got[i].push_back(response);
        reader->Finish();  // UNAVAILABLE, DEADLINE_EXCEEDED or OK: any is an end to reconnect from
      });
    }
    for (std::thread& t : threads) t.join();
    for (size_t i = 0; i < ids.size(); ++i) {
      auto& all = seen[ids[i]];
      all.insert(all.end(), got[i].begin(), got[i].end());
    }
  }
};

// The store's whole log of a job (an ended job's watch from 0).
std::vector<v1::WatchJobResponse> WholeLog(v1::TrainingService::Stub& stub, const std::string& id) {
  grpc::Status status;
  std::vector<v1::WatchJobResponse> log = WatchToEnd(stub, id, 0, &status);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return log;
}

// Every job ended as it would have without kills, and what the follower read across the kills is the
// store's log: contiguous, nothing repeated, the same events (coalesced live steps aside).
void CheckOutcome(v1::TrainingService::Stub& stub, const Workload& workload, const Follower& follower) {
  for (size_t i = 0; i < workload.ids.size(); ++i) {
    const std::string& id = workload.ids[i];
    const v1::Job job = WaitForEnd(stub, id, std::chrono::seconds(600));
    const std::vector<v1::WatchJobResponse> log = WholeLog(stub, id);
    ASSERT_EQ(static_cast<int64_t>(log.size()), job.last_sequence()) << id;
    EXPECT_TRUE(FollowsWatchContract(log, 0, job.last_sequence())) << id << ": the store's log has a gap or a repeat";
    // State changes chain: each one leaves the state the previous one entered.
    v1::JobState state = v1::JOB_STATE_UNSPECIFIED;
    for (const v1::WatchJobResponse& r : log) {
      if (!r.event().has_state()) continue;
      EXPECT_EQ(r.event().state().from_state(), state) << id << " at sequence " << r.event().sequence();
      state = r.event().state().to_state();
    }
    if (i == 3) {
      EXPECT_EQ(job.state(), v1::CANCELLED) << id;
    } else {
      EXPECT_EQ(job.state(), v1::SUCCEEDED) << id << ": " << job.failure_reason();
      EXPECT_EQ(job.progress().step(), workload.steps.at(id)) << id;
    }
    const std::vector<v1::WatchJobResponse>& followed = follower.seen.at(id);
    ASSERT_FALSE(followed.empty()) << id;
    // Read from 0 and resumed from each last sequence + 1: the contract holds across the kills (live
    // steps may be coalesced, and say so), and it reached the end.
    EXPECT_TRUE(FollowsWatchContract(followed, 0, 0)) << id << ": the followed log has a gap or a repeat";
    EXPECT_EQ(followed.back().event().sequence(), job.last_sequence()) << id;
    for (const v1::WatchJobResponse& r : followed) {
      const int64_t s = r.event().sequence();
      ASSERT_TRUE(s >= 1 && s <= static_cast<int64_t>(log.size())) << id;
      EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(r.event(), log[s - 1].event()))
          << id << ": event " << s << " differs from the store's";
    }
  }
}

TEST(KillLoop, ServerKilledTwentyTimesLosesNoJobAndNoEvent) {
  TempDir dir;
  const std::string data_dir = dir.path() + "/server", data_root = dir.path() + "/data";
  std::filesystem::create_directories(data_root);
  std::mt19937 random(20261201);
  Workload workload;
  Follower follower;
  int loaded = 0;  // kept checkpoints that loaded, summed over the checks after each kill
  for (int kill = 0; kill < kKills; ++kill) {
    ServerProcess server(data_dir, data_root, {"--checkpoint-seconds", "1"});
    ASSERT_TRUE(server.serving()) << "start " << kill;
    if (kill == 0) workload.Submit(server.stub());
    if (kill == kKills / 2) {
      v1::CancelJobResponse response;
      const grpc::Status cancelled = Cancel(server.stub(), workload.ids[3], &response);
      EXPECT_TRUE(cancelled.ok()) << cancelled.error_message();
    }
    // Kill it 0.2 to 2.5 s in: while it recovers, plans, starts workers, trains or checkpoints.
    const auto lifetime = std::chrono::milliseconds(200 + random() % 2300);
    follower.Follow(server.stub(), workload.ids, lifetime);
    server.Stop(SIGKILL);
    loaded += CheckKeptCheckpoints(data_dir);
  }
  ServerProcess last(data_dir, data_root);
  ASSERT_TRUE(last.serving());
  follower.Follow(last.stub(), workload.ids, std::chrono::seconds(600));
  CheckOutcome(last.stub(), workload, follower);
  // The kills landed while jobs ran: each such job went back to the queue from its checkpoint.
  int resumed = 0, checkpoints = 0;
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(WaitForEnd(last.stub(), workload.ids[i]).attempts(), 0) << "a server kill is not the job's failure";
    for (const v1::WatchJobResponse& r : WholeLog(last.stub(), workload.ids[i])) {
      resumed += r.event().has_state() && r.event().state().reason().find("the server restarted") != std::string::npos;
      checkpoints += r.event().has_checkpoint();
    }
  }
  std::printf("server kill loop: %d kills, %d resumptions from a checkpoint, %d checkpoints, %d kept checkpoint "
              "loads checked\n", kKills, resumed, checkpoints, loaded);
  EXPECT_GE(resumed, 3) << "too few kills landed while a job ran to test anything";
  EXPECT_GE(loaded, kKills / 2) << "too few checkpoints were kept at the kills to check that they load";
}

TEST(KillLoop, WorkersKilledTwentyTimesAreRetriedToTheSameEnd) {
  TempDir dir;
  const std::string data_dir = dir.path() + "/server", data_root = dir.path() + "/data";
  std::filesystem::create_directories(data_root);
  std::mt19937 random(7);
  // Enough attempts for every kill to land on one job.
  ServerProcess server(data_dir, data_root, {"--max-attempts", "30", "--checkpoint-seconds", "1"});
  ASSERT_TRUE(server.serving());
  Workload workload;
  workload.Submit(server.stub());
  Follower follower;
  std::thread follow([&] { follower.Follow(server.stub(), workload.ids, std::chrono::seconds(600)); });
  int kills = 0, loaded = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(300);
  while (kills < kKills && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200 + random() % 1300));
    if (kills == kKills / 2) {
      v1::CancelJobResponse response;
      (void)Cancel(server.stub(), workload.ids[3], &response);  // may have ended meanwhile: checked below
    }
    const std::vector<pid_t> workers = WorkerChildren(server.pid());
    if (workers.empty()) continue;
    if (::kill(workers[random() % workers.size()], SIGKILL) == 0) {
      ++kills;
      loaded += CheckKeptCheckpoints(data_dir);
    }
  }
  EXPECT_EQ(kills, kKills) << "not enough workers were running to kill";
  follow.join();
  CheckOutcome(server.stub(), workload, follower);
  int64_t attempts = 0;
  for (const std::string& id : workload.ids) attempts += WaitForEnd(server.stub(), id).attempts();
  std::printf("worker kill loop: %d kills, %lld failed attempts retried, %d kept checkpoint loads checked\n", kills,
              static_cast<long long>(attempts), loaded);
  EXPECT_GE(attempts, 3) << "too few kills reached a training worker";
  EXPECT_GE(loaded, kKills / 2) << "too few checkpoints were kept at the kills to check that they load";
}

}  // namespace
}  // namespace xtrain::server::testing
