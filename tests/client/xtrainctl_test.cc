// xtrainctl: spec files and flags, byte sizes, text output, exit codes; the subcommands against a
// fake TrainingService (tests/client/fake_server.h). The real server: the integration tests.
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/output.h"
#include "client/spec_file.h"
#include "client/xtrainctl_commands.h"
#include "server/common/mutex.h"
#include "tests/client/fake_server.h"

namespace xtrain::client {
namespace {
namespace v1 = ::xtrain::v1;
using google::protobuf::util::MessageDifferencer;
using testing::FakeServer;
using testing::FakeState;
using testing::StateEvent;
using testing::StepEvent;

constexpr char kTinyYaml[] = R"(# a comment
display_name: tiny
model: {name: small_cnn, width: 4, freeze: [features.0]}
dataset:
  kind: synthetic
  synthetic_examples: 256
  synthetic_size: 16
training:
  batch_size: 32
  max_steps: 6
  lr: 0.05
  seed: 7
memory:
  budget_bytes: 64MiB
  probes: auto
  min_fidelity: 0.5
priority: -3
labels: {team: vision, version: 2}
)";

// The same spec in the proto's JSON mapping (lowerCamelCase and proto names both allowed).
constexpr char kTinyJson[] = R"({
  "displayName": "tiny",
  "model": {"name": "small_cnn", "width": 4, "freeze": ["features.0"]},
  "dataset": {"kind": "SYNTHETIC", "synthetic_examples": "256", "syntheticSize": 16},
  "training": {"batchSize": 32, "maxSteps": 6, "lr": 0.05, "seed": "7"},
  "memory": {"budgetBytes": "67108864", "probes": "PROBES_AUTO", "minFidelity": 0.5},
  "priority": -3,
  "labels": {"team": "vision", "version": "2"}
})";

v1::JobSpec TinySpec() {
  v1::JobSpec spec;
  spec.set_display_name("tiny");
  spec.mutable_model()->set_name("small_cnn");
  spec.mutable_model()->set_width(4);
  spec.mutable_model()->add_freeze("features.0");
  spec.mutable_dataset()->set_kind(v1::DatasetSpec::SYNTHETIC);
  spec.mutable_dataset()->set_synthetic_examples(256);
  spec.mutable_dataset()->set_synthetic_size(16);
  spec.mutable_training()->set_batch_size(32);
  spec.mutable_training()->set_max_steps(6);
  spec.mutable_training()->set_lr(0.05);
  spec.mutable_training()->set_seed(7);
  spec.mutable_memory()->set_budget_bytes(64 << 20);
  spec.mutable_memory()->set_min_fidelity(0.5);
  spec.set_priority(-3);
  (*spec.mutable_labels())["team"] = "vision";
  (*spec.mutable_labels())["version"] = "2";
  return spec;
}

void ExpectSameSpec(const v1::JobSpec& actual, const v1::JobSpec& expected) {
  std::string differences;
  MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&differences);
  EXPECT_TRUE(differencer.Compare(actual, expected)) << differences;
}

// Each test may run xtrainctl in this process against a fake server of its own.
class Xtrainctl : public ::testing::Test {
 protected:
  void SetUp() override {
    state_ = std::make_shared<FakeState>();
    server_ = FakeServer::Start(state_);
    ASSERT_NE(server_, nullptr);
  }

  int Run(std::vector<std::string> args, Terminal terminal = {}) {
    args.push_back("--server");
    args.push_back(server_->address());
    out_.str("");
    err_.str("");
    return RunXtrainctl(args, out_, err_, terminal);
  }

  void AddJob(const std::string& id, v1::JobState final, int steps) {
    ::xtrain::server::MutexLock lock(&state_->mutex);
    v1::Job job;
    job.set_id(id);
    job.set_state(final);
    if (final == v1::FAILED) job.set_failure_reason("the worker ran out of its budget: lower the batch size");
    (*job.mutable_final_metrics())["accuracy"] = 0.75;
    job.mutable_progress()->set_step(steps);
    job.set_weights_artifact_id(final == v1::SUCCEEDED ? "art-1" : "");
    state_->jobs[id] = job;
    std::vector<v1::JobEvent>& log = state_->logs[id];
    log.push_back(StateEvent(1, v1::QUEUED, v1::RUNNING));
    for (int step = 1; step <= steps; ++step) log.push_back(StepEvent(step + 1, step, steps, 1.0));
    log.push_back(StateEvent(steps + 2, v1::RUNNING, final, job.failure_reason()));
    state_->ended[id] = true;
  }

  std::shared_ptr<FakeState> state_;
  std::unique_ptr<FakeServer> server_;
  std::ostringstream out_, err_;
};

TEST_F(Xtrainctl, SpecFromYaml) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpec(kTinyYaml, SpecFormat::kYaml, "tiny.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ExpectSameSpec(*spec, TinySpec());
}

TEST_F(Xtrainctl, SpecFromJsonInTheProtosMapping) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpec(kTinyJson, SpecFormat::kJson, "tiny.json");
  ASSERT_TRUE(spec.ok()) << spec.status();
  ExpectSameSpec(*spec, TinySpec());
}

TEST_F(Xtrainctl, YamlAcceptsEnumNamesInAnyCaseWithOrWithoutPrefix) {
  for (const char* probes : {"exact", "EXACT", "PROBES_EXACT", "probes_exact", "2"}) {
    absl::StatusOr<v1::JobSpec> spec =
        ParseJobSpec(absl::StrCat("memory: {probes: ", probes, "}\ndataset: {kind: Mnist}"), SpecFormat::kYaml, "s");
    ASSERT_TRUE(spec.ok()) << probes << ": " << spec.status();
    EXPECT_EQ(spec->memory().probes(), v1::MemorySpec::PROBES_EXACT) << probes;
    EXPECT_EQ(spec->dataset().kind(), v1::DatasetSpec::MNIST);
  }
}

TEST_F(Xtrainctl, YamlNamesAnUnknownFieldAndItsLine) {
  const absl::StatusOr<v1::JobSpec> spec =
      ParseJobSpec("model:\n  name: small_cnn\ntraining:\n  batch_size: 32\n  max_stepz: 4\n", SpecFormat::kYaml, "job.yaml");
  ASSERT_TRUE(absl::IsInvalidArgument(spec.status())) << spec.status();
  const std::string message(spec.status().message());
  EXPECT_TRUE(absl::StrContains(message, "job.yaml line 5")) << message;
  EXPECT_TRUE(absl::StrContains(message, "'max_stepz'")) << message;
  EXPECT_TRUE(absl::StrContains(message, "max_steps")) << message;  // the fields it could have meant
}

TEST_F(Xtrainctl, YamlNamesAFieldWithAValueOfTheWrongKind) {
  struct Case {
    const char* yaml;
    const char* field;
  };
  const Case cases[] = {
      {"training:\n  batch_size: many\n", "training.batch_size"},
      {"memory:\n  probes: sometimes\n", "memory.probes"},
      {"model:\n  no_batch_norm: maybe\n", "model.no_batch_norm"},
      {"training: {lr: fast}\n", "training.lr"},
      {"model: small_cnn\n", "model"},
      {"priority: 3000000000\n", "priority"},
      {"memory: {budget_bytes: 12 parsecs}\n", "memory.budget_bytes"},
      {"labels: [a, b]\n", "labels"},
  };
  for (const Case& c : cases) {
    const absl::StatusOr<v1::JobSpec> spec = ParseJobSpec(c.yaml, SpecFormat::kYaml, "s.yaml");
    ASSERT_TRUE(absl::IsInvalidArgument(spec.status())) << c.yaml;
    EXPECT_TRUE(absl::StrContains(spec.status().message(), c.field)) << c.yaml << " -> " << spec.status();
  }
  EXPECT_TRUE(absl::StrContains(ParseJobSpec("model: [\n", SpecFormat::kYaml, "s.yaml").status().message(),
                                "not valid YAML"));
}

TEST_F(Xtrainctl, JsonNamesAnUnknownField) {
  const absl::StatusOr<v1::JobSpec> spec =
      ParseJobSpec(R"({"training": {"batchSize": 32, "maxStepz": 4}})", SpecFormat::kJson, "job.json");
  ASSERT_TRUE(absl::IsInvalidArgument(spec.status())) << spec.status();
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "maxStepz")) << spec.status();
  EXPECT_TRUE(absl::StrContains(spec.status().message(), "job.json")) << spec.status();
}

TEST_F(Xtrainctl, ExampleSpecsParse) {
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(XTRAIN_SOURCE_DIR) + "/examples/jobs")) {
    if (entry.path().extension() != ".yaml") continue;
    absl::StatusOr<v1::JobSpec> spec = LoadJobSpecFile(entry.path().string());
    EXPECT_TRUE(spec.ok()) << entry.path() << ": " << spec.status();
    if (spec.ok()) {
      EXPECT_FALSE(spec->model().name().empty()) << entry.path();
    }
    ++count;
  }
  EXPECT_GE(count, 3);
  EXPECT_TRUE(absl::IsNotFound(LoadJobSpecFile("/nonexistent/spec.yaml").status()));
}

TEST_F(Xtrainctl, ByteSizes) {
  const std::pair<const char*, int64_t> good[] = {
      {"1000000", 1000000},     {"512B", 512},           {"4K", 4000},         {"4kb", 4000},
      {"64MiB", 64 << 20},      {"64 mib", 64 << 20},    {"1.5GB", 1500000000}, {"1.5GiB", int64_t{3} << 29},
      {"2G", 2000000000},       {"1TiB", int64_t{1} << 40}, {"0", 0},           {" 3M ", 3000000}};
  for (const auto& [text, bytes] : good) {
    absl::StatusOr<int64_t> parsed = ParseByteSize(text);
    ASSERT_TRUE(parsed.ok()) << text << ": " << parsed.status();
    EXPECT_EQ(*parsed, bytes) << text;
  }
  for (const char* text : {"", "MiB", "-5MiB", "12XB", "1e6", "1.2.3G", "9999999TiB", "5 M i B"}) {
    EXPECT_TRUE(absl::IsInvalidArgument(ParseByteSize(text).status())) << text;
  }
}

CommandLine Line(const std::vector<std::string>& args) {
  absl::StatusOr<CommandLine> line = ParseCommandLine(args);
  EXPECT_TRUE(line.ok()) << line.status();
  return line.ok() ? *line : CommandLine();
}

TEST_F(Xtrainctl, FlagsOverrideTheSpecFile) {
  v1::JobSpec spec = TinySpec();
  const CommandLine line =
      Line({"submit", "spec.yaml", "--model", "resnet18", "--dataset-kind", "mnist", "--dataset-path=fashion-mnist",
            "--batch-size", "64", "--epochs", "3", "--max-steps", "100", "--budget", "1.5GiB", "--probes", "16",
            "--priority", "5", "--label", "team=audio", "--label", "owner=ada", "--name", "bigger",
            "--set", "model.width=8", "--set", "training.lr=0.1", "--set", "model.freeze=layer1",
            "--set", "labels.version=3"});
  ASSERT_TRUE(ApplySpecFlags(line, spec).ok());
  EXPECT_EQ(spec.display_name(), "bigger");
  EXPECT_EQ(spec.model().name(), "resnet18");
  EXPECT_EQ(spec.model().width(), 8);
  EXPECT_EQ(spec.model().freeze_size(), 2);  // appended to the file's
  EXPECT_EQ(spec.model().freeze(1), "layer1");
  EXPECT_EQ(spec.dataset().kind(), v1::DatasetSpec::MNIST);
  EXPECT_EQ(spec.dataset().path(), "fashion-mnist");
  EXPECT_EQ(spec.dataset().synthetic_examples(), 256);  // untouched
  EXPECT_EQ(spec.training().batch_size(), 64);
  EXPECT_EQ(spec.training().epochs(), 3);
  EXPECT_EQ(spec.training().max_steps(), 100);
  EXPECT_DOUBLE_EQ(spec.training().lr(), 0.1);
  EXPECT_EQ(spec.memory().budget_bytes(), int64_t{3} << 29);
  EXPECT_EQ(spec.memory().probes(), v1::MemorySpec::PROBES_FIXED);
  EXPECT_EQ(spec.memory().fixed_probes(), 16);
  EXPECT_EQ(spec.priority(), 5);
  EXPECT_EQ(spec.labels().at("team"), "audio");
  EXPECT_EQ(spec.labels().at("owner"), "ada");
  EXPECT_EQ(spec.labels().at("version"), "3");
}

TEST_F(Xtrainctl, BudgetAsAShareAndProbesBackToAuto) {
  v1::JobSpec spec = TinySpec();
  ASSERT_TRUE(ApplySpecFlags(Line({"plan", "--budget", "50%", "--probes", "8"}), spec).ok());
  EXPECT_EQ(spec.memory().budget_bytes(), 0);  // one way of giving the budget at a time
  EXPECT_DOUBLE_EQ(spec.memory().device_share(), 0.5);
  ASSERT_TRUE(ApplySpecFlags(Line({"plan", "--budget", "1GB", "--probes", "auto"}), spec).ok());
  EXPECT_EQ(spec.memory().budget_bytes(), 1000000000);
  EXPECT_DOUBLE_EQ(spec.memory().device_share(), 0);
  EXPECT_EQ(spec.memory().probes(), v1::MemorySpec::PROBES_AUTO);
  EXPECT_EQ(spec.memory().fixed_probes(), 0);  // the server refuses fixed_probes without PROBES_FIXED
  ASSERT_TRUE(ApplySpecFlags(Line({"plan", "--probes", "exact"}), spec).ok());
  EXPECT_EQ(spec.memory().probes(), v1::MemorySpec::PROBES_EXACT);
}

TEST_F(Xtrainctl, BadFlagValuesNameTheFlag) {
  const std::pair<std::vector<std::string>, const char*> cases[] = {
      {{"plan", "--batch-size", "lots"}, "--batch-size"},
      {{"plan", "--budget", "12XB"}, "--budget"},
      {{"plan", "--budget", "150%"}, "--budget"},
      {{"plan", "--probes", "-3"}, "--probes"},
      {{"plan", "--dataset-kind", "parquet"}, "--dataset-kind"},
      {{"plan", "--label", "novalue"}, "--label"},
      {{"plan", "--set", "training.bogus=1"}, "training.bogus"},
      {{"plan", "--set", "model=resnet"}, "model"},
      {{"plan", "--set", "labels=x"}, "labels.KEY"},
      {{"plan", "--set", "nothing"}, "--set"},
  };
  for (const auto& [args, flag] : cases) {
    v1::JobSpec spec;
    const absl::Status status = ApplySpecFlags(Line(args), spec);
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << args[2];
    EXPECT_TRUE(absl::StrContains(status.message(), flag)) << status;
  }
}

TEST_F(Xtrainctl, CommandLineErrorsAreUsageErrors) {
  const std::vector<std::vector<std::string>> cases = {
      {},
      {"frobnicate"},
      {"get"},
      {"get", "job-1", "job-2"},
      {"list", "extra"},
      {"get", "job-1", "--model", "x"},  // a spec flag outside plan and submit
      {"watch", "job-1", "--from"},
      {"submit", "--watch=yes"},
      {"get", "job-1", "--output", "yaml"},
      {"watch", "job-1", "--from", "-2", "--server", "127.0.0.1:1"},
      {"get", "job-1", "--timeout", "soon"},
      {"download", "--server", "127.0.0.1:1"},
      {"download", "art-1", "--job", "job-1", "--server", "127.0.0.1:1"},
      {"plan", "a.yaml", "--file", "b.yaml", "--server", "127.0.0.1:1"},
      {"--server", "127.0.0.1:1", "get"},
      {"--server"},
      {"-", "get", "job-1"},
      {"--model", "x", "plan", "--server", "127.0.0.1:1"},  // not a flag of every command
  };
  for (const std::vector<std::string>& args : cases) {
    std::ostringstream out, err;
    EXPECT_EQ(RunXtrainctl(args, out, err), kExitUsage) << absl::StrJoin(args, " ");
    EXPECT_FALSE(err.str().empty());
    EXPECT_TRUE(out.str().empty()) << out.str();
  }
  std::ostringstream out, err;
  EXPECT_EQ(RunXtrainctl({"help"}, out, err), kExitOk);
  EXPECT_TRUE(absl::StrContains(out.str(), "Exit codes"));
  std::ostringstream out2, err2;
  EXPECT_EQ(RunXtrainctl({"submit", "--help"}, out2, err2), kExitOk);
  EXPECT_EQ(out2.str(), out.str());
}

TEST_F(Xtrainctl, GlobalFlagsMayComeBeforeTheCommand) {
  const CommandLine line = Line({"--server", "host:1", "-o", "json", "--token=t", "get", "job-1", "--timeout", "5"});
  EXPECT_EQ(line.command, "get");
  EXPECT_EQ(line.positional, std::vector<std::string>{"job-1"});
  EXPECT_EQ(line.Get("server"), "host:1");
  EXPECT_EQ(line.Get("output"), "json");
  EXPECT_EQ(line.Get("token"), "t");
  EXPECT_EQ(line.Get("timeout"), "5");
  EXPECT_EQ(Run({"--output", "json", "get", "job-9"}), kExitNotFound);  // Run adds --server after it
}

TEST_F(Xtrainctl, ExitCodeForEachStatus) {
  EXPECT_EQ(ExitCodeFor(absl::OkStatus()), 0);
  EXPECT_EQ(ExitCodeFor(absl::NotFoundError("")), 3);
  EXPECT_EQ(ExitCodeFor(absl::InvalidArgumentError("")), 4);
  EXPECT_EQ(ExitCodeFor(absl::OutOfRangeError("")), 4);
  EXPECT_EQ(ExitCodeFor(absl::ResourceExhaustedError("")), 5);
  EXPECT_EQ(ExitCodeFor(absl::UnavailableError("")), 6);
  EXPECT_EQ(ExitCodeFor(absl::DeadlineExceededError("")), 6);
  EXPECT_EQ(ExitCodeFor(absl::FailedPreconditionError("")), 7);
  EXPECT_EQ(ExitCodeFor(absl::PermissionDeniedError("")), 7);
  EXPECT_EQ(ExitCodeFor(absl::InternalError("")), 7);
}

TEST_F(Xtrainctl, HumanBytesAndDurations) {
  EXPECT_EQ(HumanBytes(512), "512 B");
  EXPECT_EQ(HumanBytes(1536), "1.50 KiB");
  EXPECT_EQ(HumanBytes(int64_t{10} << 20), "10.00 MiB");
  EXPECT_EQ(HumanBytes(int64_t{3} << 29), "1.50 GiB");
  EXPECT_EQ(HumanDuration(45), "45s");
  EXPECT_EQ(HumanDuration(185), "3m05s");
  EXPECT_EQ(HumanDuration(7620), "2h07m");
  EXPECT_EQ(HumanDuration(-1), "-");
}

WatchProgress ProgressAt(int64_t step, int64_t total) {
  WatchProgress progress;
  v1::WatchJobResponse response;
  *response.mutable_event() = StateEvent(1, v1::QUEUED, v1::RUNNING);
  progress.Update(response);
  *response.mutable_event() = StepEvent(2, step, total, 0.6931);
  progress.Update(response);
  v1::JobEvent validation;
  validation.set_sequence(3);
  validation.mutable_validation()->set_metric_name("accuracy");
  validation.mutable_validation()->set_metric_value(0.8125);
  *response.mutable_event() = validation;
  progress.Update(response);
  return progress;
}

TEST_F(Xtrainctl, ProgressBarShowsStepsEtaLossRatePeakAndMetric) {
  const std::string line = FormatProgressBar(ProgressAt(50, 100), 200);
  EXPECT_TRUE(absl::StartsWith(line, "[")) << line;
  EXPECT_TRUE(absl::StrContains(line, "50/100")) << line;
  EXPECT_TRUE(absl::StrContains(line, "50%")) << line;
  EXPECT_TRUE(absl::StrContains(line, "ETA 5s")) << line;  // 50 steps left at 0.1 s
  EXPECT_TRUE(absl::StrContains(line, "loss 0.6931")) << line;
  EXPECT_TRUE(absl::StrContains(line, "320 samples/s")) << line;
  EXPECT_TRUE(absl::StrContains(line, "peak 9.00 MiB / 10.00 MiB predicted")) << line;
  EXPECT_TRUE(absl::StrContains(line, "accuracy 0.8125")) << line;
  // The bar is half full: 50 of 100 steps.
  const std::string bar = line.substr(1, line.find(']') - 1);
  const size_t filled = static_cast<size_t>(std::count(bar.begin(), bar.end(), '='));
  EXPECT_EQ(filled * 2, bar.size()) << line;
}

TEST_F(Xtrainctl, ProgressBarFitsItsWidth) {
  for (int width : {20, 40, 60, 80, 120}) {
    const std::string line = FormatProgressBar(ProgressAt(7, 300), width);
    EXPECT_LE(static_cast<int>(line.size()), width) << line;
    EXPECT_TRUE(absl::StrContains(line, "7/300")) << width << ": " << line;  // the count is kept first
  }
  // Narrow: the least important fields go first, the metric before the loss.
  const std::string narrow = FormatProgressBar(ProgressAt(7, 300), 60);
  EXPECT_FALSE(absl::StrContains(narrow, "accuracy")) << narrow;
  // A full bar at the end.
  const std::string done = FormatProgressBar(ProgressAt(300, 300), 80);
  EXPECT_TRUE(absl::StrContains(done, "100%")) << done;
  EXPECT_EQ(done.find(' '), done.find(']') + 1) << done;  // no gap inside the bar
}

TEST_F(Xtrainctl, ProgressBeforeTheFirstStepShowsTheState) {
  WatchProgress progress;
  v1::WatchJobResponse response;
  *response.mutable_event() = StateEvent(1, v1::JOB_STATE_UNSPECIFIED, v1::QUEUED, "waiting for cpu: 12 MiB missing");
  progress.Update(response);
  EXPECT_EQ(FormatProgressBar(progress, 80), "QUEUED: waiting for cpu: 12 MiB missing");
  EXPECT_LT(progress.EtaSeconds(), 0);
}

// The scheduler reserves the budget the job's plan runs under, which may be less than the one asked for:
// the detail view names both, and the share when the spec gave one.
TEST_F(Xtrainctl, JobSaysWhichBudgetIsReservedAndWhichRequested) {
  v1::Job job;
  job.set_id("job-1");
  job.set_state(v1::RUNNING);
  job.mutable_spec()->mutable_memory()->set_budget_bytes(23 << 20);
  job.set_budget_bytes(22 << 20);
  std::string out = FormatJob(job);
  EXPECT_TRUE(absl::StrContains(out, "budget 22.00 MiB reserved (23.00 MiB requested)")) << out;

  job.set_budget_bytes(23 << 20);  // the same: nothing to tell apart
  out = FormatJob(job);
  EXPECT_TRUE(absl::StrContains(out, "budget 23.00 MiB\n") || absl::StrContains(out, "budget 23.00 MiB;")) << out;
  EXPECT_FALSE(absl::StrContains(out, "requested")) << out;

  job.mutable_spec()->mutable_memory()->set_budget_bytes(0);
  job.mutable_spec()->mutable_memory()->set_device_share(0.25);
  out = FormatJob(job);
  EXPECT_TRUE(absl::StrContains(out, "budget 23.00 MiB (25% of the device requested)")) << out;
}

// With several replicas the detail view says which one runs the job.
TEST_F(Xtrainctl, JobSaysWhichReplicaRunsIt) {
  v1::Job job;
  job.set_id("job-1");
  job.set_state(v1::RUNNING);
  job.set_device("cuda:0");
  std::string out = FormatJob(job);
  EXPECT_FALSE(absl::StrContains(out, "replica")) << out;
  job.set_replica("xtrain-7d9f-abc");
  out = FormatJob(job);
  EXPECT_TRUE(absl::StrContains(out, "RUNNING on cuda:0 of replica xtrain-7d9f-abc")) << out;
  job.set_state(v1::SUCCEEDED);
  job.clear_device();
  out = FormatJob(job);
  EXPECT_TRUE(absl::StrContains(out, "SUCCEEDED on replica xtrain-7d9f-abc")) << out;
}

TEST_F(Xtrainctl, PlanPrintsWhatATorchScriptRewriteLeftExact) {
  v1::PlanJobResponse response;
  response.mutable_plan()->set_batch_size(8);
  response.mutable_plan()->add_notes("convolution at code/__torch__.py:26 stays exact: its weight is computed");
  response.mutable_plan()->add_notes("head fc replaced: 1000 outputs -> 10 (model.classes), freshly initialised");
  const std::string out = FormatPlan(response);
  EXPECT_TRUE(absl::StrContains(out, "note")) << out;
  EXPECT_TRUE(absl::StrContains(out, "stays exact: its weight is computed")) << out;
  EXPECT_TRUE(absl::StrContains(out, "head fc replaced: 1000 outputs -> 10")) << out;
}

TEST_F(Xtrainctl, TablePadsColumns) {
  EXPECT_EQ(FormatTable({"ID", "N"}, {{"job-1", "5"}, {"j", "100"}}, {false, true}),
            "ID       N\n"
            "job-1    5\n"
            "j      100\n");
}

TEST_F(Xtrainctl, GetOfAnUnknownJobExitsNotFound) {
  EXPECT_EQ(Run({"get", "job-9"}), kExitNotFound);
  EXPECT_TRUE(absl::StrContains(err_.str(), "job 'job-9' does not exist")) << err_.str();
}

TEST_F(Xtrainctl, RefusedPlanExitsResourceExhaustedWithTheSmallestBudget) {
  {
    ::xtrain::server::MutexLock lock(&state_->mutex);
    state_->minimum_budget = 8 << 20;
  }
  EXPECT_EQ(Run({"plan", "--model", "small_cnn", "--budget", "1MiB"}), kExitResourceExhausted);
  EXPECT_TRUE(absl::StrContains(err_.str(), "smallest budget that fits is 8388608")) << err_.str();
  EXPECT_EQ(Run({"plan", "--model", "small_cnn", "--budget", "16MiB", "--batch-size", "32"}), kExitOk) << err_.str();
  EXPECT_TRUE(absl::StrContains(out_.str(), "Plan for batch 32 under a budget of 16.00 MiB")) << out_.str();
  EXPECT_TRUE(absl::StrContains(out_.str(), "features.0")) << out_.str();
  EXPECT_EQ(Run({"plan", "--model", "small_cnn", "--budget", "16MiB", "-o", "json"}), kExitOk);
  v1::PlanJobResponse parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(out_.str(), &parsed).ok()) << out_.str();
  EXPECT_EQ(parsed.plan().budget_bytes(), 16 << 20);
  // The mapping's own names, as scripts read them (scripts/demo.sh: plan.exactPeakBytes).
  EXPECT_TRUE(absl::StrContains(out_.str(), "\"budgetBytes\": \"16777216\"")) << out_.str();
}

TEST_F(Xtrainctl, UnreachableServerExitsUnavailable) {
  const std::string address = server_->address();
  server_->Stop();
  std::ostringstream out, err;
  EXPECT_EQ(RunXtrainctl({"get", "job-1", "--server", address, "--timeout", "5"}, out, err), kExitUnavailable);
  EXPECT_TRUE(absl::StrContains(err.str(), address)) << err.str();
}

TEST_F(Xtrainctl, SubmitSendsTheFileWithTheFlagsAndAFreshRequestId) {
  const std::string file = (std::filesystem::temp_directory_path() / ("xtrainctl-test-" + std::to_string(::getpid()) + ".yaml")).string();
  {
    std::ofstream(file) << kTinyYaml;
  }
  EXPECT_EQ(Run({"submit", file, "--max-steps", "9"}), kExitOk) << err_.str();
  EXPECT_EQ(Run({"submit", "-f", file, "--max-steps", "9"}), kExitOk) << err_.str();
  std::filesystem::remove(file);
  EXPECT_TRUE(absl::StrContains(out_.str(), "job-2 submitted")) << out_.str();
  ::xtrain::server::MutexLock lock(&state_->mutex);
  ASSERT_EQ(state_->submits.size(), 2u);
  v1::JobSpec expected = TinySpec();
  expected.mutable_training()->set_max_steps(9);
  ExpectSameSpec(state_->submits[0].spec(), expected);
  const std::string id0 = state_->submits[0].client_request_id(), id1 = state_->submits[1].client_request_id();
  EXPECT_TRUE(absl::StartsWith(id0, "xtrainctl-")) << id0;
  EXPECT_NE(id0, id1);  // each command its own id
}

TEST_F(Xtrainctl, SubmitRetriesKeepTheRequestId) {
  {
    ::xtrain::server::MutexLock lock(&state_->mutex);
    state_->unavailable["SubmitJob"] = 2;
  }
  EXPECT_EQ(Run({"submit", "--model", "small_cnn", "--dataset-kind", "synthetic", "-o", "json"}), kExitOk) << err_.str();
  EXPECT_EQ(Run({"submit", "--model", "small_cnn", "--client-request-id", "mine"}), kExitOk) << err_.str();
  EXPECT_EQ(Run({"submit", "--model", "small_cnn", "--client-request-id", "mine"}), kExitOk) << err_.str();
  EXPECT_TRUE(absl::StrContains(out_.str(), "job-2 already submitted with request id mine")) << out_.str();
  ::xtrain::server::MutexLock lock(&state_->mutex);
  EXPECT_EQ(state_->calls["SubmitJob"], 5);
  EXPECT_EQ(state_->jobs.size(), 2u);
}

TEST_F(Xtrainctl, WatchOfAFailedJobExitsOneWithTheReason) {
  AddJob("job-7", v1::FAILED, 3);
  EXPECT_EQ(Run({"watch", "job-7"}), kExitJobFailed);
  const std::vector<std::string> lines = absl::StrSplit(out_.str(), '\n', absl::SkipEmpty());
  ASSERT_GE(lines.size(), 6u) << out_.str();
  EXPECT_TRUE(absl::StartsWith(lines[0], "#1 ")) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[0], "state QUEUED -> RUNNING")) << lines[0];
  EXPECT_TRUE(absl::StrContains(lines[2], "step 2/3")) << lines[2];
  EXPECT_TRUE(absl::StrContains(lines[4], "RUNNING -> FAILED")) << lines[4];
  EXPECT_TRUE(absl::StrContains(out_.str(), "job-7 FAILED")) << out_.str();
  EXPECT_TRUE(absl::StrContains(out_.str(), "lower the batch size")) << out_.str();
}

TEST_F(Xtrainctl, WatchAsJsonPrintsOneEventPerLine) {
  AddJob("job-1", v1::SUCCEEDED, 4);
  EXPECT_EQ(Run({"watch", "job-1", "--output", "json", "--from", "2"}), kExitOk) << err_.str();
  const std::vector<std::string> lines = absl::StrSplit(out_.str(), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 5u) << out_.str();  // events 2..6
  for (size_t i = 0; i < lines.size(); ++i) {
    v1::WatchJobResponse response;
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(lines[i], &response).ok()) << lines[i];
    EXPECT_EQ(response.event().sequence(), static_cast<int64_t>(i) + 2);
  }
}

TEST_F(Xtrainctl, WatchDrawsABarOnATerminalAndPrintsTheOutcome) {
  AddJob("job-1", v1::SUCCEEDED, 4);
  EXPECT_EQ(Run({"watch", "job-1"}, Terminal{true, 100}), kExitOk) << err_.str();
  const std::string out = out_.str();
  EXPECT_TRUE(absl::StrContains(out, "\r\x1b[K[")) << out;  // the bar, redrawn in place
  EXPECT_TRUE(absl::StrContains(out, "4/4  100%")) << out;
  EXPECT_TRUE(absl::StrContains(out, "job-1 SUCCEEDED after 4 steps")) << out;
  EXPECT_TRUE(absl::StrContains(out, "accuracy 0.75")) << out;
  EXPECT_TRUE(absl::StrContains(out, "xtrainctl download art-1")) << out;
  // Step events only redraw the bar; the state changes scroll above it.
  EXPECT_FALSE(absl::StrContains(out, "#3 ")) << out;
  EXPECT_TRUE(absl::StrContains(out, "#6 ")) << out;
}

TEST_F(Xtrainctl, SubmitWatchFollowsTheNewJobToItsEnd) {
  {
    ::xtrain::server::MutexLock lock(&state_->mutex);
    state_->logs["job-1"] = {StateEvent(1, v1::JOB_STATE_UNSPECIFIED, v1::QUEUED), StateEvent(2, v1::QUEUED, v1::CANCELLED)};
    state_->ended["job-1"] = true;
  }
  EXPECT_EQ(Run({"submit", "--model", "small_cnn", "--watch"}), kExitJobFailed) << out_.str() << err_.str();
  EXPECT_TRUE(absl::StrContains(out_.str(), "job-1 submitted")) << out_.str();
  EXPECT_TRUE(absl::StrContains(out_.str(), "QUEUED -> CANCELLED")) << out_.str();
  EXPECT_TRUE(absl::StrContains(out_.str(), "job-1 CANCELLED")) << out_.str();
}

TEST_F(Xtrainctl, ListPagesAndFilters) {
  for (int i = 1; i <= 5; ++i) AddJob("job-" + std::to_string(i), i % 2 ? v1::SUCCEEDED : v1::FAILED, 1);
  EXPECT_EQ(Run({"list", "--page-size", "2"}), kExitOk);
  EXPECT_TRUE(absl::StrContains(out_.str(), "--page-token 2")) << out_.str();
  const std::string page = out_.str();
  EXPECT_EQ(std::count(page.begin(), page.end(), '\n'), 4) << page;  // header, 2 jobs, "more"
  EXPECT_EQ(Run({"list", "--page-size", "2", "--all", "--state", "succeeded", "-o", "json"}), kExitOk);
  v1::ListJobsResponse all;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(out_.str(), &all).ok()) << out_.str();
  ASSERT_EQ(all.jobs_size(), 3);
  for (const v1::Job& job : all.jobs()) EXPECT_EQ(job.state(), v1::SUCCEEDED);
  EXPECT_EQ(Run({"list", "--state", "sleeping"}), kExitUsage);
}

TEST_F(Xtrainctl, CancelAndItsErrors) {
  {
    ::xtrain::server::MutexLock lock(&state_->mutex);
    state_->jobs["job-1"].set_id("job-1");
    state_->jobs["job-1"].set_state(v1::QUEUED);
  }
  EXPECT_EQ(Run({"cancel", "job-1"}), kExitOk);
  EXPECT_EQ(out_.str(), "job-1 CANCELLED\n");
  EXPECT_EQ(Run({"cancel", "job-1"}), kExitOther);  // FAILED_PRECONDITION: it has ended
  EXPECT_TRUE(absl::StrContains(err_.str(), "already ended")) << err_.str();
}

TEST_F(Xtrainctl, DownloadAJobsWeights) {
  AddJob("job-1", v1::SUCCEEDED, 1);
  AddJob("job-2", v1::FAILED, 1);
  const std::string content = "weights of job-1";
  {
    ::xtrain::server::MutexLock lock(&state_->mutex);
    state_->artifact.set_id("art-1");
    state_->artifact.set_name("job-1 weights");
    state_->artifact.set_size_bytes(static_cast<int64_t>(content.size()));
    state_->artifact.set_sha256(testing::Sha256Hex(content));
    state_->artifact_content = content;
  }
  const std::string path = (std::filesystem::temp_directory_path() / ("xtrainctl-test-" + std::to_string(::getpid()) + ".pt")).string();
  EXPECT_EQ(Run({"download", "--job", "job-1", "--to", path}), kExitOk) << err_.str();
  std::ifstream in(path);
  std::string read((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::filesystem::remove(path);
  EXPECT_EQ(read, content);
  EXPECT_EQ(Run({"download", "--job", "job-2", "--to", path}), kExitNotFound);
  EXPECT_TRUE(absl::StrContains(err_.str(), "has no trained weights")) << err_.str();
  EXPECT_EQ(Run({"download", "art-404", "--to", path}), kExitNotFound);
  EXPECT_FALSE(std::filesystem::exists(path));
}

}  // namespace
}  // namespace xtrain::client
