#pragma once

// What the benchmark subcommands share: flag splitting and number parsing, JSON lines, byte and
// time formatting.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace xtrain::bench {

// One flag of a command line: "--name value", "--name=value", or a switch without a value.
struct Flag {
  std::string name;
  std::string value;  // empty for a switch
};

// Splits `args` into flags. `switches` take no value; `valued` take one (the next argument unless
// given with '='). Anything else is InvalidArgument naming `--help` of `subcommand`.
absl::StatusOr<std::vector<Flag>> SplitFlags(const std::vector<std::string>& args,
                                             const std::vector<absl::string_view>& switches,
                                             const std::vector<absl::string_view>& valued,
                                             absl::string_view subcommand);

// An integer >= `min`, or InvalidArgument naming the flag.
absl::StatusOr<int64_t> ParseInt(absl::string_view flag, absl::string_view value, int64_t min);
// A number > 0, or InvalidArgument naming the flag.
absl::StatusOr<double> ParsePositive(absl::string_view flag, absl::string_view value);

// A JSON object built key by key (strings escaped; non-finite numbers as null).
class JsonObject {
 public:
  JsonObject& String(absl::string_view key, absl::string_view value);
  JsonObject& Int(absl::string_view key, int64_t value);
  JsonObject& Number(absl::string_view key, double value);
  JsonObject& Bool(absl::string_view key, bool value);
  JsonObject& Object(absl::string_view key, const JsonObject& value);
  std::string Text() const;

 private:
  JsonObject& Raw(absl::string_view key, absl::string_view value);
  std::string body_;
};

// "1.23 GiB", "12.34 MiB" or "5.6 KiB".
std::string FormatBytes(int64_t bytes);
// The local time in strftime `format`.
std::string Now(const char* format);

}  // namespace xtrain::bench
