#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include <spdlog/formatter.h>
#include <spdlog/spdlog.h>

#include "absl/status/statusor.h"

namespace xtrain::server {

// How the server writes its log: lines for people, or one JSON object a line for a log collector.
enum class LogFormat { kText, kJson };

// "text" or "json"; InvalidArgument naming both otherwise.
absl::StatusOr<LogFormat> ParseLogFormat(std::string_view text);
// trace, debug, info, warn (or warning), error, critical, off; InvalidArgument naming them otherwise.
absl::StatusOr<spdlog::level::level_enum> ParseLogLevel(std::string_view text);

// Who a log line is about. Empty fields are left out of the line.
struct LogContext {
  std::string job_id = {};   // a training job's id (job-...)
  std::string plan_id = {};  // a planning call's id (plan-...): plans are shared, so they have no job id
  std::string tenant = {};   // the job's or the planning call's tenant
  std::string source = {};   // "worker" on a line a worker wrote; empty on the server's own lines

  bool empty() const { return job_id.empty() && plan_id.empty() && tenant.empty() && source.empty(); }
};

// Lines logged on this thread while it lives carry `context` (the formatters read it; the loggers are
// synchronous, so a line is formatted on the thread that logs it). Nests: the inner one wins.
class ScopedLogContext {
 public:
  explicit ScopedLogContext(const LogContext& context);
  ~ScopedLogContext();
  ScopedLogContext(const ScopedLogContext&) = delete;
  ScopedLogContext& operator=(const ScopedLogContext&) = delete;

 private:
  const LogContext* previous_;
};

// The context of the lines logged now on this thread; null when none.
const LogContext* CurrentLogContext();

// spdlog::log under `context`: the line carries its job id and tenant (text: job=<id> tenant=<t>;
// JSON: fields job_id and tenant).
template <typename... Args>
void LogAbout(const LogContext& context, spdlog::level::level_enum level, spdlog::format_string_t<Args...> format,
              Args&&... args) {
  if (!spdlog::should_log(level)) return;
  ScopedLogContext scope(context);
  spdlog::log(level, format, std::forward<Args>(args)...);
}

// The formatter of a log format. Text: "[2026-01-31 12:00:00.123] [info] job=<id> tenant=<t> message"
// (local time). JSON: {"time":"2026-01-31T12:00:00.123Z","level":"info","message":"...","job_id":...,
// "plan_id":...,"tenant":...,"source":...} (UTC; fields of an empty context left out).
std::unique_ptr<spdlog::formatter> MakeLogFormatter(LogFormat format);

// The server's log: spdlog's default logger replaced by one on stderr in `format` at `level`.
void ConfigureServerLogging(LogFormat format, spdlog::level::level_enum level);

// The worker's log: "<level>: <message>" lines on stderr (the pipe the supervisor reads) at the level
// the server hands down in XTRAIN_LOG_LEVEL (info when it is unset or unknown).
void ConfigureWorkerLogging();

// What ConfigureWorkerLogging's lines say: the level of a "<level>: " prefix (spdlog's names) and the rest;
// a line without one (LibTorch's, a crash message) is info, whole.
struct WorkerLine {
  spdlog::level::level_enum level = spdlog::level::info;
  std::string_view message;
};
WorkerLine ParseWorkerLine(std::string_view line);

// A forwarded worker line is cut at this many bytes (the supervisor hands lines over in 64 KiB pieces),
// so one worker's output cannot make the log's lines arbitrarily long.
constexpr size_t kMaxForwardedLineBytes = 8u << 10;

// Logs one stderr line of a worker into the server's log under `context` with source "worker", at the
// level its prefix names, cut at kMaxForwardedLineBytes (the cut says how many bytes went).
void ForwardWorkerLine(const LogContext& context, std::string_view line);

// Appends `text` to `out` as the inside of a JSON string: '"', '\\' and control characters escaped
// (\n, \t, ... or \u00XX), valid UTF-8 kept as it is, each byte of invalid UTF-8 as \ufffd, so the
// result is valid JSON whatever bytes came in.
void AppendJsonEscaped(std::string* out, std::string_view text);
std::string JsonEscaped(std::string_view text);

// One JSON log line, without the newline: the JSON format's formatter writes exactly this.
std::string JsonLogLine(std::chrono::system_clock::time_point time, spdlog::level::level_enum level,
                        std::string_view message, const LogContext* context);

}  // namespace xtrain::server
