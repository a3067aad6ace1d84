// The log's formats: JSON lines that parse back (protobuf's JSON parser and Python's strict json.loads)
// with their fields whatever bytes a message holds, text lines with the job's id and tenant, and a
// worker's lines forwarded with their level, their job and a bounded length.
#include "server/common/logging.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <spdlog/sinks/ostream_sink.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace xtrain::server {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::StartsWith;

// spdlog's default logger writing into a string in `format` at trace, for one test; the process's
// logger comes back at the end.
class CapturedLog {
 public:
  explicit CapturedLog(LogFormat format) : previous_(spdlog::default_logger()) {
    auto logger = std::make_shared<spdlog::logger>("", std::make_shared<spdlog::sinks::ostream_sink_st>(out_));
    logger->set_formatter(MakeLogFormatter(format));
    logger->set_level(spdlog::level::trace);
    spdlog::set_default_logger(logger);
  }
  ~CapturedLog() { spdlog::set_default_logger(previous_); }
  CapturedLog(const CapturedLog&) = delete;
  CapturedLog& operator=(const CapturedLog&) = delete;

  std::vector<std::string> Lines() const {
    const std::string text = out_.str();
    EXPECT_TRUE(text.empty() || text.back() == '\n') << "the last line has no newline";
    std::vector<std::string> lines = absl::StrSplit(text, '\n');
    if (!lines.empty() && lines.back().empty()) lines.pop_back();
    return lines;
  }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> previous_;
};

// A JSON line as an object (protobuf's JSON parser); fails the test when it is not one.
google::protobuf::Struct Parse(const std::string& line) {
  google::protobuf::Struct object;
  const auto status = google::protobuf::util::JsonStringToMessage(line, &object);
  EXPECT_TRUE(status.ok()) << status.ToString() << ": " << line;
  return object;
}

std::string Field(const google::protobuf::Struct& object, const std::string& key) {
  auto it = object.fields().find(key);
  return it == object.fields().end() ? "(absent)" : it->second.string_value();
}

// Python's json.loads (strict: no raw control characters) on every line of `lines`, read as UTF-8
// (strict: a byte that is not UTF-8 fails), each an object with time, level and message.
void ExpectPythonParses(const std::vector<std::string>& lines) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/xtrain-log-", getpid(), ".jsonl");
  {
    std::ofstream out(path, std::ios::binary);
    for (const std::string& line : lines) out << line << '\n';
  }
  const std::string command = absl::StrCat(
      "/usr/bin/python3 -c 'import json, sys\n"
      "n = 0\n"
      "for line in open(sys.argv[1], encoding=\"utf-8\", errors=\"strict\"):\n"
      "    o = json.loads(line)\n"
      "    assert isinstance(o, dict) and {\"time\", \"level\", \"message\"} <= o.keys(), line\n"
      "    n += 1\n"
      "assert n == int(sys.argv[2]), n\n' ",
      path, " ", lines.size());
  EXPECT_EQ(std::system(command.c_str()), 0) << "python3 did not parse every line of " << path;
  std::filesystem::remove(path);
}

TEST(JsonEscaped, EscapesQuotesBackslashesAndControlCharacters) {
  EXPECT_EQ(JsonEscaped(R"(say "hi")"), R"(say \"hi\")");
  EXPECT_EQ(JsonEscaped(R"(C:\path\)"), R"(C:\\path\\)");
  EXPECT_EQ(JsonEscaped("a\nb\rc\td\be\ff"), R"(a\nb\rc\td\be\ff)");
  EXPECT_EQ(JsonEscaped(std::string("nul\0one\x01unit\x1f", 13)), R"(nul\u0000one\u0001unit\u001f)");
  EXPECT_EQ(JsonEscaped("del \x7f / slash"), "del \x7f / slash");  // valid in a JSON string as it is
  EXPECT_EQ(JsonEscaped(""), "");
}

TEST(JsonEscaped, KeepsUtf8AndReplacesEveryInvalidByte) {
  EXPECT_EQ(JsonEscaped("caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80"), "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80");
  EXPECT_EQ(JsonEscaped("\xff"), R"(\ufffd)");
  EXPECT_EQ(JsonEscaped("a\x80z"), R"(a\ufffdz)");                     // a stray continuation byte
  EXPECT_EQ(JsonEscaped("\xc0\xaf"), R"(\ufffd\ufffd)");               // an overlong '/'
  EXPECT_EQ(JsonEscaped("\xe0\x80\xaf"), R"(\ufffd\ufffd\ufffd)");     // another
  EXPECT_EQ(JsonEscaped("\xed\xa0\x80"), R"(\ufffd\ufffd\ufffd)");     // a UTF-16 surrogate
  EXPECT_EQ(JsonEscaped("\xf4\x90\x80\x80"), R"(\ufffd\ufffd\ufffd\ufffd)");  // above U+10FFFF
  EXPECT_EQ(JsonEscaped("cut \xe2\x9c"), R"(cut \ufffd\ufffd)");      // a sequence cut at the end
  EXPECT_EQ(JsonEscaped("\xe2\x9c\"x"), R"(\ufffd\ufffd\"x)");        // ... or before a quote
}

TEST(LogFormat, JsonLinesParseBackWithTheirFieldsWhateverTheMessageHolds) {
  std::string every_byte;
  for (int c = 1; c < 256; ++c) every_byte.push_back(static_cast<char>(c));
  const std::vector<std::string> messages = {
      "plain",
      R"(quotes " and backslashes \ and {"json": "inside"})",
      "new\nlines\r\nand\ttabs",
      std::string("a nul \0 in the middle", 21),
      "caf\xc3\xa9 \xf0\x9f\x98\x80",
      every_byte,
      std::string(100000, 'x'),
  };
  CapturedLog log(LogFormat::kJson);
  const LogContext job{.job_id = "job-0123456789abcdef", .tenant = R"(te"nant\)"};
  for (const std::string& message : messages) {
    spdlog::info("{}", message);
    LogAbout(job, spdlog::level::warn, "{}", message);
  }
  LogAbout(LogContext{.plan_id = "plan-abc", .tenant = "acme", .source = "worker"}, spdlog::level::debug, "planning");
  spdlog::error("after the context: {}", 42);

  const std::vector<std::string> lines = log.Lines();
  ASSERT_EQ(lines.size(), 2 * messages.size() + 2);
  ExpectPythonParses(lines);
  for (size_t i = 0; i < messages.size(); ++i) {
    const google::protobuf::Struct plain = Parse(lines[2 * i]);
    const google::protobuf::Struct about = Parse(lines[2 * i + 1]);
    EXPECT_EQ(Field(plain, "level"), "info");
    EXPECT_EQ(Field(about, "level"), "warning");
    EXPECT_THAT(Field(plain, "time"), MatchesRegex(R"(20[0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9]\.[0-9]{3}Z)"));
    EXPECT_EQ(Field(plain, "job_id"), "(absent)");
    EXPECT_EQ(Field(plain, "tenant"), "(absent)");
    EXPECT_EQ(Field(about, "job_id"), "job-0123456789abcdef");
    EXPECT_EQ(Field(about, "tenant"), R"(te"nant\)");
    EXPECT_EQ(Field(about, "source"), "(absent)");
    if (messages[i] != every_byte) {  // valid UTF-8: the message comes back byte for byte
      EXPECT_EQ(Field(plain, "message"), messages[i]);
      EXPECT_EQ(Field(about, "message"), messages[i]);
    }
  }
  // Bytes 0x80 and up are not UTF-8 on their own: each comes back as U+FFFD, the rest as it was.
  EXPECT_EQ(Field(Parse(lines[2 * 5]), "message"), every_byte.substr(0, 127) + [] {
    std::string replaced;
    for (int c = 128; c < 256; ++c) replaced += "\xef\xbf\xbd";
    return replaced;
  }());
  const google::protobuf::Struct plan = Parse(lines[lines.size() - 2]);
  EXPECT_EQ(Field(plan, "plan_id"), "plan-abc");
  EXPECT_EQ(Field(plan, "tenant"), "acme");
  EXPECT_EQ(Field(plan, "source"), "worker");
  EXPECT_EQ(Field(plan, "job_id"), "(absent)");
  const google::protobuf::Struct after = Parse(lines.back());
  EXPECT_EQ(Field(after, "message"), "after the context: 42");
  EXPECT_EQ(Field(after, "level"), "error");
  EXPECT_EQ(Field(after, "tenant"), "(absent)");  // the scope ended with the call
}

TEST(LogFormat, TextLinesNameTheJobAndTenant) {
  CapturedLog log(LogFormat::kText);
  LogAbout(LogContext{.job_id = "job-1", .tenant = "acme"}, spdlog::level::info, "QUEUED -> RUNNING: {}", "started");
  LogAbout(LogContext{.job_id = "job-2", .tenant = "two words", .source = "worker"}, spdlog::level::err, "boom");
  spdlog::info("no job here");
  const std::vector<std::string> lines = log.Lines();
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_THAT(lines[0], MatchesRegex(R"(\[[-0-9]+ [:.0-9]+\] \[info\] job=job-1 tenant=acme QUEUED -> RUNNING: started)"));
  EXPECT_THAT(lines[1], HasSubstr(R"([error] job=job-2 tenant="two words" source=worker boom)"));
  EXPECT_THAT(lines[2], MatchesRegex(R"(\[[-0-9]+ [:.0-9]+\] \[info\] no job here)"));
}

TEST(LogFormat, NamesAndLevelsParse) {
  EXPECT_EQ(*ParseLogFormat("text"), LogFormat::kText);
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  EXPECT_FALSE(ParseLogFormat("JSONL").ok());
  EXPECT_EQ(*ParseLogLevel("warn"), spdlog::level::warn);
  EXPECT_EQ(*ParseLogLevel("warning"), spdlog::level::warn);
  EXPECT_EQ(*ParseLogLevel("DEBUG"), spdlog::level::debug);
  EXPECT_EQ(*ParseLogLevel("error"), spdlog::level::err);
  EXPECT_EQ(*ParseLogLevel("off"), spdlog::level::off);
  const absl::StatusOr<spdlog::level::level_enum> unknown = ParseLogLevel("loud");
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.status().message(), HasSubstr("trace, debug, info, warn, error, critical or off"));
}

TEST(WorkerLines, TheirLevelPrefixIsRead) {
  WorkerLine line = ParseWorkerLine("warning: skipping checkpoint x");
  EXPECT_EQ(line.level, spdlog::level::warn);
  EXPECT_EQ(line.message, "skipping checkpoint x");
  line = ParseWorkerLine("error: INVALID_ARGUMENT: bad data");
  EXPECT_EQ(line.level, spdlog::level::err);
  EXPECT_EQ(line.message, "INVALID_ARGUMENT: bad data");
  line = ParseWorkerLine("debug: ");
  EXPECT_EQ(line.level, spdlog::level::debug);
  EXPECT_EQ(line.message, "");
  for (const char* raw : {"[W thread_pool.cpp:109] Warning: something", "info:no space", "fatal: x", "", "info"}) {
    line = ParseWorkerLine(raw);
    EXPECT_EQ(line.level, spdlog::level::info) << raw;
    EXPECT_EQ(line.message, raw);
  }
}

TEST(WorkerLines, ForwardedWithTheirJobLevelAndABoundedLength) {
  CapturedLog log(LogFormat::kJson);
  spdlog::set_level(spdlog::level::info);
  const LogContext job{.job_id = "job-7", .tenant = "acme"};
  ForwardWorkerLine(job, "warning: low on memory");
  ForwardWorkerLine(job, "debug: below the server's level: dropped");
  ForwardWorkerLine(job, "a line of LibTorch's");
  ForwardWorkerLine(job, absl::StrCat("info: ", std::string(64 << 10, 'y')));
  const std::vector<std::string> lines = log.Lines();
  ASSERT_EQ(lines.size(), 3u);
  ExpectPythonParses(lines);
  google::protobuf::Struct line = Parse(lines[0]);
  EXPECT_EQ(Field(line, "level"), "warning");
  EXPECT_EQ(Field(line, "message"), "low on memory");
  EXPECT_EQ(Field(line, "job_id"), "job-7");
  EXPECT_EQ(Field(line, "tenant"), "acme");
  EXPECT_EQ(Field(line, "source"), "worker");
  line = Parse(lines[1]);
  EXPECT_EQ(Field(line, "level"), "info");
  EXPECT_EQ(Field(line, "message"), "a line of LibTorch's");
  line = Parse(lines[2]);
  EXPECT_EQ(Field(line, "message"), absl::StrCat(std::string(kMaxForwardedLineBytes, 'y'), " [cut: ",
                                                 (64 << 10) - kMaxForwardedLineBytes, " more bytes]"));
  EXPECT_LT(lines[2].size(), kMaxForwardedLineBytes + 200);
}

}  // namespace
}  // namespace xtrain::server
