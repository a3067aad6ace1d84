// A real Prometheus (Debian's `prometheus`, on loopback, started and stopped here) scrapes a real
// xtrain-server with a job in flight (the real xtrain-worker: measured and predicted peaks, probes,
// fidelity), and the series are read back through Prometheus's HTTP API: they exist with sane values
// (the running job measured under its budget, the step counter rising), `promtool check metrics`
// passes on the endpoint's text, and every PromQL expression of the Grafana dashboard and the alert
// rules evaluates without error (the rules loaded by that Prometheus, each evaluated healthy).
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <fcntl.h>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/common/util.h"
#include "tests/server/http_client.h"
#include "tests/server/service_test_util.h"

namespace xtrain::server::testing {
namespace {

namespace v1 = ::xtrain::v1;
using google::protobuf::Value;
using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;

// One sample of an instant vector.
struct Sample {
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Runs `command` through the shell; its exit status and what it printed.
int RunShell(const std::string& command, std::string* output) {
  FILE* pipe = popen(absl::StrCat(command, " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) output->append(buffer, n);
  return pclose(pipe);
}

// Prometheus on 127.0.0.1 scraping one target every second with the given rule files, its data in
// `dir`. Stopped in the destructor (SIGTERM, then SIGKILL), also when the test fails; it dies with
// the test process if that crashes (PR_SET_PDEATHSIG).
class PrometheusProcess {
 public:
  PrometheusProcess(const std::string& dir, int target_port, const std::vector<std::string>& rule_files) : dir_(dir) {
    std::string rules;
    for (const std::string& file : rule_files) absl::StrAppend(&rules, "  - ", file, "\n");
    std::ofstream(dir + "/prometheus.yml") << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                                           << "rule_files:\n" << rules
                                           << "scrape_configs:\n  - job_name: xtrain\n    static_configs:\n"
                                           << "      - targets: ['127.0.0.1:" << target_port << "']\n";
    // Prometheus cannot pick its own port: take a free one, and another if it loses the race for it.
    for (int attempt = 0; attempt < 3 && port_ == 0; ++attempt) Start(FreePort());
  }
  ~PrometheusProcess() { Stop(); }
  PrometheusProcess(const PrometheusProcess&) = delete;
  PrometheusProcess& operator=(const PrometheusProcess&) = delete;

  int port() const { return port_; }
  std::string Log() const {
    absl::StatusOr<std::string> log = ReadFile(dir_ + "/prometheus.log");
    return log.ok() ? *log : "";
  }

  // GET /api/v1/<what>: the answer's `data`, or why not (the error Prometheus gave, a transport error).
  absl::StatusOr<Value> Api(const std::string& what) const {
    absl::StatusOr<HttpResponse> response = HttpGet(port_, absl::StrCat("/api/v1/", what));
    if (!response.ok()) return response.status();
    google::protobuf::Struct answer;
    if (!google::protobuf::util::JsonStringToMessage(response->body, &answer).ok()) {
      return absl::DataLossError(absl::StrCat("not JSON: ", response->body.substr(0, 300)));
    }
    const auto& fields = answer.fields();
    if (!fields.contains("status") || fields.at("status").string_value() != "success") {
      return absl::InvalidArgumentError(absl::StrCat("HTTP ", response->status, ": ", response->body.substr(0, 500)));
    }
    return fields.at("data");
  }

  // An instant query; InvalidArgument with Prometheus's error for a bad expression.
  absl::StatusOr<std::vector<Sample>> Query(const std::string& promql) const {
    absl::StatusOr<Value> data = Api(absl::StrCat("query?query=", UrlEncode(promql)));
    if (!data.ok()) return data.status();
    std::vector<Sample> samples;
    const auto& fields = data->struct_value().fields();
    if (!fields.contains("resultType") || fields.at("resultType").string_value() != "vector") return samples;
    for (const Value& item : fields.at("result").list_value().values()) {
      Sample sample;
      for (const auto& [name, value] : item.struct_value().fields().at("metric").struct_value().fields()) {
        sample.labels[name] = value.string_value();
      }
      const auto& pair = item.struct_value().fields().at("value").list_value().values();
      if (pair.size() == 2) (void)absl::SimpleAtod(pair[1].string_value(), &sample.value);
      samples.push_back(std::move(sample));
    }
    return samples;
  }

  // The single value of `promql` once it has exactly one sample for which `accept` holds, polled
  // every 200 ms for up to `timeout`; NaN (and a test failure) otherwise.
  double WaitForValue(const std::string& promql, const std::function<bool(double)>& accept,
                      std::chrono::seconds timeout = std::chrono::seconds(60)) const {
    const auto deadline = Clock::now() + timeout;
    std::string last = "no answer";
    while (Clock::now() < deadline) {
      absl::StatusOr<std::vector<Sample>> samples = Query(promql);
      if (samples.ok() && samples->size() == 1 && accept(samples->front().value)) return samples->front().value;
      last = samples.ok() ? absl::StrCat(samples->size(), " samples",
                                         samples->empty() ? "" : absl::StrCat(", first ", samples->front().value))
                          : samples.status().ToString();
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    ADD_FAILURE() << promql << ": no acceptable value within " << timeout.count() << " s; last: " << last;
    return std::nan("");
  }

 private:
  void Start(int port) {
    if (port == 0) return;
    std::vector<std::string> args = {XTRAIN_PROMETHEUS,
                                     absl::StrCat("--config.file=", dir_, "/prometheus.yml"),
                                     absl::StrCat("--storage.tsdb.path=", dir_, "/data"),
                                     absl::StrCat("--web.listen-address=127.0.0.1:", port),
                                     "--log.level=warn"};
    const std::string log = dir_ + "/prometheus.log";
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    // Ready: /-/ready answers 200 (it loads its rules and opens its store first).
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return;  // it exited: the port was taken, or worse (the log says)
      }
      absl::StatusOr<HttpResponse> ready = HttpGet(port, "/-/ready", std::chrono::seconds(2));
      if (ready.ok() && ready->status == 200) {
        port_ = port;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    Stop();
  }

  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (Clock::now() > deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    pid_ = -1;
  }

  std::string dir_;
  pid_t pid_ = -1;
  int port_ = 0;
};

// Every string under an "expr" key of a JSON value (the dashboard's targets).
void CollectExprs(const Value& value, std::vector<std::string>* exprs) {
  if (value.has_struct_value()) {
    for (const auto& [key, field] : value.struct_value().fields()) {
      if (key == "expr" && field.has_string_value()) {
        exprs->push_back(field.string_value());
      } else {
        CollectExprs(field, exprs);
      }
    }
  } else if (value.has_list_value()) {
    for (const Value& item : value.list_value().values()) CollectExprs(item, exprs);
  }
}

const std::string kAlertRules = absl::StrCat(XTRAIN_SOURCE_DIR, "/deploy/prometheus/xtrain-alerts.yaml");
const std::string kDashboard = absl::StrCat(XTRAIN_SOURCE_DIR, "/deploy/grafana/xtrain-dashboard.json");

// `expr` with Grafana's variables given values Prometheus takes.
std::string Promql(const std::string& expr) {
  return absl::StrReplaceAll(expr, {{"$__rate_interval", "1m"}, {"$__interval", "15s"}, {"$device", ".*"}, {"$tenant", ".*"}});
}

Value Dashboard() {
  absl::StatusOr<std::string> text = ReadFile(kDashboard);
  EXPECT_TRUE(text.ok()) << text.status();
  Value dashboard;
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(text.ok() ? *text : "{}", &dashboard).ok()) << kDashboard;
  return dashboard;
}

std::vector<std::string> DashboardExprs() {
  std::vector<std::string> exprs;
  CollectExprs(Dashboard(), &exprs);
  for (std::string& expr : exprs) expr = Promql(expr);
  return exprs;
}

double UnixSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// With XTRAIN_METRICS_DUMP_DIR set: the dashboard with each target's range query from `start` to now
// added as "result", written to <dir>/dashboard-data.json (scripts/plot_dashboard.py draws it).
void DumpDashboard(const PrometheusProcess& prometheus, double start, const std::string& dir) {
  Value dashboard = Dashboard();
  const std::string range = absl::StrCat("&start=", static_cast<int64_t>(start), "&end=", static_cast<int64_t>(UnixSeconds()), "&step=2");
  for (Value& panel : *(*dashboard.mutable_struct_value()->mutable_fields())["panels"].mutable_list_value()->mutable_values()) {
    auto& fields = *panel.mutable_struct_value()->mutable_fields();
    if (!fields.contains("targets")) continue;
    for (Value& target : *fields["targets"].mutable_list_value()->mutable_values()) {
      auto& target_fields = *target.mutable_struct_value()->mutable_fields();
      absl::StatusOr<Value> data =
          prometheus.Api(absl::StrCat("query_range?query=", UrlEncode(Promql(target_fields["expr"].string_value())), range));
      EXPECT_TRUE(data.ok()) << data.status();
      if (data.ok()) target_fields["result"] = *data;
    }
  }
  std::string json;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(dashboard, &json).ok());
  ASSERT_TRUE(WriteFileAtomically(absl::StrCat(dir, "/dashboard-data.json"), json).ok());
}

std::vector<std::string> RuleExprs() {
  std::vector<std::string> exprs;
  YAML::Node rules = YAML::LoadFile(kAlertRules);
  for (const auto& group : rules["groups"]) {
    for (const auto& rule : group["rules"]) exprs.push_back(rule["expr"].as<std::string>());
  }
  return exprs;
}

// A job that runs until it is cancelled: the small CNN (width 16, 28x28 images, where the cheapest plan
// sketches its convolutions) with automatic probes, the gradient-fidelity report every 5 steps, no
// checkpoints. (PROBES_FIXED jobs fail in today's worker, which passes the trainer the plan's budget
// beside the fixed probes.)
v1::JobSpec EndlessJob() {
  v1::JobSpec spec = TinyJob(/*max_steps=*/10'000'000, /*epochs=*/100'000);
  spec.set_display_name("metrics");
  spec.mutable_training()->set_fidelity_interval(5);
  spec.mutable_model()->set_width(16);
  spec.mutable_dataset()->set_synthetic_size(28);
  spec.mutable_checkpoint()->set_every_seconds(-1);
  return spec;
}

TEST(Prometheus, ScrapesARunningServerAndEveryDashboardAndAlertExpressionEvaluates) {
  const double start = UnixSeconds();
  ServerOptions options;
  options.devices = {DeviceState{"cpu", int64_t{16} << 20, 1}};  // the job's budget is about 3 MiB
  options.metrics_job_grace_seconds = 5;
  auto test = TestServer::Start(options);
  ASSERT_NE(test, nullptr);
  const int metrics_port = test->server->metrics_port();
  ASSERT_GT(metrics_port, 0);
  v1::TrainingService::Stub& stub = *test->stub;

  // A refused submit (a device this server lacks) and a NOT_FOUND read, for the counters by reason and code.
  v1::JobSpec pinned = EndlessJob();
  pinned.set_device("cuda:7");
  EXPECT_EQ(TrySubmit(stub, pinned).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  {
    grpc::ClientContext context;
    v1::GetJobRequest request;
    request.set_job_id("job-none");
    v1::GetJobResponse response;
    EXPECT_EQ(stub.GetJob(&context, request, &response).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  // The budget of the cheapest plan, which sketches convolutions (XConv).
  v1::JobSpec spec = EndlessJob();
  v1::PlanJobResponse planned;
  ASSERT_TRUE(Plan(stub, spec, &planned).ok());
  ASSERT_GT(planned.plan().minimum_budget_bytes(), 0);
  spec.mutable_memory()->set_budget_bytes(planned.plan().minimum_budget_bytes());
  const std::string id = Submit(stub, spec).job().id();
  ASSERT_FALSE(id.empty());
  const v1::Job running = WaitFor(stub, id, [](const v1::Job& job) {
    return job.state() != v1::QUEUED && (job.state() != v1::RUNNING || job.progress().step() >= 3);
  });
  ASSERT_EQ(running.state(), v1::RUNNING) << running.failure_reason();

  // promtool's lint on the endpoint's text with the job in flight.
  absl::StatusOr<HttpResponse> scraped = HttpGet(metrics_port, "/metrics");
  ASSERT_TRUE(scraped.ok()) << scraped.status();
  EXPECT_THAT(scraped->body, HasSubstr(absl::StrCat("job_id=\"", id, "\"")));
  const std::string scrape_file = test->dir.path() + "/metrics.txt";
  std::ofstream(scrape_file) << scraped->body;
  std::string lint;
  EXPECT_EQ(RunShell(absl::StrCat(XTRAIN_PROMTOOL, " check metrics < ", scrape_file), &lint), 0) << lint;

  TempDir prometheus_dir;
  PrometheusProcess prometheus(prometheus_dir.path(), metrics_port, {kAlertRules});
  ASSERT_GT(prometheus.port(), 0) << "Prometheus did not start; its log:\n" << prometheus.Log();

  // The job's series, scraped; the step counter rising between scrapes.
  const std::string job = absl::StrCat("{job_id=\"", id, "\"}");
  const double step = prometheus.WaitForValue("xtrain_job_step" + job, [](double v) { return v >= 3; });
  prometheus.WaitForValue("xtrain_job_step" + job, [step](double v) { return v > step; });
  const double steps = prometheus.WaitForValue(R"(xtrain_steps_total{device="cpu"})", [](double v) { return v >= 3; });
  prometheus.WaitForValue(R"(xtrain_steps_total{device="cpu"})", [steps](double v) { return v > steps; });

  // Memory: measured under the budget the scheduler reserved, the planner within 5%.
  const v1::Job now = WaitFor(stub, id, [](const v1::Job& j) { return j.progress().measured_peak_bytes() > 0; });
  const double budget = prometheus.WaitForValue("xtrain_job_budget_bytes" + job, [](double v) { return v > 0; });
  EXPECT_EQ(budget, static_cast<double>(now.budget_bytes()));
  const double measured = prometheus.WaitForValue("xtrain_job_measured_peak_bytes" + job, [](double v) { return v > 0; });
  EXPECT_LE(measured, budget);
  const double predicted = prometheus.WaitForValue("xtrain_job_predicted_peak_bytes" + job, [](double v) { return v > 0; });
  EXPECT_LE(predicted, budget);
  const double error = prometheus.WaitForValue("xtrain_job_planner_relative_error" + job, [](double) { return true; });
  EXPECT_LT(std::abs(error), 0.05) << "measured " << measured << " predicted " << predicted;
  EXPECT_NEAR(prometheus.WaitForValue(R"(xtrain_device_measured_bytes{device="cpu"})", [](double v) { return v > 0; }),
              measured, 0.05 * measured);
  prometheus.WaitForValue(R"(xtrain_device_reserved_bytes{device="cpu"})", [budget](double v) { return v == budget; });
  prometheus.WaitForValue(R"(xtrain_device_capacity_bytes{device="cpu"})", [](double v) { return v == (16 << 20); });
  prometheus.WaitForValue(R"(xtrain_device_jobs{device="cpu"})", [](double v) { return v == 1; });

  // Probes of the plan it runs (its sketched layers' fewest and mean) and its fidelity reports.
  int64_t fewest = 0, sum = 0, sketched = 0;
  for (const v1::LayerPlan& layer : now.plan().layers()) {
    if (layer.probes() <= 0) continue;
    fewest = sketched == 0 ? layer.probes() : std::min(fewest, layer.probes());
    sum += layer.probes();
    ++sketched;
  }
  ASSERT_GT(sketched, 0) << now.plan().table();
  prometheus.WaitForValue("xtrain_job_probes_min" + job, [fewest](double v) { return v == fewest; });
  prometheus.WaitForValue("xtrain_job_probes_mean" + job, [&](double v) { return std::abs(v - 1.0 * sum / sketched) < 1e-9; });
  prometheus.WaitForValue("xtrain_job_fidelity_ratio" + job, [](double v) { return v > 0 && std::isfinite(v); });
  prometheus.WaitForValue("xtrain_job_progress_ratio" + job, [](double v) { return v > 0 && v < 1; });
  prometheus.WaitForValue("xtrain_job_samples_per_second" + job, [](double v) { return v > 0; });

  // Jobs, queue, admission, workers, the store, gRPC, build.
  prometheus.WaitForValue(R"(xtrain_jobs{state="running",tenant="local"})", [](double v) { return v == 1; });
  prometheus.WaitForValue("xtrain_queue_length", [](double v) { return v == 0; });
  prometheus.WaitForValue("xtrain_queue_wait_seconds_count", [](double v) { return v == 1; });
  prometheus.WaitForValue(R"(xtrain_admissions_total{device="cpu"})", [](double v) { return v == 1; });
  prometheus.WaitForValue(R"(xtrain_submit_refusals_total{reason="invalid_spec"})", [](double v) { return v == 1; });
  prometheus.WaitForValue(R"(xtrain_worker_starts_total{kind="train"})", [](double v) { return v == 1; });
  // Two plans: the dry run and the submit at another budget.
  prometheus.WaitForValue(R"(xtrain_worker_starts_total{kind="plan"})", [](double v) { return v == 2; });
  prometheus.WaitForValue(R"(xtrain_worker_exits_total{kind="plan",outcome="planned"})", [](double v) { return v == 2; });
  prometheus.WaitForValue(R"(xtrain_store_write_duration_seconds_count{op="insert"})", [](double v) { return v == 1; });
  prometheus.WaitForValue(R"(xtrain_store_write_duration_seconds_count{op="commit"})", [](double v) { return v > 0; });
  prometheus.WaitForValue(R"(xtrain_grpc_requests_total{grpc_method="SubmitJob",grpc_code="OK"})",
                          [](double v) { return v == 1; });
  prometheus.WaitForValue(R"(xtrain_grpc_requests_total{grpc_method="SubmitJob",grpc_code="INVALID_ARGUMENT"})",
                          [](double v) { return v == 1; });
  prometheus.WaitForValue(R"(xtrain_grpc_requests_total{grpc_method="GetJob",grpc_code="NOT_FOUND"})",
                          [](double v) { return v == 1; });
  prometheus.WaitForValue(R"(xtrain_grpc_requests_total{grpc_method="GetJob",grpc_code="OK"})", [](double v) { return v >= 1; });
  prometheus.WaitForValue(R"(xtrain_grpc_request_duration_seconds_count{grpc_method="GetJob"})", [](double v) { return v >= 2; });
  prometheus.WaitForValue("xtrain_build_info", [](double v) { return v == 1; });
  prometheus.WaitForValue(R"(up{job="xtrain"})", [](double v) { return v == 1; });

  // Every expression of the dashboard and the rules evaluates; the rules as loaded are healthy.
  std::vector<std::string> exprs = DashboardExprs();
  EXPECT_GE(exprs.size(), 20u);
  for (const std::string& rule : RuleExprs()) exprs.push_back(rule);
  for (const std::string& expr : exprs) {
    absl::StatusOr<std::vector<Sample>> samples = prometheus.Query(expr);
    EXPECT_TRUE(samples.ok()) << expr << ": " << samples.status();
  }
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  int healthy = 0;
  std::string unhealthy;
  while (Clock::now() < deadline) {
    absl::StatusOr<Value> rules = prometheus.Api("rules");
    ASSERT_TRUE(rules.ok()) << rules.status();
    healthy = 0;
    unhealthy.clear();
    for (const Value& group : rules->struct_value().fields().at("groups").list_value().values()) {
      for (const Value& rule : group.struct_value().fields().at("rules").list_value().values()) {
        const auto& fields = rule.struct_value().fields();
        if (fields.at("health").string_value() == "ok") {
          ++healthy;
        } else {
          absl::StrAppend(&unhealthy, fields.at("name").string_value(), " ", fields.at("health").string_value(), " ",
                          fields.contains("lastError") ? fields.at("lastError").string_value() : "", "; ");
        }
      }
    }
    if (healthy == static_cast<int>(RuleExprs().size())) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  EXPECT_EQ(healthy, static_cast<int>(RuleExprs().size())) << unhealthy;
  // None of the alerts that would mean a broken planner or budget is even pending.
  absl::StatusOr<std::vector<Sample>> alerts =
      prometheus.Query(R"(ALERTS{alertname=~"XtrainJobOverBudget|XtrainPlannerErrorHigh|XtrainServerDown"})");
  ASSERT_TRUE(alerts.ok()) << alerts.status();
  EXPECT_TRUE(alerts->empty()) << alerts->front().labels["alertname"];

  // For the README's picture (XTRAIN_METRICS_DUMP_DIR): a second job queues behind the first for a
  // while, takes its slot when the first is cancelled, and runs a while more; then every panel's data.
  if (const char* dump = std::getenv("XTRAIN_METRICS_DUMP_DIR"); dump != nullptr && *dump != '\0') {
    const auto hold = std::chrono::seconds(60);
    const std::string second = Submit(stub, spec).job().id();
    std::this_thread::sleep_for(hold);  // a stretch of data to draw, not a synchronisation
    v1::CancelJobResponse first_cancelled;
    ASSERT_TRUE(Cancel(stub, id, &first_cancelled).ok());
    WaitFor(stub, second, [](const v1::Job& job) { return job.state() == v1::RUNNING; });
    std::this_thread::sleep_for(hold);
    ASSERT_TRUE(Cancel(stub, second, &first_cancelled).ok());
    WaitForEnd(stub, second);
    std::this_thread::sleep_for(std::chrono::seconds(5));  // the last scrapes
    DumpDashboard(prometheus, start, dump);
    return;
  }

  // Cancelled: off the device at once, its per-job series gone after the grace period.
  v1::CancelJobResponse cancelled;
  ASSERT_TRUE(Cancel(stub, id, &cancelled).ok());
  EXPECT_EQ(WaitForEnd(stub, id).state(), v1::CANCELLED);
  prometheus.WaitForValue(R"(xtrain_device_jobs{device="cpu"})", [](double v) { return v == 0; });
  prometheus.WaitForValue(R"(xtrain_worker_exits_total{kind="train",outcome="cancelled"})", [](double v) { return v == 1; });
  prometheus.WaitForValue(R"(xtrain_jobs{state="cancelled",tenant="local"})", [](double v) { return v == 1; });
  const auto gone_by = Clock::now() + std::chrono::seconds(60);
  std::string text;
  while (Clock::now() < gone_by) {
    absl::StatusOr<HttpResponse> now_scraped = HttpGet(metrics_port, "/metrics");
    ASSERT_TRUE(now_scraped.ok()) << now_scraped.status();
    text = now_scraped->body;
    if (text.find(id) == std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_THAT(text, Not(HasSubstr(id)));
}

}  // namespace
}  // namespace xtrain::server::testing
