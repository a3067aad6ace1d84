// xtrain-server's configuration: flags over XTRAIN_* variables over a YAML file over defaults, every
// malformed value refused with a sentence naming the flag, and the watch thresholds reaching the hub.
#include "server/api/server_config.h"

#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/api/server.h"

namespace xtrain::server {
namespace {

using ::testing::HasSubstr;

// Sets XTRAIN_* variables for one test and removes them at its end, passed or failed.
class ScopedEnv {
 public:
  ScopedEnv& Set(const std::string& name, const std::string& value) {
    setenv(name.c_str(), value.c_str(), 1);
    names_.push_back(name);
    return *this;
  }
  ~ScopedEnv() {
    for (const std::string& name : names_) unsetenv(name.c_str());
  }

 private:
  std::vector<std::string> names_;
};

// A folder of its own under the test's temporary directory, removed at the end.
class ScopedDir {
 public:
  ScopedDir() {
    std::string pattern = absl::StrCat(::testing::TempDir(), "/xtrain-config-XXXXXX");
    path_ = mkdtemp(pattern.data());
  }
  ~ScopedDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string Write(const std::string& name, const std::string& text) const {
    std::string file = absl::StrCat(path_, "/", name);
    std::ofstream(file) << text;
    return file;
  }

 private:
  std::string path_;
};

TEST(ServerConfig, DefaultsRunOnOneMachine) {
  absl::StatusOr<ServerCommand> command = LoadServerCommand({});
  ASSERT_TRUE(command.ok()) << command.status();
  const ServerOptions& o = command->options;
  EXPECT_EQ(o.listen, "127.0.0.1:50051");
  EXPECT_EQ(o.data_dir, "xtrain-data");
  EXPECT_EQ(o.data_roots, std::vector<std::string>{"/usr/share/datasets"});
  EXPECT_TRUE(o.devices.empty());  // the server adds one cpu device
  EXPECT_EQ(o.watch_coalesce_events, 16);
  EXPECT_EQ(o.watch_coalesce_ms, 50);
  EXPECT_EQ(o.watch_step_rate, 10000);
  EXPECT_EQ(o.tokens_file, "");  // no authentication
  EXPECT_EQ(o.metrics_port, 9464);  // Prometheus's exporter convention
  EXPECT_EQ(command->log_level, "info");
  EXPECT_EQ(command->log_format, LogFormat::kText);  // for people, unless asked
  EXPECT_FALSE(command->help);
}

TEST(ServerConfig, FlagsBeatVariablesWhichBeatTheFile) {
  ScopedDir dir;
  std::string yaml = dir.Write("server.yaml",
                               "listen: 0.0.0.0:1\n"
                               "grace_seconds: 10\n"
                               "max_attempts: 7\n"
                               "watch_coalesce_ms: 20\n"
                               "watch_step_rate: 500\n"
                               "data_roots: [/a, /b]\n"
                               "devices:\n"
                               "  - {name: cpu, capacity: 1GiB, slots: 2}\n"
                               "  - cuda:1:capacity=2GiB\n");
  ScopedEnv env;
  env.Set("XTRAIN_LISTEN", "0.0.0.0:2").Set("XTRAIN_MAX_ATTEMPTS", "5").Set("XTRAIN_WATCH_COALESCE_EVENTS", "4");
  env.Set("XTRAIN_TOKENS", "/etc/xtrain/tokens.txt");
  absl::StatusOr<ServerCommand> command = LoadServerCommand({"--config", yaml, "--listen", "127.0.0.1:0", "--log-level=warn"});
  ASSERT_TRUE(command.ok()) << command.status();
  const ServerOptions& o = command->options;
  EXPECT_EQ(o.listen, "127.0.0.1:0");         // flag over variable and file
  EXPECT_EQ(o.max_attempts, 5);               // variable over file
  EXPECT_EQ(o.watch_coalesce_events, 4);      // variable over default
  EXPECT_EQ(o.grace_seconds, 10);             // file over default
  EXPECT_EQ(o.watch_coalesce_ms, 20);
  EXPECT_EQ(o.watch_step_rate, 500);
  EXPECT_EQ(o.tokens_file, "/etc/xtrain/tokens.txt");
  EXPECT_EQ(o.data_roots, (std::vector<std::string>{"/a", "/b"}));
  ASSERT_EQ(o.devices.size(), 2u);
  EXPECT_EQ(o.devices[0].name, "cpu");
  EXPECT_EQ(o.devices[0].capacity_bytes, int64_t{1} << 30);
  EXPECT_EQ(o.devices[0].slots, 2);
  EXPECT_EQ(o.devices[1].name, "cuda:1");
  EXPECT_EQ(o.devices[1].capacity_bytes, int64_t{2} << 30);
  EXPECT_EQ(o.devices[1].slots, 1);
  EXPECT_EQ(command->log_level, "warn");
}

TEST(ServerConfig, RepeatedFlagsAndListVariablesCollect) {
  ScopedEnv env;
  env.Set("XTRAIN_DATA_ROOTS", "/x:/y").Set("XTRAIN_DEVICES", "cpu:capacity=1GiB,cpu:capacity=3GiB:slots=3");
  absl::StatusOr<ServerCommand> command = LoadServerCommand({});
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->options.data_roots, (std::vector<std::string>{"/x", "/y"}));
  ASSERT_EQ(command->options.devices.size(), 2u);
  EXPECT_EQ(command->options.devices[1].capacity_bytes, int64_t{3} << 30);
  EXPECT_EQ(command->options.devices[1].slots, 3);

  command = LoadServerCommand({"--data-root", "/p", "--data-root", "/q", "--device", "cpu:slots=2"});
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->options.data_roots, (std::vector<std::string>{"/p", "/q"}));
  ASSERT_EQ(command->options.devices.size(), 1u);
  EXPECT_GT(command->options.devices[0].capacity_bytes, 0);  // no capacity given: half the memory
}

TEST(ServerConfig, MalformedSettingsAreRefusedNamingThem) {
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  const Case cases[] = {
      {{"--watch-coalesce-ms", "-1"}, "--watch-coalesce-ms"},
      {{"--watch-coalesce-ms", "soon"}, "--watch-coalesce-ms 'soon' is not a number"},
      {{"--watch-coalesce-events", "0"}, "--watch-coalesce-events is 0"},
      {{"--watch-step-rate", "-5"}, "--watch-step-rate is -5; use 0 (no limit) or more"},
      {{"--quota-watchers", "-1"}, "--quota-watchers is -1; use 0 (no limit) or more"},
      {{"--quota-submits-per-minute", "-2"}, "--quota-submits-per-minute is -2"},
      {{"--quota-budget-bytes", "much"}, "--quota-budget-bytes"},
      {{"--max-attempts", "0"}, "--max-attempts"},
      {{"--max-attempts", "3.5"}, "is not an integer"},
      {{"--grace-seconds", "-2"}, "--grace-seconds"},
      {{"--max-upload-bytes", "lots"}, "--max-upload-bytes"},
      {{"--device", "gpu:0"}, "the name must be cpu or cuda:N"},
      {{"--device", "cpu:slots=0"}, "slots must be a positive integer"},
      {{"--device", "cpu:colour=red"}, "unknown field 'colour'"},
      {{"--no-such-flag", "1"}, "unknown flag --no-such-flag"},
      {{"--listen"}, "--listen needs a value"},
      {{"--metrics-port", "70000"}, "--metrics-port is 70000; use a port, 0 to 65535"},
      {{"--metrics-port", "-1"}, "--metrics-port is -1"},
      {{"--metrics-port", "http"}, "--metrics-port 'http' is not an integer"},
      {{"--metrics-job-grace-seconds", "-1"}, "--metrics-job-grace-seconds is -1; use 0 or more seconds"},
      {{"serve"}, "unexpected argument 'serve'"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<ServerCommand> command = LoadServerCommand(c.args);
    ASSERT_FALSE(command.ok()) << c.args[0];
    EXPECT_EQ(command.status().code(), absl::StatusCode::kInvalidArgument) << c.args[0];
    EXPECT_THAT(std::string(command.status().message()), HasSubstr(c.says)) << c.args[0];
  }

  ScopedDir dir;
  absl::StatusOr<ServerCommand> command = LoadServerCommand({"--config", dir.Write("bad.yaml", "listen: [1\n")});
  ASSERT_FALSE(command.ok());
  EXPECT_THAT(std::string(command.status().message()), HasSubstr("bad.yaml"));
  command = LoadServerCommand({"--config", dir.Write("unknown.yaml", "colour: red\n")});
  ASSERT_FALSE(command.ok());
  EXPECT_THAT(std::string(command.status().message()), HasSubstr("unknown setting 'colour'"));
  command = LoadServerCommand({"--config", dir.Write("list.yaml", "- listen\n")});
  ASSERT_FALSE(command.ok());
  EXPECT_THAT(std::string(command.status().message()), HasSubstr("must hold a mapping"));
}

TEST(ServerConfig, ByteSizesAndDevicesParse) {
  EXPECT_EQ(*ParseBytes("4GiB"), int64_t{4} << 30);
  EXPECT_EQ(*ParseBytes("512MiB"), int64_t{512} << 20);
  EXPECT_EQ(*ParseBytes("1.5G"), 1'500'000'000);
  EXPECT_EQ(*ParseBytes("1000000"), 1'000'000);
  EXPECT_EQ(*ParseBytes(" 8 KiB "), 8192);
  EXPECT_FALSE(ParseBytes("-1").ok());
  EXPECT_FALSE(ParseBytes("GiB").ok());
  EXPECT_FALSE(ParseBytes("four").ok());

  absl::StatusOr<DeviceState> device = ParseDevice("cuda:3:capacity=80GiB:slots=4");
  ASSERT_TRUE(device.ok()) << device.status();
  EXPECT_EQ(device->name, "cuda:3");
  EXPECT_EQ(device->capacity_bytes, int64_t{80} << 30);
  EXPECT_EQ(device->slots, 4);
  EXPECT_FALSE(ParseDevice("").ok());
  EXPECT_FALSE(ParseDevice("cpu:capacity=big").ok());
}

TEST(ServerConfig, HelpListsEveryFlag) {
  absl::StatusOr<ServerCommand> command = LoadServerCommand({"--help"});
  ASSERT_TRUE(command.ok());
  EXPECT_TRUE(command->help);
  const std::string usage = ServerUsage();
  for (const char* flag : {"--listen", "--data-dir", "--data-root", "--device", "--worker", "--grace-seconds",
                           "--max-attempts", "--max-concurrent-plans", "--starvation-seconds", "--checkpoint-seconds",
                           "--threads-per-job", "--max-upload-bytes", "--port-file", "--log-level", "--log-format", "--config",
                           "--watch-coalesce-events", "--watch-coalesce-ms", "--watch-step-rate", "--tokens",
                           "--tls-cert", "--tls-key", "--tls-client-ca", "--quota-queued-jobs", "--quota-budget-bytes",
                           "--quota-submits-per-minute", "--quota-watchers", "--quota-artifact-bytes",
                           "--metrics-port", "--metrics-job-grace-seconds", "--store-url", "--replica-id",
                           "--lease-seconds"}) {
    EXPECT_THAT(usage, HasSubstr(flag));
  }
}

TEST(ServerConfig, MetricsSettingsComeFromTheFileTheVariableOrTheFlag) {
  ScopedDir dir;
  const std::string yaml = dir.Write("server.yaml", "metrics_port: 9100\nmetrics_job_grace_seconds: 30\n");
  absl::StatusOr<ServerCommand> command = LoadServerCommand({"--config", yaml});
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->options.metrics_port, 9100);
  EXPECT_EQ(command->options.metrics_job_grace_seconds, 30);
  EXPECT_EQ(LoadServerCommand({})->options.metrics_job_grace_seconds, 120);
  ScopedEnv env;
  env.Set("XTRAIN_METRICS_PORT", "9200");
  command = LoadServerCommand({"--config", yaml});
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->options.metrics_port, 9200);  // variable over file
  command = LoadServerCommand({"--config", yaml, "--metrics-port", "0"});
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->options.metrics_port, 0);  // flag over variable: a free port
}

TEST(ServerConfig, TheSharedStoreAndTheReplicaComeFromTheFileTheVariableOrTheFlag) {
  absl::StatusOr<ServerCommand> defaults = LoadServerCommand({});
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->options.store_url, "");  // the SQLite file under --data-dir
  EXPECT_EQ(defaults->options.replica_id, "");  // the host name, filled in at start
  EXPECT_EQ(defaults->options.lease_seconds, 10);
  ScopedDir dir;
  const std::string yaml = dir.Write("server.yaml", "store_url: postgresql://db/x\nreplica_id: from-file\nlease_seconds: 6\n");
  ScopedEnv env;
  env.Set("XTRAIN_STORE_URL", "postgresql://xtrain:secret@db:5432/jobs").Set("XTRAIN_REPLICA_ID", "pod-7");
  absl::StatusOr<ServerCommand> command = LoadServerCommand({"--config", yaml, "--lease-seconds", "4.5"});
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->options.store_url, "postgresql://xtrain:secret@db:5432/jobs");  // variable over file
  EXPECT_EQ(command->options.replica_id, "pod-7");
  EXPECT_EQ(command->options.lease_seconds, 4.5);  // flag over file
  for (const auto& [args, message] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--lease-seconds", "0.5"}, "--lease-seconds is 0.5; use 1 second or more"},
           {{"--replica-id", ""}, "--replica-id '' must be 1 to 200 characters"}}) {
    absl::StatusOr<ServerCommand> bad = LoadServerCommand(args);
    ASSERT_FALSE(bad.ok()) << args[0];
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(bad.status().message()), HasSubstr(message));
  }
}

TEST(ServerConfig, LogSettingsComeFromTheFileTheVariableOrTheFlag) {
  ScopedDir dir;
  const std::string yaml = dir.Write("server.yaml", "log_format: json\nlog_level: debug\n");
  absl::StatusOr<ServerCommand> command = LoadServerCommand({"--config", yaml});
  ASSERT_TRUE(command.ok()) << command.status();
  EXPECT_EQ(command->log_format, LogFormat::kJson);
  EXPECT_EQ(command->log_level, "debug");
  {
    ScopedEnv env;
    env.Set("XTRAIN_LOG_FORMAT", "text").Set("XTRAIN_LOG_LEVEL", "error");
    command = LoadServerCommand({"--config", yaml});
    ASSERT_TRUE(command.ok()) << command.status();
    EXPECT_EQ(command->log_format, LogFormat::kText);  // variable over file
    EXPECT_EQ(command->log_level, "error");
    command = LoadServerCommand({"--config", yaml, "--log-format", "json", "--log-level=warn"});
    ASSERT_TRUE(command.ok()) << command.status();
    EXPECT_EQ(command->log_format, LogFormat::kJson);  // flag over variable
    EXPECT_EQ(command->log_level, "warn");
  }
  // A misspelt level or format is refused with the names that work (spdlog would read an unknown level
  // as "off" and the server would log nothing).
  command = LoadServerCommand({"--log-format", "yaml"});
  ASSERT_FALSE(command.ok());
  EXPECT_EQ(command.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(command.status().message(), HasSubstr("--log-format"));
  EXPECT_THAT(command.status().message(), HasSubstr("text or json"));
  ScopedEnv env;
  env.Set("XTRAIN_LOG_LEVEL", "verbose");
  command = LoadServerCommand({});
  ASSERT_FALSE(command.ok());
  EXPECT_THAT(command.status().message(), HasSubstr("--log-level"));
  EXPECT_THAT(command.status().message(), HasSubstr("warn"));
}

TEST(ServerConfig, QuotasAndSecurityFilesParse) {
  absl::StatusOr<ServerCommand> command = LoadServerCommand(
      {"--quota-queued-jobs", "5", "--quota-budget-bytes", "2GiB", "--quota-submits-per-minute", "30",
       "--quota-watchers", "100", "--quota-artifact-bytes", "10GiB", "--tls-cert", "c.pem", "--tls-key", "k.pem",
       "--tls-client-ca", "ca.pem"});
  ASSERT_TRUE(command.ok()) << command.status();
  const ServerOptions& o = command->options;
  EXPECT_EQ(o.quota_queued_jobs, 5);
  EXPECT_EQ(o.quota_budget_bytes, int64_t{2} << 30);
  EXPECT_EQ(o.quota_submits_per_minute, 30);
  EXPECT_EQ(o.quota_watchers, 100);
  EXPECT_EQ(o.quota_artifact_bytes, int64_t{10} << 30);
  EXPECT_EQ(o.tls_cert_file, "c.pem");
  EXPECT_EQ(o.tls_key_file, "k.pem");
  EXPECT_EQ(o.tls_client_ca_file, "ca.pem");
  absl::StatusOr<ServerCommand> defaults = LoadServerCommand({});
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->options.quota_queued_jobs, 0);  // no limits unless set
  EXPECT_EQ(defaults->options.quota_watchers, 0);
}

// The watch thresholds reach the server's hub (a real server on port 0; no job runs, so no worker starts).
TEST(ServerConfig, WatchThresholdsReachTheHub) {
  ScopedDir dir;
  absl::StatusOr<ServerCommand> command =
      LoadServerCommand({"--listen", "127.0.0.1:0", "--data-dir", dir.path() + "/data", "--watch-coalesce-events", "5",
                         "--watch-coalesce-ms", "0", "--watch-step-rate", "1500", "--device", "cpu:capacity=1GiB",
                         "--metrics-port", "0"});
  ASSERT_TRUE(command.ok()) << command.status();
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(command->options);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_GT((*server)->port(), 0);
  EXPECT_GT((*server)->metrics_port(), 0);  // --metrics-port 0: a free one, bound
  EXPECT_NE((*server)->metrics_port(), 9464);
  EXPECT_EQ((*server)->hub().options().coalesce_lag, 5);
  EXPECT_EQ((*server)->hub().options().coalesce_age, std::chrono::steady_clock::duration::zero());
  EXPECT_EQ((*server)->hub().options().step_rate, 1500);
  (*server)->Shutdown(0);
}

// A metrics port another process holds stops the server at start, naming the flag.
TEST(ServerConfig, ATakenMetricsPortStopsTheServerSayingWhich) {
  ScopedDir dir;
  absl::StatusOr<ServerCommand> first =
      LoadServerCommand({"--listen", "127.0.0.1:0", "--data-dir", dir.path() + "/a", "--metrics-port", "0"});
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::unique_ptr<Server>> holder = Server::Start(first->options);
  ASSERT_TRUE(holder.ok()) << holder.status();
  ServerOptions second = first->options;
  second.data_dir = dir.path() + "/b";
  second.metrics_port = (*holder)->metrics_port();
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(second);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("--metrics-port"));
  (*holder)->Shutdown(0);
}

}  // namespace
}  // namespace xtrain::server
