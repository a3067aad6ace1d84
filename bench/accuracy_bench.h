#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace xtrain::bench {

// Flags of `xtrain-bench accuracy`: how long to train and where the results go.
struct AccuracyBenchOptions {
  bool quick = false;            // one seed, an 8192-image subset, 1 epoch, a 2000-image test slice
  // Intra-op threads (stated in the output). One: on this shared 2-core VM two threads ran 1.3x
  // (batch 128) to 4x (batch 32) slower than one, OpenMP spinning against other processes.
  int threads = 1;
  int64_t epochs = 0;            // 0: the preset (full: 2; quick: 1)
  int64_t train_subset = 0;      // first N training images; 0: the preset (full: all 60000; quick: 8192)
  int64_t test_subset = 0;       // first N test images; 0: the preset (full: all 10000; quick: 2000)
  int seeds = 0;                 // seeds of the exact and budget runs; 0: the preset (full: 3; quick: 1)
  int64_t fidelity_interval = 25;  // telemetry every N steps in XConv runs; 0 = off
  double lr = 0.01;              // Adam's peak learning rate (cosine decay over the run)
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  std::string json_path;         // one JSON object per run and line; empty = none
  std::string markdown_path;     // markdown table of the results; empty = none
  std::string curves_path;       // per-step and per-epoch loss and fidelity as JSON lines; empty = none
  bool help = false;             // print the usage and exit
};

// Parses the arguments that follow `accuracy`; InvalidArgument names the bad flag.
absl::StatusOr<AccuracyBenchOptions> ParseAccuracyBenchFlags(const std::vector<std::string>& args);

// Usage text of the `accuracy` subcommand.
std::string AccuracyBenchUsage();

// The `accuracy` subcommand: small_cnn on Fashion-MNIST, exact against XConv at the probes the
// planner picks for budgets of 50% and 30% of the exact activation memory (three seeds), and a
// grid of fixed probe counts and batch sizes; test accuracy, measured and predicted peaks and the
// gradient-fidelity ratio per configuration. Progress goes to stderr.
absl::Status RunAccuracyBench(const std::vector<std::string>& args);

}  // namespace xtrain::bench
