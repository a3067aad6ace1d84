#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/api/server.h"
#include "server/common/logging.h"

namespace xtrain::server {

// What the command line asked for besides the server's options.
struct ServerCommand {
  ServerOptions options;
  std::string log_level = "info";   // trace, debug, info, warn, error, critical, off (checked)
  LogFormat log_format = LogFormat::kText;  // text for people, json: one JSON object a line
  bool help = false;
};

// The server's configuration from, in rising precedence: defaults, a YAML file (--config FILE or
// XTRAIN_CONFIG), XTRAIN_* environment variables, command-line flags. InvalidArgument with a sentence
// naming the flag, variable or key for anything malformed.
absl::StatusOr<ServerCommand> LoadServerCommand(const std::vector<std::string>& args);

// "4GiB", "512MiB", "1.5G", "1000000" -> bytes.
absl::StatusOr<int64_t> ParseBytes(const std::string& text);
// "cpu", "cpu:capacity=4GiB:slots=2" -> a device.
absl::StatusOr<DeviceState> ParseDevice(const std::string& text);

// --help text.
std::string ServerUsage();

}  // namespace xtrain::server
