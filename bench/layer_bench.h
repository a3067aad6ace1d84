#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace xtrain::bench {

// Flags of `xtrain-bench layer`: which cases to run and where the results go.
struct LayerBenchOptions {
  bool quick = false;              // a small slice that runs in under a minute on 2 cores
  int threads = 0;                 // intra-op threads; 0 = hardware threads
  int reps = 3;                    // timed rounds (exact, tap, reconstruct in turn) after a warm-up
  bool input_grad = true;          // time dX too (a hidden layer); false: a first layer
  std::string json_path;           // one JSON object per measured case and line; empty = none
  std::string markdown_path;       // markdown table of the results; empty = none
  std::string filter;              // run only cases whose name contains this; empty = all
  double max_input_gib = 3.0;      // skip cases whose exact input tensor would exceed this
  uint64_t seed = 1234;            // seed of the data and of the probes (one seed per case)
  bool help = false;               // print the usage and exit
};

// Parses the arguments that follow `layer`; InvalidArgument names the bad flag.
absl::StatusOr<LayerBenchOptions> ParseLayerBenchFlags(const std::vector<std::string>& args);

// Usage text of the `layer` subcommand.
std::string LayerBenchUsage();

// The `layer` subcommand: times forward+backward of one conv layer, exact against XConv (tap,
// reconstruction and auto routes), measures the bytes kept for backward and the weight-gradient
// error, and writes JSON lines and a markdown table. Progress goes to stderr.
absl::Status RunLayerBench(const std::vector<std::string>& args);

}  // namespace xtrain::bench
