// Per-tenant quotas on a real server with two tenants: queued jobs, memory budget held, submits a
// minute, open watch streams and artifact bytes. Each refusal is RESOURCE_EXHAUSTED naming the tenant,
// the quota and its flag; the other tenant is never affected; room made frees the quota again.
#include <atomic>
#include <chrono>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "server/common/util.h"
#include "tests/server/service_test_util.h"

namespace xtrain::server::testing {
namespace {
namespace v1 = ::xtrain::v1;
using ::testing::HasSubstr;

// A server with `options`' quotas, tokens for tenants acme and rival, and one cpu slot.
struct QuotaServer {
  TempDir dir;
  std::unique_ptr<TestServer> test;
  std::unique_ptr<v1::TrainingService::Stub> acme, rival;

  explicit QuotaServer(ServerOptions options) {
    const std::string tokens = dir.path() + "/tokens.txt";
    WriteTokensFile(tokens, {{"acme-token", "acme", "user"}, {"rival-token", "rival", "user"}});
    options.tokens_file = tokens;
    options.devices = {DeviceState{"cpu", int64_t{1} << 30, 1}};
    test = TestServer::Start(options);
    if (test == nullptr) return;
    acme = StubWith(test->server->port(), "Bearer acme-token");
    rival = StubWith(test->server->port(), "Bearer rival-token");
  }
};

// A job that runs until cancelled (800,000 steps).
v1::JobSpec Long() { return TinyJob(0, 100000); }

TEST(Quota, QueuedJobsAreCappedPerTenant) {
  ServerOptions options;
  options.quota_queued_jobs = 2;
  QuotaServer server(options);
  ASSERT_NE(server.test, nullptr);
  const std::string running = Submit(*server.acme, Long()).job().id();
  WaitFor(*server.acme, running, [](const v1::Job& j) { return j.state() == v1::RUNNING; });
  const std::string queued_1 = Submit(*server.acme, Long()).job().id();
  const std::string queued_2 = Submit(*server.acme, Long()).job().id();
  v1::SubmitJobResponse refused;
  const grpc::Status status = TrySubmit(*server.acme, Long(), &refused);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("tenant 'acme' has 2 queued jobs, its quota (--quota-queued-jobs)"));
  // The other tenant's queue is its own.
  v1::SubmitJobResponse rivals;
  EXPECT_TRUE(TrySubmit(*server.rival, TinyJob(2), &rivals).ok());
  // Room made: a cancelled queued job frees its place.
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(Cancel(*server.acme, queued_1, &cancelled).ok());
  v1::SubmitJobResponse accepted;
  EXPECT_TRUE(TrySubmit(*server.acme, Long(), &accepted).ok());
  for (const std::string& id : {running, queued_2, accepted.job().id()}) (void)Cancel(*server.acme, id, &cancelled);
}

TEST(Quota, MemoryBudgetHeldIsCappedPerTenant) {
  // The quota sits between one and two of this job's budgets, measured on a server without quotas.
  int64_t budget = 0;
  {
    QuotaServer probe{ServerOptions()};
    ASSERT_NE(probe.test, nullptr);
    budget = Submit(*probe.acme, TinyJob(2)).job().budget_bytes();
    ASSERT_GT(budget, 0);
  }
  ServerOptions options;
  options.quota_budget_bytes = budget * 3 / 2;
  QuotaServer server(options);
  ASSERT_NE(server.test, nullptr);
  const v1::SubmitJobResponse first = Submit(*server.acme, Long());
  ASSERT_EQ(first.job().budget_bytes(), budget);
  v1::SubmitJobResponse refused;
  const grpc::Status status = TrySubmit(*server.acme, Long(), &refused);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("over its quota of"));
  EXPECT_THAT(status.error_message(), HasSubstr("--quota-budget-bytes"));
  v1::SubmitJobResponse rivals;
  EXPECT_TRUE(TrySubmit(*server.rival, TinyJob(2), &rivals).ok());
  // Once the first job has ended, its budget is free again.
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(Cancel(*server.acme, first.job().id(), &cancelled).ok());
  WaitForEnd(*server.acme, first.job().id());
  v1::SubmitJobResponse accepted;
  EXPECT_TRUE(TrySubmit(*server.acme, TinyJob(2), &accepted).ok());
}

TEST(Quota, SubmitsAMinuteAreCappedPerTenantAndSayWhenToRetry) {
  ServerOptions options;
  options.quota_submits_per_minute = 3;
  QuotaServer server(options);
  ASSERT_NE(server.test, nullptr);
  v1::SubmitJobResponse response;
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(TrySubmit(*server.acme, TinyJob(2), &response).ok()) << i;
  const grpc::Status status = TrySubmit(*server.acme, TinyJob(2), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("more than 3 jobs in a minute"));
  EXPECT_THAT(status.error_message(), HasSubstr("retry in"));
  EXPECT_TRUE(TrySubmit(*server.rival, TinyJob(2), &response).ok());
}

TEST(Quota, OpenWatchStreamsAreCappedPerTenantAndFreedWhenOneEnds) {
  ServerOptions options;
  options.quota_watchers = 2;
  QuotaServer server(options);
  ASSERT_NE(server.test, nullptr);
  const std::string id = Submit(*server.acme, Long()).job().id();
  // Two streams held open on their own threads until cancelled.
  struct Stream {
    grpc::ClientContext context;
    std::atomic<bool> reading{false};
    grpc::Status status;
    std::thread thread;
  };
  std::vector<std::unique_ptr<Stream>> streams;
  for (int i = 0; i < 2; ++i) {
    auto stream = std::make_unique<Stream>();
    Stream* s = stream.get();
    s->thread = std::thread([&, s] {
      v1::WatchJobRequest request;
      request.set_job_id(id);
      auto reader = server.acme->WatchJob(&s->context, request);
      v1::WatchJobResponse response;
      while (reader->Read(&response)) s->reading = true;
      s->status = reader->Finish();
    });
    streams.push_back(std::move(stream));
  }
  for (auto& s : streams) {
    while (!s->reading) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  grpc::Status third;
  WatchToEnd(*server.acme, id, 0, &third, std::chrono::seconds(30));
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(third.error_message(), HasSubstr("tenant 'acme' has 2 open WatchJob streams"));
  // rival's streams are counted apart (its own job, queued behind acme's on the one slot: the watch
  // gets its log so far and is still open when its 2 s deadline ends it).
  const std::string rivals = Submit(*server.rival, TinyJob(2)).job().id();
  grpc::Status other;
  const std::vector<v1::WatchJobResponse> got = WatchToEnd(*server.rival, rivals, 0, &other, std::chrono::seconds(2));
  EXPECT_EQ(other.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << other.error_message();
  EXPECT_FALSE(got.empty());
  // One stream closes: its place frees once the server is done with it.
  streams[0]->context.TryCancel();
  streams[0]->thread.join();
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(Cancel(*server.acme, id, &cancelled).ok());  // the job ends, so a new watch runs to its end
  grpc::Status again;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  do {
    WatchToEnd(*server.acme, id, 0, &again, std::chrono::seconds(60));
  } while (again.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED && std::chrono::steady_clock::now() < deadline);
  EXPECT_TRUE(again.ok()) << again.error_message();
  streams[1]->thread.join();  // ended OK with the job
  EXPECT_TRUE(streams[1]->status.ok()) << streams[1]->status.error_message();
}

TEST(Quota, ArtifactBytesAreCappedPerTenant) {
  ServerOptions options;
  options.quota_artifact_bytes = 15000;
  QuotaServer server(options);
  ASSERT_NE(server.test, nullptr);
  const std::string content(10000, 'a');
  v1::UploadArtifactResponse response;
  ASSERT_TRUE(Upload(*server.acme, content, Sha256Hex(content), 10000, &response).ok());
  const grpc::Status status = Upload(*server.acme, content, Sha256Hex(content), 10000, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("tenant 'acme' holds 9.77 KiB of artifacts"));
  EXPECT_THAT(status.error_message(), HasSubstr("--quota-artifact-bytes"));
  EXPECT_TRUE(Upload(*server.rival, content, Sha256Hex(content), 10000, &response).ok());
  const std::string small(4000, 'b');
  EXPECT_TRUE(Upload(*server.acme, small, Sha256Hex(small), 4000, &response).ok());  // 14,000 in all: within
}

}  // namespace
}  // namespace xtrain::server::testing
