#include "bench/bench_util.h"

#include <algorithm>
#include <cmath>
#include <ctime>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace xtrain::bench {
namespace {

bool Contains(const std::vector<absl::string_view>& names, absl::string_view name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::string Quote(absl::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", static_cast<int>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace

absl::StatusOr<std::vector<Flag>> SplitFlags(const std::vector<std::string>& args,
                                             const std::vector<absl::string_view>& switches,
                                             const std::vector<absl::string_view>& valued,
                                             absl::string_view subcommand) {
  std::vector<Flag> flags;
  for (size_t i = 0; i < args.size(); ++i) {
    Flag flag{args[i], ""};
    std::optional<std::string> value;
    if (const size_t eq = flag.name.find('='); eq != std::string::npos) {
      value = flag.name.substr(eq + 1);
      flag.name = flag.name.substr(0, eq);
    }
    if (Contains(switches, flag.name)) {
      if (value) return absl::InvalidArgumentError(absl::StrCat(flag.name, " takes no value"));
    } else if (Contains(valued, flag.name)) {
      if (!value) {
        if (i + 1 >= args.size()) {
          return absl::InvalidArgumentError(
              absl::StrCat(flag.name, " needs a value; see `xtrain-bench ", subcommand, " --help`"));
        }
        value = args[++i];
      }
      flag.value = *value;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag '", flag.name, "'; see `xtrain-bench ", subcommand, " --help`"));
    }
    flags.push_back(std::move(flag));
  }
  return flags;
}

absl::StatusOr<int64_t> ParseInt(absl::string_view flag, absl::string_view value, int64_t min) {
  int64_t n = 0;
  if (!absl::SimpleAtoi(value, &n) || n < min) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " needs an integer >= ", min, ", got '", value, "'"));
  }
  return n;
}

absl::StatusOr<double> ParsePositive(absl::string_view flag, absl::string_view value) {
  double x = 0;
  if (!absl::SimpleAtod(value, &x) || !(x > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " needs a positive number, got '", value, "'"));
  }
  return x;
}

JsonObject& JsonObject::String(absl::string_view key, absl::string_view value) { return Raw(key, Quote(value)); }
JsonObject& JsonObject::Int(absl::string_view key, int64_t value) { return Raw(key, absl::StrCat(value)); }
JsonObject& JsonObject::Number(absl::string_view key, double value) {
  return Raw(key, std::isfinite(value) ? absl::StrFormat("%.6g", value) : "null");
}
JsonObject& JsonObject::Bool(absl::string_view key, bool value) { return Raw(key, value ? "true" : "false"); }
JsonObject& JsonObject::Object(absl::string_view key, const JsonObject& value) { return Raw(key, value.Text()); }
std::string JsonObject::Text() const { return absl::StrCat("{", body_, "}"); }

JsonObject& JsonObject::Raw(absl::string_view key, absl::string_view value) {
  absl::StrAppend(&body_, body_.empty() ? "" : ", ", Quote(key), ": ", value);
  return *this;
}

std::string FormatBytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1024.0 * 1024.0 * 1024.0) return absl::StrFormat("%.2f GiB", b / (1024.0 * 1024.0 * 1024.0));
  if (b >= 1024.0 * 1024.0) return absl::StrFormat("%.2f MiB", b / (1024.0 * 1024.0));
  return absl::StrFormat("%.1f KiB", b / 1024.0);
}

std::string Now(const char* format) {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char text[64];
  std::strftime(text, sizeof(text), format, &local);
  return text;
}

}  // namespace xtrain::bench
