// The scheduler's metrics through a real server and a real worker, read from /metrics: a worker
// killed mid-job counts as a crash restart, and the retried job is admitted, started and running
// again under the same series.
#include <signal.h>

#include <chrono>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/http_client.h"
#include "tests/server/service_test_util.h"

namespace xtrain::server::testing {
namespace {

namespace v1 = ::xtrain::v1;

std::string Scrape(int port) {
  absl::StatusOr<HttpResponse> response = HttpGet(port, "/metrics");
  EXPECT_TRUE(response.ok()) << response.status();
  return response.ok() ? response->body : "";
}

TEST(ServerMetrics, AWorkerKilledMidJobCountsACrashRestartAndTheJobRunsAgain) {
  ServerOptions options;
  options.devices = {DeviceState{"cpu", int64_t{64} << 20, 1}};
  options.max_attempts = 3;
  auto test = TestServer::Start(options);
  ASSERT_NE(test, nullptr);
  const int port = test->server->metrics_port();
  v1::JobSpec spec = TinyJob(/*max_steps=*/10'000'000, /*epochs=*/100'000);  // runs until cancelled
  spec.mutable_checkpoint()->set_every_seconds(-1);
  const std::string id = Submit(*test->stub, spec).job().id();
  WaitFor(*test->stub, id, [](const v1::Job& j) { return j.state() == v1::RUNNING && j.progress().step() >= 1; });
  std::string text = Scrape(port);
  EXPECT_EQ(SampleValue(text, R"(xtrain_worker_starts_total{kind="train"})"), 1);
  EXPECT_TRUE(std::isnan(SampleValue(text, R"(xtrain_worker_restarts_total{reason="crashed"})")));

  std::vector<pid_t> workers = WorkerChildren();
  ASSERT_EQ(workers.size(), 1u);
  kill(workers[0], SIGKILL);
  const v1::Job again = WaitFor(*test->stub, id, [](const v1::Job& j) {
    return j.attempts() == 1 && j.state() == v1::RUNNING;
  });
  ASSERT_EQ(again.state(), v1::RUNNING);
  // The job's progress still shows the killed run's step; its series are the new run's, from step 0
  // until the new worker reports one.
  const std::string job = absl::StrCat(R"({device="cpu",job_id=")", id, R"(",tenant="local"})");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    text = Scrape(port);
    if (SampleValue(text, "xtrain_job_step" + job) >= 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_GE(SampleValue(text, "xtrain_job_step" + job), 1);
  EXPECT_EQ(SampleValue(text, R"(xtrain_worker_restarts_total{reason="crashed"})"), 1);
  EXPECT_EQ(SampleValue(text, R"(xtrain_worker_exits_total{kind="train",outcome="failed"})"), 1);
  EXPECT_EQ(SampleValue(text, R"(xtrain_worker_starts_total{kind="train"})"), 2);
  EXPECT_EQ(SampleValue(text, R"(xtrain_admissions_total{device="cpu"})"), 2);
  EXPECT_EQ(SampleValue(text, "xtrain_queue_wait_seconds_count"), 2);
  EXPECT_EQ(SampleValue(text, R"(xtrain_jobs{state="running",tenant="local"})"), 1);
  EXPECT_EQ(SampleValue(text, R"(xtrain_jobs{state="queued",tenant="local"})"), 0);
  EXPECT_EQ(SampleValue(text, "xtrain_queue_length"), 0);
  EXPECT_EQ(SampleValue(text, R"(xtrain_device_jobs{device="cpu"})"), 1);
  EXPECT_EQ(SampleValue(text, "xtrain_job_budget_bytes" + job), static_cast<double>(again.budget_bytes()));

  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(Cancel(*test->stub, id, &cancelled).ok());
  EXPECT_EQ(WaitForEnd(*test->stub, id).state(), v1::CANCELLED);
  text = Scrape(port);
  EXPECT_EQ(SampleValue(text, R"(xtrain_worker_exits_total{kind="train",outcome="cancelled"})"), 1);
  EXPECT_EQ(SampleValue(text, R"(xtrain_jobs{state="cancelled",tenant="local"})"), 1);
  EXPECT_EQ(SampleValue(text, R"(xtrain_jobs{state="running",tenant="local"})"), 0);
  EXPECT_EQ(SampleValue(text, R"(xtrain_device_jobs{device="cpu"})"), 0);
}

}  // namespace
}  // namespace xtrain::server::testing
