// The service end to end: a real xtrain-server (in this process, or as a child process where a test
// kills it) on port 0, real gRPC stubs, real xtrain-worker processes training real (tiny) jobs.
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <set>
#include <thread>

#include <gmock/gmock.h>
#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "server/common/mutex.h"
#include "server/common/util.h"
#include "tests/server/service_test_util.h"
#include "tests/server/watch_contract.h"

namespace xtrain::server::testing {
namespace {
namespace v1 = ::xtrain::v1;
using ::testing::HasSubstr;

bool IsTerminal(v1::JobState s) { return s == v1::SUCCEEDED || s == v1::FAILED || s == v1::CANCELLED; }

std::vector<v1::JobState> States(const std::vector<v1::JobEvent>& events) {
  std::vector<v1::JobState> states;
  for (const v1::JobEvent& e : events) {
    if (e.has_state()) states.push_back(e.state().to_state());
  }
  return states;
}

TEST(Service, LifecycleFromSubmitToSucceeded) {
  auto test = TestServer::Start();
  ASSERT_NE(test, nullptr);
  v1::SubmitJobResponse submitted = Submit(*test->stub, TinyJob(/*max_steps=*/12, /*epochs=*/2));
  const v1::Job& job = submitted.job();
  ASSERT_FALSE(job.id().empty());
  EXPECT_EQ(job.state(), v1::QUEUED);
  EXPECT_GT(job.plan().predicted_peak_bytes(), 0);
  EXPECT_GT(job.plan().layers_size(), 0);

  grpc::Status status;
  // Watched live from before it runs: steps the watcher falls behind on may be coalesced (and counted).
  const std::vector<v1::WatchJobResponse> live = WatchToEnd(*test->stub, job.id(), 0, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(States(EventsOf(live)), ::testing::ElementsAre(v1::QUEUED, v1::RUNNING, v1::SUCCEEDED));
  v1::Job done = WaitForEnd(*test->stub, job.id());
  // Watched again after the end: the whole log, which the live watch must match but for skipped steps.
  const std::vector<v1::WatchJobResponse> log = WatchToEnd(*test->stub, job.id(), 0, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_TRUE(FollowsWatchContract(log, 0, done.last_sequence()));
  EXPECT_TRUE(FollowsWatchContract(live, 0, job.last_sequence(), StepsOf(log)));
  const std::vector<v1::JobEvent> events = EventsOf(log);
  int steps = 0;
  int64_t last_step = 0;
  for (const v1::JobEvent& e : events) {
    if (!e.has_step()) continue;
    ++steps;
    EXPECT_EQ(e.step().step(), last_step + 1);
    last_step = e.step().step();
    EXPECT_GT(e.step().measured_peak_bytes(), 0);
    EXPECT_LE(e.step().measured_peak_bytes(), job.budget_bytes());
    EXPECT_TRUE(std::isfinite(e.step().loss()));
  }
  EXPECT_EQ(steps, 12);
  EXPECT_EQ(done.state(), v1::SUCCEEDED);
  EXPECT_EQ(done.progress().step(), 12);
  EXPECT_TRUE(done.final_metrics().count("accuracy")) << done.ShortDebugString();
  EXPECT_FALSE(done.weights_artifact_id().empty());
  EXPECT_GT(done.end_time().seconds(), 0);
  EXPECT_EQ(done.last_sequence(), static_cast<int64_t>(events.size()));
}

TEST(Service, BadSpecsAreRefusedWithTheFieldToChange) {
  auto test = TestServer::Start();
  ASSERT_NE(test, nullptr);
  v1::JobSpec spec = TinyJob(5);
  spec.mutable_training()->set_batch_size(-3);
  v1::PlanJobResponse plan;
  grpc::Status status = Plan(*test->stub, spec, &plan);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("spec.training.batch_size"));

  spec = TinyJob(5);
  spec.mutable_model()->set_name("no_such_net");
  status = Plan(*test->stub, spec, &plan);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("no_such_net"));

  spec = TinyJob(5);
  spec.mutable_dataset()->set_kind(v1::DatasetSpec::MNIST);
  spec.mutable_dataset()->set_path("../../etc");
  status = Plan(*test->stub, spec, &plan);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("outside the server's data roots"));
}

TEST(Service, PlanRefusalSaysTheSmallestBudgetAndPlansAreCached) {
  auto test = TestServer::Start();
  ASSERT_NE(test, nullptr);
  v1::JobSpec spec = TinyJob(5);
  v1::PlanJobResponse first;
  ASSERT_TRUE(Plan(*test->stub, spec, &first).ok());
  EXPECT_FALSE(first.cached());
  EXPECT_GT(first.plan().exact_peak_bytes(), 0);
  ASSERT_FALSE(first.devices().empty());
  EXPECT_TRUE(first.devices(0).fits());
  v1::PlanJobResponse second;
  ASSERT_TRUE(Plan(*test->stub, spec, &second).ok());
  EXPECT_TRUE(second.cached());
  EXPECT_EQ(second.plan().SerializeAsString(), first.plan().SerializeAsString());
  EXPECT_GE(test->server->scheduler().stats().plan_cache_hits, 1);

  spec.mutable_memory()->set_budget_bytes(first.plan().minimum_budget_bytes() / 2);
  v1::PlanJobResponse refused;
  grpc::Status status = Plan(*test->stub, spec, &refused);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("smallest budget"));
}

TEST(Service, SubmitIsIdempotentByClientRequestId) {
  auto test = TestServer::Start();
  ASSERT_NE(test, nullptr);
  // Two racing submits and a late repeat with one request id make one job.
  std::vector<v1::SubmitJobResponse> responses(2);
  std::thread a([&] { responses[0] = Submit(*test->stub, TinyJob(3), "req-1"); });
  std::thread b([&] { responses[1] = Submit(*test->stub, TinyJob(3), "req-1"); });
  a.join();
  b.join();
  v1::SubmitJobResponse late = Submit(*test->stub, TinyJob(3), "req-1");
  EXPECT_EQ(responses[0].job().id(), responses[1].job().id());
  EXPECT_EQ(late.job().id(), responses[0].job().id());
  EXPECT_TRUE(late.existing());
  EXPECT_NE(responses[0].existing(), responses[1].existing());
  v1::SubmitJobResponse other = Submit(*test->stub, TinyJob(3), "req-2");
  EXPECT_NE(other.job().id(), late.job().id());
  grpc::ClientContext context;
  v1::ListJobsRequest request;
  v1::ListJobsResponse listed;
  ASSERT_TRUE(test->stub->ListJobs(&context, request, &listed).ok());
  EXPECT_EQ(listed.jobs_size(), 2);
}

TEST(Service, CancelStopsARunningJobWithinAStep) {
  auto test = TestServer::Start();
  ASSERT_NE(test, nullptr);
  // Steps of some tens of milliseconds: the server's view of the step (what the bound below counts
  // from) lags the worker by the reports in flight, which on a loaded machine can be several of the tiny
  // job's sub-millisecond steps.
  v1::JobSpec spec = TinyJob(/*max_steps=*/100000, /*epochs=*/1000);
  spec.mutable_model()->set_width(8);
  spec.mutable_dataset()->set_synthetic_size(48);
  const std::string id = Submit(*test->stub, spec).job().id();
  v1::Job running = WaitFor(*test->stub, id, [](const v1::Job& j) { return j.progress().step() >= 3; });
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(Cancel(*test->stub, id, &cancelled).ok());
  const int64_t step_at_cancel = cancelled.job().progress().step();
  EXPECT_TRUE(cancelled.job().cancel_requested());
  v1::Job done = WaitForEnd(*test->stub, id, std::chrono::seconds(60));
  EXPECT_EQ(done.state(), v1::CANCELLED);
  // The worker checks before every step: at most the step in flight (and one reported meanwhile) runs.
  EXPECT_LE(done.progress().step(), step_at_cancel + 2);
  // Cancelling again, once it has ended, is refused with the reason.
  v1::CancelJobResponse again;
  grpc::Status status = Cancel(*test->stub, id, &again);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), HasSubstr("already ended"));
}

TEST(Service, HundredWatchersSeeTheWholeLog) {
  auto test = TestServer::Start();
  ASSERT_NE(test, nullptr);
  const v1::Job submitted = Submit(*test->stub, TinyJob(30)).job();
  const std::string id = submitted.id();
  constexpr int kWatchers = 100;
  std::vector<std::vector<v1::WatchJobResponse>> seen(kWatchers);
  std::vector<grpc::Status> statuses(kWatchers);
  std::vector<std::thread> threads;
  for (int i = 0; i < kWatchers; ++i) {
    threads.emplace_back([&, i] { seen[i] = WatchToEnd(*test->stub, id, 0, &statuses[i]); });
  }
  for (std::thread& t : threads) t.join();
  const v1::Job done = WaitForEnd(*test->stub, id);
  ASSERT_EQ(done.state(), v1::SUCCEEDED);
  grpc::Status status;
  const std::vector<v1::WatchJobResponse> log = WatchToEnd(*test->stub, id, 0, &status);  // all backlog now
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_TRUE(FollowsWatchContract(log, 0, done.last_sequence()));
  ASSERT_EQ(static_cast<int64_t>(log.size()), done.last_sequence());
  for (int i = 0; i < kWatchers; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
    // A watcher that fell behind may skip step events, and says how many; every other event arrives, in
    // order, the final one last.
    EXPECT_TRUE(FollowsWatchContract(seen[i], 0, submitted.last_sequence(), StepsOf(log))) << "watcher " << i;
    EXPECT_THAT(States(EventsOf(seen[i])), ::testing::ElementsAre(v1::QUEUED, v1::RUNNING, v1::SUCCEEDED));
  }
  // Each stream's reactor goes once gRPC is done with it, which may be just after its client saw the end.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (test->server->hub().watchers() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(test->server->hub().watchers(), 0);
}

TEST(Service, WatchFromPastTheEndIsOutOfRange) {
  auto test = TestServer::Start();
  ASSERT_NE(test, nullptr);
  const std::string id = Submit(*test->stub, TinyJob(2)).job().id();
  const v1::Job done = WaitForEnd(*test->stub, id);
  grpc::Status status;
  WatchToEnd(*test->stub, id, done.last_sequence() + 5, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::OUT_OF_RANGE);
  // From the last event: exactly that event, then the stream ends.
  std::vector<v1::WatchJobResponse> tail = WatchToEnd(*test->stub, id, done.last_sequence(), &status);
  EXPECT_TRUE(status.ok());
  ASSERT_EQ(tail.size(), 1u);
  EXPECT_EQ(tail[0].event().state().to_state(), v1::SUCCEEDED);
  WatchToEnd(*test->stub, "job-does-not-exist", 0, &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST(Service, KilledWorkerIsRetriedFromItsCheckpoint) {
  ServerOptions options;
  options.max_attempts = 3;
  auto test = TestServer::Start(options);
  ASSERT_NE(test, nullptr);
  v1::JobSpec spec = TinyJob(/*max_steps=*/60, /*epochs=*/10);
  spec.mutable_checkpoint()->set_every_steps(5);
  const std::string id = Submit(*test->stub, spec).job().id();
  WaitFor(*test->stub, id, [](const v1::Job& j) { return j.progress().last_checkpoint_step() >= 5; });
  std::vector<pid_t> workers = WorkerChildren();
  ASSERT_EQ(workers.size(), 1u);
  kill(workers[0], SIGKILL);
  const v1::Job done = WaitForEnd(*test->stub, id);
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.failure_reason();
  EXPECT_EQ(done.attempts(), 1);
  grpc::Status status;
  const std::vector<v1::WatchJobResponse> log = WatchToEnd(*test->stub, id, 0, &status);
  // Watched after the end: all of it is backlog, replayed whole.
  EXPECT_TRUE(FollowsWatchContract(log, 0, done.last_sequence()));
  EXPECT_EQ(static_cast<int64_t>(log.size()), done.last_sequence());
  const std::vector<v1::JobEvent> events = EventsOf(log);
  bool failure_logged = false;
  for (const v1::JobEvent& e : events) {
    if (e.has_attempt_failed()) {
      failure_logged = true;
      EXPECT_THAT(e.attempt_failed().reason(), HasSubstr("signal"));
      EXPECT_TRUE(e.attempt_failed().will_retry());
    }
  }
  EXPECT_TRUE(failure_logged);
  EXPECT_THAT(States(events), ::testing::ElementsAre(v1::QUEUED, v1::RUNNING, v1::QUEUED, v1::RUNNING, v1::SUCCEEDED));
}

TEST(Service, ServerKilledMidJobResumesWithAnUnbrokenLog) {
  TempDir dir;
  const std::string data_dir = absl::StrCat(dir.path(), "/server");
  const std::string data_root = absl::StrCat(dir.path(), "/data");
  std::filesystem::create_directories(data_root);
  v1::JobSpec spec = TinyJob(/*max_steps=*/80, /*epochs=*/20);
  spec.mutable_checkpoint()->set_every_steps(10);
  std::string id;
  std::vector<v1::WatchJobResponse> before;
  int64_t logged_before = 0;  // events logged before the first watch: its backlog
  {
    ServerProcess server(data_dir, data_root);
    ASSERT_TRUE(server.serving());
    id = Submit(server.stub(), spec).job().id();
    logged_before =
        WaitFor(server.stub(), id, [](const v1::Job& j) { return j.progress().last_checkpoint_step() >= 20; })
            .last_sequence();
    // A watcher that reads part of the log before the crash.
    grpc::ClientContext context;
    v1::WatchJobRequest request;
    request.set_job_id(id);
    auto reader = server.stub().WatchJob(&context, request);
    v1::WatchJobResponse response;
    while (before.size() < 5 && reader->Read(&response)) before.push_back(response);
    server.Stop(SIGKILL);
    context.TryCancel();
    reader->Finish();
  }
  ASSERT_EQ(before.size(), 5u);
  EXPECT_TRUE(FollowsWatchContract(before, 0, logged_before));
  ServerProcess restarted(data_dir, data_root);
  ASSERT_TRUE(restarted.serving());
  // The watcher reconnects from its last sequence and reads on to the end. What the restarted server
  // logged before that is the watch's backlog, replayed whole: no gap across the restart.
  const int64_t logged = WaitFor(restarted.stub(), id, [](const v1::Job&) { return true; }).last_sequence();
  grpc::Status status;
  const int64_t next = before.back().event().sequence() + 1;
  std::vector<v1::WatchJobResponse> after = WatchToEnd(restarted.stub(), id, next, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(FollowsWatchContract(after, next, logged));
  std::vector<v1::JobEvent> all = EventsOf(before);
  for (const v1::JobEvent& e : EventsOf(after)) all.push_back(e);
  const v1::Job done = WaitForEnd(restarted.stub(), id);
  EXPECT_EQ(all.back().sequence(), done.last_sequence());
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.failure_reason();
  EXPECT_EQ(done.attempts(), 0);  // a server restart is not the job's failure
  EXPECT_EQ(done.progress().step(), 80);
  bool resumed = false;
  for (const v1::JobEvent& e : all) {
    if (e.has_state() && e.state().to_state() == v1::QUEUED && e.state().reason().find("restarted") != std::string::npos) {
      resumed = true;
      EXPECT_THAT(e.state().reason(), HasSubstr("checkpoint at step"));
    }
  }
  EXPECT_TRUE(resumed);
}

// A server killed mid-job whose newest checkpoint file is then damaged (truncated): at the next start
// the worker resumes from the checkpoint before it, so the job still succeeds, retraining the steps in
// between (its first checkpoint after the restart is the damaged one's step again).
TEST(Service, ADamagedNewestCheckpointFallsBackToTheOneBefore) {
  TempDir dir;
  const std::string data_dir = absl::StrCat(dir.path(), "/server");
  const std::string data_root = absl::StrCat(dir.path(), "/data");
  std::filesystem::create_directories(data_root);
  v1::JobSpec spec = TinyJob(/*max_steps=*/3000, /*epochs=*/1000);
  spec.mutable_checkpoint()->set_every_steps(100);
  spec.mutable_checkpoint()->set_keep(3);
  std::string id;
  int64_t logged_before = 0;
  {
    ServerProcess server(data_dir, data_root);
    ASSERT_TRUE(server.serving());
    id = Submit(server.stub(), spec).job().id();
    logged_before = WaitFor(server.stub(), id, [](const v1::Job& j) {
                      return j.progress().last_checkpoint_step() >= 300 || j.state() == v1::SUCCEEDED;
                    }).last_sequence();
    server.Stop(SIGKILL);
  }
  // The newest checkpoint on disk (the store may not have heard of it yet), cut in half.
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(data_dir + "/jobs/" + id + "/checkpoints")) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("checkpoint-", 0) == 0 && name.size() > 3 && name.substr(name.size() - 3) == ".pt") {
      files.push_back(entry.path().string());
    }
  }
  std::sort(files.begin(), files.end());
  ASSERT_GE(files.size(), 2u) << "the job must hold two checkpoints for a fallback";
  const std::string newest = files.back();
  const int64_t newest_step = std::stoll(newest.substr(newest.rfind('-') + 1));
  std::filesystem::resize_file(newest, std::filesystem::file_size(newest) / 2);

  ServerProcess restarted(data_dir, data_root);
  ASSERT_TRUE(restarted.serving());
  const v1::Job done = WaitForEnd(restarted.stub(), id);
  EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.failure_reason();
  EXPECT_EQ(done.progress().step(), 3000);
  grpc::Status status;
  const std::vector<v1::WatchJobResponse> log = WatchToEnd(restarted.stub(), id, logged_before + 1, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  // The first checkpoint after the restart (the log may hold checkpoints committed just before the kill).
  int64_t first_checkpoint = -1;
  bool restarted_seen = false;
  for (const v1::WatchJobResponse& r : log) {
    const v1::JobEvent& e = r.event();
    if (e.has_state() && e.state().reason().find("the server restarted") != std::string::npos) restarted_seen = true;
    if (restarted_seen && e.has_checkpoint()) {
      first_checkpoint = e.checkpoint().step();
      break;
    }
  }
  ASSERT_TRUE(restarted_seen);
  // Resumed from newest_step - 100: its next checkpoint is newest_step (from the newest it would be
  // newest_step + 100; from scratch, 100).
  EXPECT_EQ(first_checkpoint, newest_step);
}

// A checkpoint write that fails as on a full disk (ENOSPC, injected into the worker by
// checkpoint_fault_preload.cc: each worker process writes one checkpoint, then every later write
// fails). The failed write leaves no partial file and keeps the checkpoint before it; the attempt
// fails with the disk's reason and is retried from that checkpoint; once the retries are spent the
// job fails with the reason, and the checkpoints it kept still load.
TEST(Service, AFullDiskAtACheckpointKeepsTheOneBeforeAndFailsWithTheReason) {
  ServerOptions options;
  options.max_attempts = 2;
  std::unique_ptr<TestServer> test;
  {
    // The in-process server's workers inherit the test's environment.
    ScopedEnv preload("LD_PRELOAD", CheckpointFaultPreloadPath());
    ScopedEnv allowance("XTRAIN_FAULT_CHECKPOINT_WRITES_OK", "1");
    test = TestServer::Start(options);
    ASSERT_NE(test, nullptr);
    v1::JobSpec spec = TinyJob(/*max_steps=*/1000, /*epochs=*/1000);
    spec.mutable_checkpoint()->set_every_steps(50);
    spec.mutable_checkpoint()->set_keep(3);
    const std::string id = Submit(*test->stub, spec).job().id();
    const v1::Job done = WaitForEnd(*test->stub, id);
    ASSERT_EQ(done.state(), v1::FAILED);
    EXPECT_THAT(done.failure_reason(), HasSubstr("failed 2 attempts"));
    EXPECT_THAT(done.failure_reason(), HasSubstr("No space left on device"));
    EXPECT_EQ(done.attempts(), 2);
    EXPECT_EQ(done.progress().last_checkpoint_step(), 100);
    grpc::Status status;
    const std::vector<v1::JobEvent> events = EventsOf(WatchToEnd(*test->stub, id, 0, &status));
    ASSERT_TRUE(status.ok()) << status.error_message();
    std::vector<int64_t> checkpoints;
    std::vector<bool> retries;
    bool retried_from_the_one_before = false;
    for (const v1::JobEvent& e : events) {
      if (e.has_checkpoint()) checkpoints.push_back(e.checkpoint().step());
      if (e.has_attempt_failed()) {
        retries.push_back(e.attempt_failed().will_retry());
        EXPECT_THAT(e.attempt_failed().reason(), HasSubstr("No space left on device"));
      }
      if (e.has_state() && e.state().reason().find("retrying from step 50") != std::string::npos) {
        retried_from_the_one_before = true;
      }
    }
    // Attempt 1 wrote step 50 and failed at 100; attempt 2 resumed from 50, wrote 100, failed at 150.
    EXPECT_THAT(checkpoints, ::testing::ElementsAre(50, 100));
    EXPECT_THAT(retries, ::testing::ElementsAre(true, false));
    EXPECT_TRUE(retried_from_the_one_before);
    // Stopped before the environment is restored: no server thread reads it as it changes.
    test->stub.reset();
    test->server.reset();
  }
  // No partial file is left, and what was kept loads (checked without the preload).
  int temporaries = 0;
  std::error_code error;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(test->dir.path(), error)) {
    if (entry.path().extension() == ".tmp") ++temporaries;
  }
  EXPECT_EQ(temporaries, 0);
  EXPECT_EQ(CheckKeptCheckpoints(test->dir.path()), 2);
}

// A job that diverges and one whose data disappears fail with a reason a person can act on, and are
// not retried where a retry would fail the same way; a job running beside them is not disturbed.
TEST(Service, ADivergingJobAndOneWhoseDataVanishedFailWithTheirReasonsAndDisturbNothingElse) {
  ServerOptions options;
  options.max_attempts = 3;
  options.devices = {DeviceState{"cpu", int64_t{8} << 30, 3}};
  auto test = TestServer::Start(options);
  ASSERT_NE(test, nullptr);
  const std::string healthy = Submit(*test->stub, TinyJob(/*max_steps=*/1000000, /*epochs=*/100000)).job().id();
  WaitFor(*test->stub, healthy, [](const v1::Job& j) { return j.state() == v1::RUNNING; });
  const std::vector<pid_t> before = WorkerChildren();
  ASSERT_EQ(before.size(), 1u);

  // Fashion-MNIST copied under the data root, read by a job that checkpoints every 5 steps.
  const std::string folder = test->data_root + "/fm";
  std::filesystem::copy("/usr/share/datasets/fashion-mnist", folder, std::filesystem::copy_options::recursive);
  v1::JobSpec data_spec = TinyJob(/*max_steps=*/1000000, /*epochs=*/100000);
  v1::DatasetSpec& data = *data_spec.mutable_dataset();
  data.Clear();
  data.set_kind(v1::DatasetSpec::MNIST);
  data.set_path("fm");
  data.set_limit(512);
  data.set_validation_limit(256);
  data_spec.mutable_checkpoint()->set_every_steps(5);
  const std::string vanished = Submit(*test->stub, data_spec).job().id();
  WaitFor(*test->stub, vanished, [](const v1::Job& j) { return j.progress().last_checkpoint_step() >= 5; });
  std::vector<pid_t> workers = WorkerChildren();
  std::erase_if(workers, [&](pid_t p) { return p == before[0]; });
  ASSERT_EQ(workers.size(), 1u);
  // The data goes while the job runs, then its worker dies: the retry finds no data.
  std::filesystem::remove_all(folder);
  kill(workers[0], SIGKILL);

  // Super-resolution's squared error under plain SGD at lr 100: every step multiplies the output
  // bias's error by about -199, so the loss overflows within a few dozen steps.
  v1::JobSpec diverging = TinyJob(/*max_steps=*/1000000, /*epochs=*/100000);
  diverging.mutable_model()->set_name("srnet");
  diverging.mutable_task()->set_kind("super_resolution");
  diverging.mutable_training()->set_optimizer("sgd");
  diverging.mutable_training()->set_lr(100);
  const std::string diverged = Submit(*test->stub, diverging).job().id();

  const v1::Job lost = WaitForEnd(*test->stub, vanished);
  ASSERT_EQ(lost.state(), v1::FAILED);
  EXPECT_THAT(lost.failure_reason(), HasSubstr("/fm' does not exist"));
  EXPECT_EQ(lost.attempts(), 1);  // the kill; the missing data is not retried
  const v1::Job blown = WaitForEnd(*test->stub, diverged);
  ASSERT_EQ(blown.state(), v1::FAILED);
  EXPECT_THAT(blown.failure_reason(), HasSubstr("training diverged"));
  EXPECT_THAT(blown.failure_reason(), HasSubstr("lower optimizer.lr"));
  EXPECT_EQ(blown.attempts(), 0);

  // Each log says why, and whether it retried.
  const auto failures = [&](const std::string& id) {
    grpc::Status status;
    std::vector<std::pair<bool, std::string>> out;
    for (const v1::JobEvent& e : EventsOf(WatchToEnd(*test->stub, id, 0, &status))) {
      if (e.has_attempt_failed()) out.emplace_back(e.attempt_failed().will_retry(), e.attempt_failed().reason());
    }
    EXPECT_TRUE(status.ok()) << status.error_message();
    return out;
  };
  const auto lost_failures = failures(vanished);
  ASSERT_EQ(lost_failures.size(), 2u);
  EXPECT_TRUE(lost_failures[0].first);
  EXPECT_THAT(lost_failures[0].second, HasSubstr("signal"));
  EXPECT_FALSE(lost_failures[1].first);
  EXPECT_EQ(lost_failures[1].second, lost.failure_reason());
  const auto blown_failures = failures(diverged);
  ASSERT_EQ(blown_failures.size(), 1u);
  EXPECT_FALSE(blown_failures[0].first);

  // The job beside them ran on: never failed, still stepping.
  const int64_t step = WaitFor(*test->stub, healthy, [](const v1::Job&) { return true; }).progress().step();
  const v1::Job still = WaitFor(*test->stub, healthy, [&](const v1::Job& j) { return j.progress().step() > step; });
  EXPECT_EQ(still.state(), v1::RUNNING);
  EXPECT_EQ(still.attempts(), 0);
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(Cancel(*test->stub, healthy, &cancelled).ok());
  EXPECT_EQ(WaitForEnd(*test->stub, healthy).state(), v1::CANCELLED);
  EXPECT_TRUE(failures(healthy).empty());
}

// A cancel the server acknowledged (committed) before it died, while the worker had not stopped yet:
// the store holds a RUNNING job with cancel_requested. The next start ends it CANCELLED rather than
// resuming it (found by the kill loop: such a job ran on to SUCCEEDED).
TEST(Service, AnAcknowledgedCancelSurvivesAServerKill) {
  TempDir dir;
  const std::string data_dir = dir.path() + "/server";
  {
    ASSERT_TRUE(MakeDirs(data_dir).ok());
    absl::StatusOr<std::unique_ptr<JobStore>> store = OpenSqliteJobStore(data_dir + "/xtrain.db");
    ASSERT_TRUE(store.ok()) << store.status();
    JobWrite write;
    v1::Job& job = write.job;
    job.set_id("job-cancelled-then-killed");
    job.set_tenant("local");
    *job.mutable_spec() = TinyJob(100000, 100000);
    job.set_state(v1::RUNNING);
    job.set_cancel_requested(true);
    job.mutable_progress()->set_step(37);
    job.set_last_sequence(2);
    for (const auto& [from, to] : {std::pair{v1::JOB_STATE_UNSPECIFIED, v1::QUEUED}, std::pair{v1::QUEUED, v1::RUNNING}}) {
      v1::JobEvent& event = write.events.emplace_back();
      event.set_sequence(static_cast<int64_t>(write.events.size()));
      *event.mutable_time() = NowTimestamp();
      event.mutable_state()->set_from_state(from);
      event.mutable_state()->set_to_state(to);
    }
    ASSERT_TRUE((*store)->InsertJob(write).ok());
  }
  ServerOptions options;
  options.data_dir = data_dir;
  auto test = TestServer::Start(options);
  ASSERT_NE(test, nullptr);
  const v1::Job job = WaitForEnd(*test->stub, "job-cancelled-then-killed", std::chrono::seconds(30));
  EXPECT_EQ(job.state(), v1::CANCELLED);
  grpc::Status status;
  const std::vector<v1::WatchJobResponse> log = WatchToEnd(*test->stub, job.id(), 0, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(log.size(), 3u);
  EXPECT_EQ(log[2].event().state().from_state(), v1::RUNNING);
  EXPECT_THAT(log[2].event().state().reason(), HasSubstr("cancelled at step 37"));
  EXPECT_TRUE(WorkerChildren().empty());  // nothing was started for it
}

TEST(Service, SigtermCheckpointsRunningJobsWhichResumeAtTheNextStart) {
  TempDir dir;
  const std::string data_dir = absl::StrCat(dir.path(), "/server");
  const std::string data_root = absl::StrCat(dir.path(), "/data");
  std::filesystem::create_directories(data_root);
  std::string id;
  {
    ServerProcess server(data_dir, data_root, {"--grace-seconds", "20"});
    ASSERT_TRUE(server.serving());
    id = Submit(server.stub(), TinyJob(/*max_steps=*/100000, /*epochs=*/1000)).job().id();
    WaitFor(server.stub(), id, [](const v1::Job& j) { return j.progress().step() >= 5; });
    const auto start = std::chrono::steady_clock::now();
    const int status = server.Stop(SIGTERM, std::chrono::seconds(30));
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
  }
  ServerProcess restarted(data_dir, data_root);
  ASSERT_TRUE(restarted.serving());
  grpc::Status status;
  std::vector<v1::JobEvent> events;
  // Read the log as it is now: the shutdown checkpoint and the way back to the queue.
  v1::Job job = WaitFor(restarted.stub(), id, [](const v1::Job& j) { return j.state() == v1::RUNNING; });
  bool stop_checkpoint = false;
  {
    grpc::ClientContext context;
    v1::WatchJobRequest request;
    request.set_job_id(id);
    auto reader = restarted.stub().WatchJob(&context, request);
    v1::WatchJobResponse response;
    while (reader->Read(&response)) {
      if (response.event().has_checkpoint() && response.event().checkpoint().reason() == "stop") stop_checkpoint = true;
      if (response.event().sequence() >= job.last_sequence()) break;
    }
    context.TryCancel();
    reader->Finish();
  }
  EXPECT_TRUE(stop_checkpoint);
  v1::CancelJobResponse cancelled;
  EXPECT_TRUE(Cancel(restarted.stub(), id, &cancelled).ok());
  EXPECT_EQ(WaitForEnd(restarted.stub(), id).state(), v1::CANCELLED);
}

TEST(Service, HigherPriorityRunsFirst) {
  ServerOptions options;
  options.devices = {DeviceState{"cpu", int64_t{4} << 30, 1}};
  auto test = TestServer::Start(options);
  ASSERT_NE(test, nullptr);
  // The first job holds the only slot until the queue has been checked (a short one could end before
  // the others are even planned, and they would never wait).
  const std::string first = Submit(*test->stub, TinyJob(/*max_steps=*/100000, /*epochs=*/1000)).job().id();
  WaitFor(*test->stub, first, [](const v1::Job& j) { return j.state() == v1::RUNNING; });
  v1::JobSpec low = TinyJob(5);
  v1::JobSpec high = TinyJob(5);
  high.set_priority(10);
  const std::string low_id = Submit(*test->stub, low).job().id();
  const std::string high_id = Submit(*test->stub, high).job().id();
  // Once the scheduler has placed the later (high) submit in the queue, the earlier low one is behind it.
  const v1::Job high_waiting = WaitFor(*test->stub, high_id, [](const v1::Job& j) { return j.queue_position() > 0; });
  EXPECT_EQ(high_waiting.queue_position(), 1);
  v1::Job waiting = WaitFor(*test->stub, low_id, [](const v1::Job& j) { return j.queue_position() > 0; });
  EXPECT_EQ(waiting.queue_position(), 2);
  EXPECT_FALSE(waiting.waiting_reason().empty());
  // ListJobs shows the same live positions and reasons (a queued job's entry is made per call, not
  // taken from its snapshot's bytes).
  {
    grpc::ClientContext context;
    v1::ListJobsRequest request;
    request.add_states(v1::QUEUED);
    v1::ListJobsResponse queued;
    ASSERT_TRUE(test->stub->ListJobs(&context, request, &queued).ok());
    ASSERT_EQ(queued.jobs_size(), 2);
    EXPECT_EQ(queued.jobs(0).id(), high_id);  // newest first
    EXPECT_EQ(queued.jobs(0).queue_position(), 1);
    EXPECT_EQ(queued.jobs(0).spec().priority(), 10);
    EXPECT_EQ(queued.jobs(1).id(), low_id);
    EXPECT_EQ(queued.jobs(1).queue_position(), 2);
    EXPECT_FALSE(queued.jobs(1).waiting_reason().empty());
    EXPECT_TRUE(queued.next_page_token().empty());
  }
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(Cancel(*test->stub, first, &cancelled).ok());
  const v1::Job high_done = WaitForEnd(*test->stub, high_id);
  const v1::Job low_done = WaitForEnd(*test->stub, low_id);
  ASSERT_EQ(high_done.state(), v1::SUCCEEDED);
  ASSERT_EQ(low_done.state(), v1::SUCCEEDED);
  EXPECT_LE(TimestampSeconds(high_done.end_time()), TimestampSeconds(low_done.start_time()));
}

TEST(Service, TwoJobsPackOnOneDeviceWithShrunkPlansEachUnderItsBudget) {
  // Learn the job's figures, then give a device room for one exact job but not two.
  v1::JobSpec spec = TinyJob(/*max_steps=*/40, /*epochs=*/10);
  spec.mutable_model()->set_width(16);
  spec.mutable_dataset()->set_synthetic_size(28);
  v1::PlanJobResponse plan;
  {
    auto probe = TestServer::Start();
    ASSERT_NE(probe, nullptr);
    ASSERT_TRUE(Plan(*probe->stub, spec, &plan).ok());
  }
  const int64_t exact = plan.plan().exact_peak_bytes();
  const int64_t minimum = plan.plan().minimum_budget_bytes();
  ASSERT_LT(minimum, exact * 0.8) << "the tiny job must leave room to shrink";
  // Without a min_fidelity the floor is the chain's cheapest point: the smallest budget, give or take
  // the rounding of the margin.
  EXPECT_GE(plan.plan().floor_budget_bytes(), minimum * 0.99);
  EXPECT_LE(plan.plan().floor_budget_bytes(), minimum * 1.01);
  ServerOptions options;
  const int64_t capacity = exact * 1.05 + minimum * 1.1;
  options.devices = {DeviceState{"cpu", capacity, 2}};
  auto test = TestServer::Start(options);
  ASSERT_NE(test, nullptr);
  spec.mutable_memory()->set_budget_bytes(exact * 1.05);
  const std::string a = Submit(*test->stub, spec).job().id();
  const std::string b = Submit(*test->stub, spec).job().id();
  // Both run at once: the second on a smaller plan beside the first.
  v1::Job b_running = WaitFor(*test->stub, b, [](const v1::Job& j) { return j.state() == v1::RUNNING || IsTerminal(j.state()); });
  v1::Job a_now;
  {
    grpc::ClientContext context;
    v1::GetJobRequest request;
    request.set_job_id(a);
    v1::GetJobResponse response;
    ASSERT_TRUE(test->stub->GetJob(&context, request, &response).ok());
    a_now = response.job();
  }
  EXPECT_EQ(a_now.state(), v1::RUNNING);
  EXPECT_EQ(b_running.state(), v1::RUNNING);
  EXPECT_LE(a_now.budget_bytes() + b_running.budget_bytes(), capacity);
  EXPECT_LT(b_running.budget_bytes(), spec.memory().budget_bytes());
  for (const std::string& id : {a, b}) {
    const v1::Job done = WaitForEnd(*test->stub, id);
    EXPECT_EQ(done.state(), v1::SUCCEEDED) << done.failure_reason();
    grpc::Status status;
    for (const v1::JobEvent& e : EventsOf(WatchToEnd(*test->stub, id, 0, &status))) {
      if (e.has_step()) {
        EXPECT_LE(e.step().measured_peak_bytes(), done.budget_bytes()) << id << " step " << e.step().step();
      }
    }
  }
}

TEST(Service, ListJobsPaginatesNewestFirstAndFilters) {
  auto test = TestServer::Start();
  ASSERT_NE(test, nullptr);
  std::vector<std::string> ids;
  for (int i = 0; i < 7; ++i) {
    v1::JobSpec spec = TinyJob(1);
    (*spec.mutable_labels())["team"] = i % 2 == 0 ? "even" : "odd";
    ids.push_back(Submit(*test->stub, spec).job().id());
  }
  std::vector<std::string> listed;
  std::string token;
  int pages = 0;
  do {
    grpc::ClientContext context;
    v1::ListJobsRequest request;
    request.set_page_size(3);
    request.set_page_token(token);
    v1::ListJobsResponse response;
    ASSERT_TRUE(test->stub->ListJobs(&context, request, &response).ok());
    for (const v1::Job& j : response.jobs()) listed.push_back(j.id());
    token = response.next_page_token();
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  std::vector<std::string> newest_first(ids.rbegin(), ids.rend());
  EXPECT_EQ(listed, newest_first);
  grpc::ClientContext context;
  v1::ListJobsRequest request;
  (*request.mutable_labels())["team"] = "odd";
  v1::ListJobsResponse odd;
  ASSERT_TRUE(test->stub->ListJobs(&context, request, &odd).ok());
  EXPECT_EQ(odd.jobs_size(), 3);
  for (const v1::Job& j : odd.jobs()) {
    EXPECT_EQ(j.spec().labels().at("team"), "odd");
    EXPECT_EQ(j.spec().model().name(), TinyJob(1).model().name());  // the whole job, not only its id
  }
  grpc::ClientContext bad_context;
  request.set_page_token("not-a-token");
  EXPECT_EQ(test->stub->ListJobs(&bad_context, request, &odd).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(Service, UploadFinetuneFromItAndDownloadResumably) {
  auto test = TestServer::Start();
  ASSERT_NE(test, nullptr);
  const v1::Job trained = WaitForEnd(*test->stub, Submit(*test->stub, TinyJob(8)).job().id());
  ASSERT_EQ(trained.state(), v1::SUCCEEDED);
  grpc::Status status;
  v1::ArtifactInfo info;
  const std::string weights = Download(*test->stub, trained.weights_artifact_id(), 0, &status, &info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_FALSE(weights.empty());
  EXPECT_EQ(static_cast<int64_t>(weights.size()), info.size_bytes());
  EXPECT_EQ(Sha256Hex(weights), info.sha256());
  // Resumed from the middle: the rest, byte for byte.
  const std::string rest = Download(*test->stub, trained.weights_artifact_id(), weights.size() / 2, &status);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(rest, weights.substr(weights.size() / 2));

  v1::UploadArtifactResponse bad;
  EXPECT_EQ(Upload(*test->stub, weights, std::string(64, 'a'), weights.size(), &bad).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Upload(*test->stub, weights.substr(0, weights.size() / 2), Sha256Hex(weights), weights.size(), &bad).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::UploadArtifactResponse uploaded;
  ASSERT_TRUE(Upload(*test->stub, weights, Sha256Hex(weights), weights.size(), &uploaded).ok());
  EXPECT_EQ(uploaded.artifact().sha256(), Sha256Hex(weights));

  v1::JobSpec finetune = TinyJob(4);
  finetune.mutable_model()->set_init_artifact_id(uploaded.artifact().id());
  finetune.mutable_model()->add_freeze("features.0");
  const v1::Job tuned = WaitForEnd(*test->stub, Submit(*test->stub, finetune).job().id());
  ASSERT_EQ(tuned.state(), v1::SUCCEEDED) << tuned.failure_reason();
  const std::string tuned_weights = Download(*test->stub, tuned.weights_artifact_id(), 0, &status);
  ASSERT_TRUE(status.ok());
  EXPECT_NE(tuned_weights, weights);  // trained further

  v1::JobSpec missing = TinyJob(4);
  missing.mutable_model()->set_init_artifact_id("art-0000000000000000");
  grpc::ClientContext context;
  v1::SubmitJobRequest request;
  *request.mutable_spec() = missing;
  v1::SubmitJobResponse response;
  EXPECT_EQ(test->stub->SubmitJob(&context, request, &response).error_code(), grpc::StatusCode::NOT_FOUND);
}

// `method` called with `request_bytes` as they are (no message type): its status, and its reply's bytes.
grpc::Status CallRaw(int port, const std::string& method, const std::string& request_bytes, std::string* reply_bytes) {
  grpc::GenericStub generic(ChannelFor(port));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  Notification done;
  grpc::Status status;
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer reply;
  generic.UnaryCall(&context, method, grpc::StubOptions(), &request, &reply, [&](grpc::Status s) {
    status = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  reply_bytes->clear();
  std::vector<grpc::Slice> slices;
  if (status.ok() && reply.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) reply_bytes->append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return status;
}

TEST(Service, HealthCheckSaysServing) {
  auto test = TestServer::Start();
  ASSERT_NE(test, nullptr);
  // grpc.health.v1.Health/Check with an empty request: SERVING (field 1 = 1).
  std::string bytes;
  const grpc::Status status = CallRaw(test->server->port(), "/grpc.health.v1.Health/Check", "", &bytes);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));
}

// GetJob and ListJobs are raw methods (they send the snapshots' bytes): they parse the request
// themselves, refuse bytes that are no message, answer an unknown job NOT_FOUND, and what they send
// parses as the typed response with the job the store holds.
TEST(Service, RawReadsParseTheirRequestsAndSendWhatTheTypedResponseReads) {
  auto test = TestServer::Start();
  ASSERT_NE(test, nullptr);
  const int port = test->server->port();
  const std::string garbage("\xff\xff\xff\xff", 4);  // a field tag that never ends
  std::string bytes;
  for (const char* method : {"/xtrain.v1.TrainingService/GetJob", "/xtrain.v1.TrainingService/ListJobs"}) {
    const grpc::Status status = CallRaw(port, method, garbage, &bytes);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_THAT(status.error_message(), HasSubstr("does not parse")) << method;
  }
  v1::GetJobRequest unknown;
  unknown.set_job_id("job-does-not-exist");
  const grpc::Status missing = CallRaw(port, "/xtrain.v1.TrainingService/GetJob", unknown.SerializeAsString(), &bytes);
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(missing.error_message(), HasSubstr("job-does-not-exist"));

  const std::string id = Submit(*test->stub, TinyJob(2)).job().id();
  const v1::Job done = WaitForEnd(*test->stub, id);
  v1::GetJobRequest get;
  get.set_job_id(id);
  ASSERT_TRUE(CallRaw(port, "/xtrain.v1.TrainingService/GetJob", get.SerializeAsString(), &bytes).ok());
  v1::GetJobResponse got;
  ASSERT_TRUE(got.ParseFromString(bytes));
  using google::protobuf::util::MessageDifferencer;
  EXPECT_TRUE(MessageDifferencer::Equals(got.job(), done)) << got.job().DebugString();  // the snapshot, whole
  v1::ListJobsRequest list;
  list.set_page_size(1);
  ASSERT_TRUE(CallRaw(port, "/xtrain.v1.TrainingService/ListJobs", list.SerializeAsString(), &bytes).ok());
  v1::ListJobsResponse listed;
  ASSERT_TRUE(listed.ParseFromString(bytes));
  ASSERT_EQ(listed.jobs_size(), 1);
  EXPECT_TRUE(MessageDifferencer::Equals(listed.jobs(0), done)) << listed.jobs(0).DebugString();
  EXPECT_TRUE(listed.next_page_token().empty());  // one job: one page
}

}  // namespace
}  // namespace xtrain::server::testing
