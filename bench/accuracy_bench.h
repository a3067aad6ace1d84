#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace xtrain::bench {

// Flags of `xtrain-bench accuracy`: the training recipe (the same for every arm), how many seeds and
// where the results go. Zero means the preset of the full or the --quick run.
struct AccuracyBenchOptions {
  bool quick = false;            // one seed, 8192 training images, 2000 test images, 2 epochs, no grid
  // Intra-op threads (stated in the output). One: on this shared 2-core VM two threads ran 1.3x
  // (batch 128) to 4x (batch 32) slower than one, OpenMP spinning against other processes.
  int threads = 1;
  int64_t epochs = 0;            // full: 12; quick: 2
  int64_t train_subset = 0;      // first N training images; full: all 60000; quick: 8192
  int64_t test_subset = 0;       // first N test images; full: all 10000; quick: 2000
  int seeds = 0;                 // seeds of the exact, lean and budget arms; full: 5; quick: 1
  int64_t width = 32;            // small_cnn's width (channels of its first convolution)
  int64_t batch = 128;
  std::string optimizer = "sgd";  // "sgd" (momentum 0.9) or "adam"
  double lr = 0.1;               // peak learning rate, after a linear warm-up, then cosine decay to 0
  double weight_decay = 5e-4;
  double warmup_epochs = 1;      // linear warm-up over this many epochs' steps
  std::vector<int64_t> grid_probes;  // fixed r on every conv, one seed each; full: {2, 16}; quick: none
  bool grid_set = false;         // --grid was given (an empty list turns the grid off)
  int64_t fidelity_interval = 50;  // telemetry every N steps in XConv runs; 0 = off
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

// The `accuracy` subcommand: small_cnn on Fashion-MNIST with one recipe for every arm: exact, lean
// (every convolution exact with the lean layers: exact gradients), and XConv at the probes the planner
// picks for budgets of 50% and 30% of the exact job's activation memory, over several seeds; then a
// grid of fixed probe counts (one seed). Test accuracy, training time, measured and predicted peaks
// and the gradient-fidelity ratio per arm, and the accuracy gap to exact with its standard error.
// Progress goes to stderr.
absl::Status RunAccuracyBench(const std::vector<std::string>& args);

}  // namespace xtrain::bench
