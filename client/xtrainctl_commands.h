#pragma once

#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "xtrain/v1/training_service.pb.h"

namespace xtrain::client {

// xtrainctl's exit codes, for scripts (also in --help and the README).
enum ExitCode : int {
  kExitOk = 0,
  kExitJobFailed = 1,          // watch, submit --watch: the job failed or was cancelled
  kExitUsage = 2,              // a malformed command line
  kExitNotFound = 3,           // no such job, artifact or file
  kExitInvalidArgument = 4,    // the server or the spec file refused a value
  kExitResourceExhausted = 5,  // no plan fits the budget
  kExitUnavailable = 6,        // the server cannot be reached (or did not answer in time)
  kExitOther = 7,
};

// The exit code of an error: NOT_FOUND 3, INVALID_ARGUMENT and OUT_OF_RANGE 4, RESOURCE_EXHAUSTED 5,
// UNAVAILABLE and DEADLINE_EXCEEDED 6, anything else 7; OK 0.
int ExitCodeFor(const absl::Status& status);

// A command line split into its subcommand, positional arguments and flags (by name without dashes,
// values in order; a switch has one empty value). Flags are checked against the subcommand's.
struct CommandLine {
  std::string command;
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> flags;

  bool Has(const std::string& name) const { return flags.count(name) > 0; }
  // The flag's last value, or `fallback`.
  std::string Get(const std::string& name, const std::string& fallback = "") const;
};

// InvalidArgument for an unknown subcommand or flag, a flag without its value, or a wrong number of
// positional arguments (exit code 2).
absl::StatusOr<CommandLine> ParseCommandLine(const std::vector<std::string>& args);

// plan and submit: the spec flags (--model, --budget, --set FIELD=VALUE, ...) over `spec`, in the
// order the flags are documented. InvalidArgument naming the flag for a bad value.
absl::Status ApplySpecFlags(const CommandLine& line, xtrain::v1::JobSpec& spec);

// Where xtrainctl writes and how wide its terminal is.
struct Terminal {
  bool is_tty = false;   // stdout is a terminal: watch draws a progress bar
  int width = 80;
};

// Runs xtrainctl with `args` (without the program's name): results to `out`, errors to `err`.
// Returns the exit code.
int RunXtrainctl(const std::vector<std::string>& args, std::ostream& out, std::ostream& err, Terminal terminal = {});

// --help.
std::string XtrainctlUsage();

}  // namespace xtrain::client
