// The real xtrain-server binary with --log-format json, behind it the fake worker (its log lines hold
// quotes, a backslash, a tab, UTF-8, a control character and a byte that is not UTF-8): every line of its
// stderr is a JSON object, every line about a job carries the job's id and tenant, and the worker's own
// lines arrive as lines of the server's log under the job (source "worker", their level kept).
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/service_test_util.h"

namespace xtrain::server::testing {
namespace {

namespace v1 = ::xtrain::v1;
using ::testing::Contains;
using ::testing::HasSubstr;

struct LogLine {
  std::string raw;
  google::protobuf::Struct json;
  std::string Field(const std::string& key) const {
    auto it = json.fields().find(key);
    return it == json.fields().end() ? "" : it->second.string_value();
  }
};

std::vector<LogLine> ReadJsonLog(const std::string& path) {
  std::vector<LogLine> lines;
  std::ifstream in(path, std::ios::binary);
  for (std::string raw; std::getline(in, raw);) {
    LogLine& line = lines.emplace_back();
    line.raw = raw;
    const auto status = google::protobuf::util::JsonStringToMessage(raw, &line.json);
    EXPECT_TRUE(status.ok()) << "not a JSON line: " << raw << " (" << status.ToString() << ")";
    for (const char* key : {"time", "level", "message"}) {
      EXPECT_EQ(line.json.fields().count(key), 1u) << key << " missing: " << raw;
    }
  }
  return lines;
}

TEST(ServerLogging, JsonLinesCarryTheJobAndTheWorkersLines) {
  TempDir dir;
  const std::string root = absl::StrCat(dir.path(), "/data");
  std::filesystem::create_directories(root);
  const std::string log_path = absl::StrCat(dir.path(), "/server.log");
  std::string tenant = "local";  // no tokens file: one local tenant
  std::string done_id, cancelled_id;
  {
    ServerProcess server(absl::StrCat(dir.path(), "/store"), root,
                         {"--worker", XTRAIN_FAKE_WORKER, "--log-format", "json", "--log-level", "info"}, log_path);
    ASSERT_TRUE(server.serving());
    v1::JobSpec spec = TinyJob(/*max_steps=*/5);
    (*spec.mutable_labels())["fake_step_ms"] = "20";
    done_id = Submit(server.stub(), spec).job().id();
    EXPECT_EQ(WaitForEnd(server.stub(), done_id, std::chrono::seconds(60)).state(), v1::SUCCEEDED);

    spec = TinyJob(/*max_steps=*/100000);
    (*spec.mutable_labels())["fake_step_ms"] = "20";
    cancelled_id = Submit(server.stub(), spec).job().id();
    WaitFor(server.stub(), cancelled_id, [](const v1::Job& j) { return j.progress().step() >= 1; },
            std::chrono::seconds(60));
    v1::CancelJobResponse response;
    ASSERT_TRUE(Cancel(server.stub(), cancelled_id, &response).ok());
    EXPECT_EQ(WaitForEnd(server.stub(), cancelled_id, std::chrono::seconds(60)).state(), v1::CANCELLED);
    const int status = server.Stop(SIGTERM);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  }

  const std::vector<LogLine> lines = ReadJsonLog(log_path);
  ASSERT_FALSE(lines.empty());
  // Python's json.loads agrees (strict: no raw control characters, UTF-8 only).
  const std::string check = absl::StrCat(
      "/usr/bin/python3 -c 'import json, sys\n"
      "[json.loads(l) for l in open(sys.argv[1], encoding=\"utf-8\", errors=\"strict\")]' ",
      log_path);
  EXPECT_EQ(std::system(check.c_str()), 0) << "python3 could not parse " << log_path;

  for (const std::string& id : {done_id, cancelled_id}) {
    std::vector<std::string> messages, worker_messages;
    for (const LogLine& line : lines) {
      // A line that names the job, in its message or its fields, is a line about it and says whose.
      if (!absl::StrContains(line.raw, id)) continue;
      EXPECT_EQ(line.Field("job_id"), id) << line.raw;
      EXPECT_EQ(line.Field("tenant"), tenant) << line.raw;
      messages.push_back(line.Field("message"));
      if (line.Field("source") == "worker") worker_messages.push_back(line.Field("level") + " " + line.Field("message"));
    }
    EXPECT_THAT(messages, Contains(HasSubstr("QUEUED -> RUNNING: started on cpu"))) << id;
    EXPECT_THAT(messages, Contains(HasSubstr("started: pid "))) << id;   // the supervisor's
    EXPECT_THAT(messages, Contains(HasSubstr("exited with code 0"))) << id;
    // The worker's lines, as it wrote them: the level from its prefix, the text unchanged but for the
    // byte that is not UTF-8 (U+FFFD).
    const std::string steps = id == done_id ? "5" : "100000";
    EXPECT_THAT(worker_messages,
                Contains(absl::StrCat("info fake training of ", steps,
                                      " steps: a \"quoted\" word, a back\\slash, a\ttab and caf\xc3\xa9")))
        << id;
    EXPECT_THAT(worker_messages, Contains("warning a warning from the worker")) << id;
    EXPECT_THAT(worker_messages, Contains("info a raw line: bell \x07, a stray byte \xef\xbf\xbd, end")) << id;
  }
  std::vector<std::string> done, cancelled;
  for (const LogLine& line : lines) {
    if (line.Field("job_id") == done_id) done.push_back(line.Field("message"));
    if (line.Field("job_id") == cancelled_id) cancelled.push_back(line.Field("message"));
  }
  EXPECT_THAT(done, Contains(HasSubstr("RUNNING -> SUCCEEDED")));
  EXPECT_THAT(cancelled, Contains(HasSubstr("cancel requested at step")));
  EXPECT_THAT(cancelled, Contains(HasSubstr("RUNNING -> CANCELLED")));
  // The planning worker's lines carry its plan id and the tenant that asked.
  bool planned = false;
  for (const LogLine& line : lines) {
    if (line.Field("source") == "worker" && line.Field("message") == "fake planning: one point of 1 MiB") {
      planned = true;
      EXPECT_TRUE(absl::StartsWith(line.Field("plan_id"), "plan-")) << line.raw;
      EXPECT_EQ(line.Field("tenant"), tenant) << line.raw;
    }
  }
  EXPECT_TRUE(planned);
}

// The real worker behind the server in the default text format: its lines arrive under their job or
// planning call, with the level its prefix names.
TEST(ServerLogging, TextLinesCarryTheRealWorkersLinesUnderTheirJob) {
  TempDir dir;
  const std::string root = absl::StrCat(dir.path(), "/data");
  std::filesystem::create_directories(root);
  const std::string log_path = absl::StrCat(dir.path(), "/server.log");
  std::string id;
  {
    ServerProcess server(absl::StrCat(dir.path(), "/store"), root, {"--log-level", "info"}, log_path);
    ASSERT_TRUE(server.serving());
    id = Submit(server.stub(), TinyJob(/*max_steps=*/2)).job().id();
    EXPECT_EQ(WaitForEnd(server.stub(), id).state(), v1::SUCCEEDED);
    server.Stop(SIGTERM);
  }
  std::ifstream in(log_path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  const std::string job = absl::StrCat("job=", id, " tenant=local ");
  EXPECT_THAT(lines, Contains(::testing::ContainsRegex(
                         "\\[info\\] plan=plan-[0-9a-f]+ tenant=local source=worker planned small_cnn in ")));
  EXPECT_THAT(lines, Contains(HasSubstr(absl::StrCat("[info] ", job, "source=worker training small_cnn on cpu"))));
  EXPECT_THAT(lines, Contains(HasSubstr(absl::StrCat("[info] ", job, "RUNNING -> SUCCEEDED"))));
  for (const std::string& line : lines) {
    if (absl::StrContains(line, id)) {
      EXPECT_THAT(line, HasSubstr(job));
    }
  }
}

}  // namespace
}  // namespace xtrain::server::testing
