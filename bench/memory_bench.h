#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace xtrain::bench {

// `xtrain-bench memory`: per net, the exact peak against planned peaks over a budget sweep
// (predicted and measured with the CPU meter), planning time, and the largest batch a fixed budget
// holds exact against XConv. Flags: see MemoryBenchUsage().
absl::Status RunMemoryBench(const std::vector<std::string>& args);

// Usage text of the `memory` subcommand.
std::string MemoryBenchUsage();

}  // namespace xtrain::bench
