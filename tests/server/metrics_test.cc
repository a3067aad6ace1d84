// The service's metrics without a server: the families and their names, the per-job series from a
// run's start to their removal, job states and the queue, gRPC counts by code, and the /metrics
// endpoint on a free port (and a taken one refused).
#include "server/metrics/metrics.h"

#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <prometheus/text_serializer.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/http_client.h"

namespace xtrain::server {
namespace {

namespace v1 = ::xtrain::v1;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::HttpGet;

// What /metrics would serve.
std::string Exposition(const Metrics& metrics) {
  std::vector<prometheus::MetricFamily> families;
  for (const auto& collectable : metrics.Collectables()) {
    for (auto& family : collectable->Collect()) families.push_back(std::move(family));
  }
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

double Value(const std::string& text, const std::string& series) { return testing::SampleValue(text, series); }

v1::StepMetrics Step(int64_t step, int64_t measured, int64_t predicted, std::vector<int64_t> probes, double fidelity) {
  v1::StepMetrics metrics;
  metrics.set_step(step);
  metrics.set_step_seconds(0.02);
  metrics.set_samples_per_second(1600);
  metrics.set_measured_peak_bytes(measured);
  metrics.set_predicted_peak_bytes(predicted);
  for (int64_t r : probes) metrics.add_probes(r);
  metrics.set_fidelity_ratio(fidelity);
  return metrics;
}

// Records something in every family.
void RecordEverything(Metrics& metrics) {
  metrics.SetBuildInfo({{"version", "test"}});
  metrics.AddCallback("xtrain_watchers", "Open WatchJob streams.", Metrics::Kind::kGauge, [] { return 3.0; });
  metrics.AddCallback("xtrain_watch_events_coalesced_total", "Skipped steps.", Metrics::Kind::kCounter, [] { return 7.0; });
  metrics.AddDevice("cpu", 1000);
  metrics.JobStateChanged("t", v1::JOB_STATE_UNSPECIFIED, v1::QUEUED);
  metrics.ObserveQueueWait(2.5);
  metrics.SetOldestQueueWait(1);
  metrics.Admitted("cpu");
  metrics.SubmitRefused("quota");
  metrics.Replanned("shrink");
  metrics.Preempted();
  metrics.JobStarted("job-1", "t", "cpu", 100, 80);
  metrics.JobStep("job-1", Step(5, 90, 80, {0, 4, 8}, 0.5), 10);
  metrics.WorkerStarted("train");
  metrics.WorkerExited("train", "failed");
  metrics.WorkerRestarted("crashed");
  metrics.ObserveStoreWrite(Metrics::StoreOp::kCommit, 0.001);
  metrics.Method("/xtrain.v1.TrainingService/GetJob")->Record(0, 0.0002);
}

TEST(Metrics, EveryFamilyIsAnXtrainNameWithHelpAndCountersEndInTotal) {
  Metrics metrics;
  RecordEverything(metrics);
  const std::string text = Exposition(metrics);
  std::set<std::string> helped, typed;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::vector<std::string> words = absl::StrSplit(line, absl::MaxSplits(' ', 3));
    if (words.size() < 4 || words[0] != "#") continue;
    if (words[1] == "HELP") {
      EXPECT_FALSE(words[3].empty()) << words[2];
      helped.insert(words[2]);
    }
    if (words[1] == "TYPE") {
      typed.insert(words[2]);
      EXPECT_TRUE(absl::StartsWith(words[2], "xtrain_")) << words[2];
      if (words[3] == "counter") {
        EXPECT_TRUE(absl::EndsWith(words[2], "_total")) << words[2];
      }
      if (words[3] == "histogram") {
        EXPECT_TRUE(absl::EndsWith(words[2], "_seconds")) << words[2];
      }
    }
  }
  EXPECT_EQ(helped, typed);
  EXPECT_GE(typed.size(), 35u);  // every family recorded
#ifdef XTRAIN_PROMTOOL
  // promtool's own lint (names, units, HELP) on the same text.
  const std::string path = absl::StrCat(::testing::TempDir(), "/metrics-lint.txt");
  std::ofstream(path) << text;
  FILE* lint = popen(absl::StrCat(XTRAIN_PROMTOOL, " check metrics < ", path, " 2>&1").c_str(), "r");
  ASSERT_NE(lint, nullptr);
  std::string said;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof(buffer), lint)) said.append(buffer, n);
  EXPECT_EQ(pclose(lint), 0) << said;
  std::remove(path.c_str());
#endif
}

TEST(Metrics, JobSeriesFollowARunAndGoWhenRemoved) {
  Metrics metrics;
  metrics.AddDevice("cpu", 1000);
  metrics.JobStarted("job-1", "t", "cpu", 100, 80);
  metrics.JobStep("job-1", Step(5, 90, 80, {0, 4, 8}, 0.5), 10);
  metrics.JobStep("job-1", Step(6, 85, 80, {0, 4, 8}, 0), 10);  // no telemetry: fidelity kept
  const std::string job = R"({device="cpu",job_id="job-1",tenant="t"})";
  std::string text = Exposition(metrics);
  EXPECT_EQ(Value(text, "xtrain_job_step" + job), 6);
  EXPECT_DOUBLE_EQ(Value(text, "xtrain_job_progress_ratio" + job), 0.6);
  EXPECT_EQ(Value(text, "xtrain_job_samples_per_second" + job), 1600);
  EXPECT_EQ(Value(text, "xtrain_job_budget_bytes" + job), 100);
  EXPECT_EQ(Value(text, "xtrain_job_measured_peak_bytes" + job), 90);  // the largest step peak
  EXPECT_EQ(Value(text, "xtrain_job_predicted_peak_bytes" + job), 80);
  EXPECT_DOUBLE_EQ(Value(text, "xtrain_job_planner_relative_error" + job), 10.0 / 80);  // the largest step's
  EXPECT_EQ(Value(text, "xtrain_job_probes_min" + job), 4);  // exact layers (0) are not probes
  EXPECT_EQ(Value(text, "xtrain_job_probes_mean" + job), 6);
  EXPECT_EQ(Value(text, "xtrain_job_fidelity_ratio" + job), 0.5);
  EXPECT_EQ(Value(text, R"(xtrain_device_capacity_bytes{device="cpu"})"), 1000);
  EXPECT_EQ(Value(text, R"(xtrain_device_reserved_bytes{device="cpu"})"), 100);
  EXPECT_EQ(Value(text, R"(xtrain_device_planned_bytes{device="cpu"})"), 80);
  EXPECT_EQ(Value(text, R"(xtrain_device_measured_bytes{device="cpu"})"), 90);
  EXPECT_EQ(Value(text, R"(xtrain_device_jobs{device="cpu"})"), 1);
  EXPECT_EQ(Value(text, R"(xtrain_steps_total{device="cpu"})"), 2);
  EXPECT_EQ(Value(text, R"(xtrain_step_duration_seconds_count{device="cpu"})"), 2);

  metrics.JobPlanned("job-1", 70, 60);  // shrunk
  text = Exposition(metrics);
  EXPECT_EQ(Value(text, "xtrain_job_budget_bytes" + job), 70);
  EXPECT_EQ(Value(text, R"(xtrain_device_planned_bytes{device="cpu"})"), 60);

  metrics.JobStopped("job-1");  // off the device, its series kept for a last scrape
  text = Exposition(metrics);
  EXPECT_EQ(Value(text, R"(xtrain_device_jobs{device="cpu"})"), 0);
  EXPECT_EQ(Value(text, R"(xtrain_device_reserved_bytes{device="cpu"})"), 0);
  EXPECT_EQ(Value(text, "xtrain_job_step" + job), 6);
  EXPECT_THAT(metrics.JobsWithSeries(), ::testing::ElementsAre("job-1"));

  metrics.RemoveJob("job-1");
  text = Exposition(metrics);
  EXPECT_THAT(text, Not(HasSubstr("job-1")));
  EXPECT_TRUE(metrics.JobsWithSeries().empty());
  metrics.JobStep("job-1", Step(7, 85, 80, {}, 0), 10);  // a late step of a removed job adds nothing back
  EXPECT_THAT(Exposition(metrics), Not(HasSubstr("job-1")));
}

TEST(Metrics, JobStatesAndTheQueueFollowTransitions) {
  Metrics metrics;
  metrics.JobStateChanged("a", v1::JOB_STATE_UNSPECIFIED, v1::QUEUED);
  metrics.JobStateChanged("a", v1::QUEUED, v1::RUNNING);
  metrics.JobStateChanged("b", v1::JOB_STATE_UNSPECIFIED, v1::QUEUED);
  metrics.JobStateChanged("b", v1::JOB_STATE_UNSPECIFIED, v1::SUCCEEDED);  // loaded from the store
  std::string text = Exposition(metrics);
  EXPECT_EQ(Value(text, R"(xtrain_jobs{state="queued",tenant="a"})"), 0);
  EXPECT_EQ(Value(text, R"(xtrain_jobs{state="running",tenant="a"})"), 1);
  EXPECT_EQ(Value(text, R"(xtrain_jobs{state="queued",tenant="b"})"), 1);
  EXPECT_EQ(Value(text, R"(xtrain_jobs{state="succeeded",tenant="b"})"), 1);
  EXPECT_EQ(Value(text, "xtrain_queue_length"), 1);
  metrics.JobStateChanged("a", v1::RUNNING, v1::QUEUED);  // a retry
  metrics.JobStateChanged("b", v1::QUEUED, v1::CANCELLED);
  text = Exposition(metrics);
  EXPECT_EQ(Value(text, "xtrain_queue_length"), 1);
  EXPECT_EQ(Value(text, R"(xtrain_jobs{state="cancelled",tenant="b"})"), 1);
  EXPECT_EQ(Value(text, R"(xtrain_jobs{state="running",tenant="a"})"), 0);
}

TEST(Metrics, GrpcCallsCountByMethodAndCodeAndUnaryOnesAreTimed) {
  Metrics metrics;
  Metrics::RpcMethod* get = metrics.Method("/xtrain.v1.TrainingService/GetJob");
  EXPECT_EQ(metrics.Method("/xtrain.v1.TrainingService/GetJob"), get);  // one handle per method
  get->Record(0, 0.0003);
  get->Record(0, 0.0004);
  get->Record(5, 0.0001);
  metrics.Method("/xtrain.v1.TrainingService/WatchJob")->Record(14, -1);  // a stream: counted, not timed
  const std::string text = Exposition(metrics);
  const std::string get_job = R"(grpc_method="GetJob",grpc_service="xtrain.v1.TrainingService")";
  EXPECT_EQ(Value(text, absl::StrCat(R"(xtrain_grpc_requests_total{grpc_code="OK",)", get_job, "}")), 2);
  EXPECT_EQ(Value(text, absl::StrCat(R"(xtrain_grpc_requests_total{grpc_code="NOT_FOUND",)", get_job, "}")), 1);
  EXPECT_EQ(Value(text, absl::StrCat("xtrain_grpc_request_duration_seconds_count{", get_job, "}")), 3);
  EXPECT_EQ(Value(text, R"(xtrain_grpc_requests_total{grpc_code="UNAVAILABLE",grpc_method="WatchJob",grpc_service="xtrain.v1.TrainingService"})"), 1);
  EXPECT_EQ(Value(text, R"(xtrain_grpc_request_duration_seconds_count{grpc_method="WatchJob",grpc_service="xtrain.v1.TrainingService"})"), 0);
}

// Recording from several threads while /metrics is read, as gRPC's threads, the scheduler and
// scrapes do at once: every call and step is counted once. Under ThreadSanitizer (make
// sanitize-tsan-ci) this checks the lock-free gRPC path, each code's first use racing, and the lock
// around the per-job series.
TEST(Metrics, ConcurrentRecordingAndScrapesCountEveryCall) {
  Metrics metrics;
  metrics.AddDevice("cpu", 1000);
  metrics.JobStarted("job-1", "t", "cpu", 100, 80);
  constexpr int kThreads = 4;
  constexpr int kCalls = 3000;
  std::atomic<bool> done{false};
  std::atomic<int> scrapes{0};
  std::thread scraper([&] {
    while (!done.load()) {
      Exposition(metrics);
      scrapes.fetch_add(1);
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&metrics, t] {
      for (int i = 0; i < kCalls; ++i) {
        metrics.Method("/xtrain.v1.TrainingService/GetJob")->Record(i % 3 == 0 ? 5 : 0, 0.0001);
        if (t == 0) metrics.JobStep("job-1", Step(i + 1, 90, 80, {4}, 0.5), kCalls);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  done.store(true);
  scraper.join();
  EXPECT_GT(scrapes.load(), 0);
  const std::string text = Exposition(metrics);
  const std::string get_job = R"(grpc_method="GetJob",grpc_service="xtrain.v1.TrainingService")";
  EXPECT_EQ(Value(text, absl::StrCat(R"(xtrain_grpc_requests_total{grpc_code="NOT_FOUND",)", get_job, "}")),
            kThreads * (kCalls / 3));
  EXPECT_EQ(Value(text, absl::StrCat(R"(xtrain_grpc_requests_total{grpc_code="OK",)", get_job, "}")),
            kThreads * (kCalls - kCalls / 3));
  EXPECT_EQ(Value(text, absl::StrCat("xtrain_grpc_request_duration_seconds_count{", get_job, "}")), kThreads * kCalls);
  EXPECT_EQ(Value(text, R"(xtrain_steps_total{device="cpu"})"), kCalls);
  EXPECT_EQ(Value(text, R"(xtrain_job_step{device="cpu",job_id="job-1",tenant="t"})"), kCalls);
}

TEST(MetricsEndpoint, ServesOnAFreePortAndRefusesATakenOne) {
  Metrics metrics;
  RecordEverything(metrics);
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint = MetricsEndpoint::Start("127.0.0.1:0", metrics);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  const int port = (*endpoint)->port();
  ASSERT_GT(port, 0);
  absl::StatusOr<testing::HttpResponse> response = HttpGet(port, "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(Value(response->body, R"(xtrain_build_info{version="test"})"), 1);
  EXPECT_EQ(Value(response->body, "xtrain_watchers"), 3);  // read at the scrape

  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> second =
      MetricsEndpoint::Start(absl::StrCat("127.0.0.1:", port), metrics);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("--metrics-port"));
}

}  // namespace
}  // namespace xtrain::server
