// xtrain-bench: `xtrain-bench <subcommand> [flags]`; each subcommand is one row of kSubcommands.

#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "bench/accuracy_bench.h"
#include "bench/layer_bench.h"
#include "bench/memory_bench.h"
#if XTRAIN_BENCH_SERVICE
#include "bench/service_bench.h"
#endif

namespace {

struct Subcommand {
  std::string_view name;
  std::string_view summary;
  absl::Status (*run)(const std::vector<std::string>& args);
};

const Subcommand kSubcommands[] = {
    {"layer", "time and memory of one conv layer: exact against XConv", &xtrain::bench::RunLayerBench},
    {"memory", "planned peaks against measured over budgets; largest batch per budget", &xtrain::bench::RunMemoryBench},
    {"accuracy", "Fashion-MNIST test accuracy: exact against planned XConv", &xtrain::bench::RunAccuracyBench},
};

void PrintUsage(std::FILE* out) {
  std::fprintf(out, "usage: xtrain-bench <subcommand> [flags]   (<subcommand> --help for its flags)\n");
  for (const Subcommand& command : kSubcommands) {
    std::fprintf(out, "  %-10.*s %.*s\n", static_cast<int>(command.name.size()), command.name.data(),
                 static_cast<int>(command.summary.size()), command.summary.data());
  }
#if XTRAIN_BENCH_SERVICE
  std::fprintf(out, "  %-10s %s\n", "service", "the service's latencies against a real xtrain-server (also xtrain-service-bench)");
#endif
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage(stderr);
    return 2;
  }
  const std::string_view name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    PrintUsage(stdout);
    return 0;
  }
#if XTRAIN_BENCH_SERVICE
  // Its own exit codes and flag parsing (shared with the standalone xtrain-service-bench).
  if (name == "service") return xtrain::bench::RunServiceBench(argc - 1, argv + 1);
#endif
  for (const Subcommand& command : kSubcommands) {
    if (command.name != name) continue;
    const absl::Status status = command.run(std::vector<std::string>(argv + 2, argv + argc));
    if (!status.ok()) {
      std::fprintf(stderr, "xtrain-bench %s: %s\n", argv[1], std::string(status.message()).c_str());
      return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
    }
    return 0;
  }
  std::fprintf(stderr, "xtrain-bench: unknown subcommand '%s'\n", argv[1]);
  PrintUsage(stderr);
  return 2;
}
