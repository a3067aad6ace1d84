// xtrain-worker: plans or trains one job for xtrain-server, then exits (DESIGN.md §3). It reads
// WorkerRequests from fd 3 and writes WorkerMessages there (server/protocol/frame.h); its stderr is
// its log ("<level>: <message>" lines at XTRAIN_LOG_LEVEL, which the server forwards). It caps its own memory at the job's budget and dies with the server.
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "core/train/checkpoint.h"
#include "server/common/logging.h"
#include "server/protocol/frame.h"
#include "server/worker/job_runner.h"
#include "xtrain/worker/v1/worker.pb.h"

namespace {

constexpr int kChannelFd = 3;

void Usage() {
  std::cerr << "xtrain-worker: runs one job for xtrain-server over fd 3 (length-prefixed protobuf frames).\n"
               "It is started by the server; run it by hand only to debug the protocol.\n"
               "xtrain-worker --check-checkpoints FILE...: reads each checkpoint as a resuming worker\n"
               "would and prints 'FILE: OK step N' or 'FILE: <code>: <why>'; exits 0 when all load.\n";
}

// --check-checkpoints: every entry's CRC-32 and the training state, as a resume reads them.
int CheckCheckpoints(int count, char** paths) {
  int failed = 0;
  for (int i = 0; i < count; ++i) {
    absl::StatusOr<xtrain::core::Checkpoint> read = xtrain::core::Checkpoint::Read(paths[i]);
    if (read.ok()) {
      std::cout << paths[i] << ": OK step " << read->state().step << "\n";
    } else {
      std::cout << paths[i] << ": " << read.status().ToString() << "\n";
      ++failed;
    }
  }
  return failed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace xtrain::server;
  if (argc > 2 && std::string(argv[1]) == "--check-checkpoints") return CheckCheckpoints(argc - 2, argv + 2);
  if (argc > 1) {
    Usage();
    return std::string(argv[1]) == "--help" ? 0 : 2;
  }
  // Die with the server, even if it was SIGKILLed (the supervisor sets this too; it is cheap to repeat).
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  std::signal(SIGPIPE, SIG_IGN);
  ConfigureWorkerLogging();
  absl::StatusOr<std::optional<std::string>> first = ReadFrame(kChannelFd);
  if (!first.ok() || !first->has_value()) {
    spdlog::error("xtrain-worker: no request on fd 3{}",
                  first.ok() ? std::string() : absl::StrCat(": ", first.status().message()));
    return 2;
  }
  xtrain::worker::v1::WorkerRequest request;
  if (absl::Status s = ParseFrame(**first, request); !s.ok()) {
    spdlog::error("xtrain-worker: {}", std::string(s.message()));
    return 2;
  }
  JobRunner runner(kChannelFd);
  switch (request.kind_case()) {
    case xtrain::worker::v1::WorkerRequest::kPlan:
      return runner.Plan(request.plan());
    case xtrain::worker::v1::WorkerRequest::kTrain:
      return runner.Train(request.train());
    default:
      spdlog::error("xtrain-worker: the first request must be a plan or a train call");
      return 2;
  }
}
