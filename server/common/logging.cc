#include "server/common/logging.h"

#include <cstdio>
#include <cstdlib>
#include <ctime>

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/stdout_sinks.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace xtrain::server {
namespace {

thread_local const LogContext* current_context = nullptr;

// Debian's Abseil has its own string_view, which StrCat takes; fmt takes std::string_view.
absl::string_view Absl(std::string_view text) { return absl::string_view(text.data(), text.size()); }

// The level names a worker's line may start with: spdlog's own (what "%l" writes).
constexpr spdlog::level::level_enum kWorkerLevels[] = {spdlog::level::trace, spdlog::level::debug,
                                                       spdlog::level::info,  spdlog::level::warn,
                                                       spdlog::level::err,   spdlog::level::critical};

std::string_view LevelName(spdlog::level::level_enum level) {
  const spdlog::string_view_t name = spdlog::level::to_string_view(level);
  return std::string_view(name.data(), name.size());
}

// A text-format value: as it is when it is a plain word, else quoted and escaped as JSON.
void AppendTextValue(std::string* out, std::string_view value) {
  bool plain = !value.empty();
  for (char c : value) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte <= ' ' || c == '"' || c == '=' || c == '\\' || byte == 0x7f) plain = false;
  }
  if (plain) {
    out->append(value);
  } else {
    out->push_back('"');
    AppendJsonEscaped(out, value);
    out->push_back('"');
  }
}

// "job=<id> plan=<id> tenant=<t> source=<s> " of the context (its non-empty fields).
std::string TextFields(const LogContext& context) {
  std::string out;
  const std::pair<const char*, const std::string*> fields[] = {
      {"job", &context.job_id}, {"plan", &context.plan_id}, {"tenant", &context.tenant}, {"source", &context.source}};
  for (const auto& [key, value] : fields) {
    if (value->empty()) continue;
    absl::StrAppend(&out, key, "=");
    AppendTextValue(&out, *value);
    out.push_back(' ');
  }
  return out;
}

// %* in the text pattern: the fields of the line's context.
class ContextFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg&, const std::tm&, spdlog::memory_buf_t& dest) override {
    if (current_context == nullptr || current_context->empty()) return;
    const std::string fields = TextFields(*current_context);
    dest.append(fields.data(), fields.data() + fields.size());
  }
  std::unique_ptr<spdlog::custom_flag_formatter> clone() const override { return std::make_unique<ContextFlag>(); }
};

class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    std::string line = JsonLogLine(msg.time, msg.level, std::string_view(msg.payload.data(), msg.payload.size()),
                                   current_context);
    line.push_back('\n');
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<JsonFormatter>(); }
};

void AppendJsonField(std::string* out, std::string_view key, std::string_view value) {
  absl::StrAppend(out, ",\"", Absl(key), "\":\"");
  AppendJsonEscaped(out, value);
  out->push_back('"');
}

// Length of the valid UTF-8 sequence at the start of `text`, 0 when it does not start with one
// (stray continuation bytes, overlong forms, surrogates, code points above U+10FFFF, cut sequences).
size_t Utf8SequenceLength(std::string_view text) {
  const auto at = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = at(0);
  size_t length = 0;
  unsigned char low = 0x80, high = 0xbf;  // the range of the second byte
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
    if (lead == 0xe0) low = 0xa0;
    if (lead == 0xed) high = 0x9f;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4;
    if (lead == 0xf0) low = 0x90;
    if (lead == 0xf4) high = 0x8f;
  } else {
    return 0;
  }
  if (text.size() < length || at(1) < low || at(1) > high) return 0;
  for (size_t i = 2; i < length; ++i) {
    if (at(i) < 0x80 || at(i) > 0xbf) return 0;
  }
  return length;
}

}  // namespace

absl::StatusOr<LogFormat> ParseLogFormat(std::string_view text) {
  if (text == "text") return LogFormat::kText;
  if (text == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(absl::StrCat("log format '", Absl(text), "' is unknown; use text or json"));
}

absl::StatusOr<spdlog::level::level_enum> ParseLogLevel(std::string_view text) {
  const std::string name = absl::AsciiStrToLower(Absl(text));
  if (name == "warn") return spdlog::level::warn;
  for (int level = spdlog::level::trace; level < spdlog::level::n_levels; ++level) {
    const auto value = static_cast<spdlog::level::level_enum>(level);
    if (name == LevelName(value)) return value;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("log level '", Absl(text), "' is unknown; use trace, debug, info, warn, error, critical or off"));
}

ScopedLogContext::ScopedLogContext(const LogContext& context) : previous_(current_context) {
  current_context = &context;
}

ScopedLogContext::~ScopedLogContext() { current_context = previous_; }

const LogContext* CurrentLogContext() { return current_context; }

std::unique_ptr<spdlog::formatter> MakeLogFormatter(LogFormat format) {
  if (format == LogFormat::kJson) return std::make_unique<JsonFormatter>();
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  formatter->add_flag<ContextFlag>('*').set_pattern("[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %*%v");
  return formatter;
}

void ConfigureServerLogging(LogFormat format, spdlog::level::level_enum level) {
  spdlog::sink_ptr sink;
  if (format == LogFormat::kJson) {
    sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  } else {
    sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();  // colours only on a terminal
  }
  auto logger = std::make_shared<spdlog::logger>("", std::move(sink));
  logger->set_formatter(MakeLogFormatter(format));
  logger->set_level(level);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(std::move(logger));
}

void ConfigureWorkerLogging() {
  spdlog::level::level_enum level = spdlog::level::info;
  if (const char* env = std::getenv("XTRAIN_LOG_LEVEL"); env != nullptr && *env != '\0') {
    if (absl::StatusOr<spdlog::level::level_enum> parsed = ParseLogLevel(env); parsed.ok()) level = *parsed;
  }
  auto logger = std::make_shared<spdlog::logger>("", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  logger->set_formatter(std::make_unique<spdlog::pattern_formatter>("%l: %v"));
  logger->set_level(level);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(std::move(logger));
}

WorkerLine ParseWorkerLine(std::string_view line) {
  WorkerLine parsed;
  parsed.message = line;
  for (spdlog::level::level_enum level : kWorkerLevels) {
    const std::string_view name = LevelName(level);
    if (line.size() > name.size() + 1 && line.substr(0, name.size()) == name && line[name.size()] == ':' &&
        line[name.size() + 1] == ' ') {
      parsed.level = level;
      parsed.message = line.substr(name.size() + 2);
      break;
    }
  }
  return parsed;
}

void ForwardWorkerLine(const LogContext& context, std::string_view line) {
  const WorkerLine parsed = ParseWorkerLine(line);
  if (!spdlog::should_log(parsed.level)) return;
  LogContext forwarded = context;
  forwarded.source = "worker";
  ScopedLogContext scope(forwarded);
  std::string_view message = parsed.message;
  if (message.size() <= kMaxForwardedLineBytes) {
    spdlog::log(parsed.level, "{}", message);
  } else {
    spdlog::log(parsed.level, "{} [cut: {} more bytes]", message.substr(0, kMaxForwardedLineBytes),
                message.size() - kMaxForwardedLineBytes);
  }
}

void AppendJsonEscaped(std::string* out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  size_t i = 0;
  while (i < text.size()) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte >= 0x80) {
      const size_t length = Utf8SequenceLength(text.substr(i));
      if (length == 0) {
        out->append("\\ufffd");
        ++i;
      } else {
        out->append(text.substr(i, length));
        i += length;
      }
      continue;
    }
    switch (byte) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      default:
        if (byte < 0x20) {
          const char escape[] = {'\\', 'u', '0', '0', kHex[byte >> 4], kHex[byte & 0xf]};
          out->append(escape, sizeof escape);
        } else {
          out->push_back(static_cast<char>(byte));
        }
    }
    ++i;
  }
}

std::string JsonEscaped(std::string_view text) {
  std::string out;
  AppendJsonEscaped(&out, text);
  return out;
}

std::string JsonLogLine(std::chrono::system_clock::time_point time, spdlog::level::level_enum level,
                        std::string_view message, const LogContext* context) {
  const auto since_epoch = time.time_since_epoch();
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
  const std::time_t whole = static_cast<std::time_t>(seconds.count());
  auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch - seconds).count();
  if (millis < 0) millis = 0;  // before 1970: not a time this log meets
  std::tm utc{};
  gmtime_r(&whole, &utc);
  char stamp[96];
  std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900, utc.tm_mon + 1,
                utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, static_cast<int>(millis));
  std::string line = absl::StrCat("{\"time\":\"", stamp, "\"");
  AppendJsonField(&line, "level", LevelName(level));
  AppendJsonField(&line, "message", message);
  if (context != nullptr) {
    if (!context->job_id.empty()) AppendJsonField(&line, "job_id", context->job_id);
    if (!context->plan_id.empty()) AppendJsonField(&line, "plan_id", context->plan_id);
    if (!context->tenant.empty()) AppendJsonField(&line, "tenant", context->tenant);
    if (!context->source.empty()) AppendJsonField(&line, "source", context->source);
  }
  line.push_back('}');
  return line;
}

}  // namespace xtrain::server
