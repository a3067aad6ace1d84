#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/common/logging.h"
#include "xtrain/worker/v1/worker.pb.h"

namespace xtrain::server {

// How a worker process ended.
struct WorkerExit {
  bool finished = false;                       // it sent a Finished message before it ended
  xtrain::worker::v1::Finished finished_message;
  int exit_code = -1;                          // its exit status when it exited, else -1
  int signal = 0;                              // the signal that killed it, else 0
  // A sentence a person can act on: "exited with code 1", "killed by signal 9 (Killed)",
  // "sent a malformed message (<what was wrong>); killed by signal 9 (Killed)", with ": <text>" of the
  // Finished message when there is one. Parts joined by "; "; a stream cut inside a frame or output held
  // open past the exit adds its own part.
  std::string reason;
  std::string log_tail;                        // the last lines of its stderr
};

// Called on the supervisor's io_context, in the order things happened; on_exit once, last: after the
// process exited and both its socket and stderr reached end of stream (so nothing it wrote is lost).
// When the worker exits, what is left of its process group is killed; streams still open 5 s later (a
// process that left the group holds them) are closed and the reason says so. Handlers may call any
// Supervisor method and may destroy the Supervisor; none is called after that.
struct WorkerHandlers {
  std::function<void(const xtrain::worker::v1::WorkerMessage&)> on_message;
  std::function<void(const WorkerExit&)> on_exit;
};

struct SupervisorOptions {
  std::string worker_path;                     // the xtrain-worker executable
  std::vector<std::string> worker_args;        // extra arguments for every worker
  std::map<std::string, std::string> worker_env;  // added to the server's environment
  int log_tail_lines = 20;                     // stderr lines kept for WorkerExit::log_tail
  // Called with each line a worker writes to stderr or stdout (label, line), without its newline; a line
  // over 64 KiB comes in 64 KiB pieces, a last line without newline at end of stream. Default: into the
  // server's log under the worker's LogContext (ForwardWorkerLine).
  std::function<void(const std::string& label, const std::string& line)> on_log;
};

using WorkerId = int64_t;

// Starts and watches xtrain-worker processes (DESIGN.md §3): one per running job and per planning call.
// Each worker gets a Unix socket pair end as fd 3 (length-prefixed protobuf frames, server/protocol),
// its stderr and stdout piped back as its log, and dies with the server (PR_SET_PDEATHSIG and end of stream on
// its socket). A worker that crashes, is killed or breaks the protocol ends only its own work: the
// supervisor reports a WorkerExit and carries on. All methods and handlers run on `io`'s thread, and
// that thread must outlive the workers (PR_SET_PDEATHSIG follows the thread that forked). `io` outlives
// the Supervisor. It watches SIGCHLD with an asio signal_set (installed without SA_RESTART: blocking
// calls on other threads may see EINTR) and reaps only its own children.
class Supervisor {
 public:
  Supervisor(boost::asio::io_context& io, SupervisorOptions options);
  // Kills every worker still running and reaps it (waits for it); their on_exit is not called.
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Spawns a worker and sends it `first`. `label` names it in messages (the job id); `context` is whom
  // the lines the supervisor logs about it are about: its start, its exit, its own output (empty: job
  // id `label`). Unavailable when the process cannot be started (the sentence says why: missing binary,
  // fork failure), known before it returns; InvalidArgument when `first` is above kMaxFrameBytes.
  // worker_path is executed as given (no PATH search).
  absl::StatusOr<WorkerId> Start(const std::string& label, const xtrain::worker::v1::WorkerRequest& first,
                                 WorkerHandlers handlers, LogContext context = {});
  // Sends a later request (a Control). NotFound for a worker that has ended: exited, closed its socket
  // or stopped reading it. InvalidArgument for a request above kMaxFrameBytes.
  absl::Status Send(WorkerId id, const xtrain::worker::v1::WorkerRequest& request);
  // SIGKILL to its process group; its on_exit follows. Nothing for an ended or unknown worker.
  void Kill(WorkerId id);
  void KillAll();
  // The worker's process id; 0 once its process has been reaped (its on_exit may still be pending).
  pid_t pid(WorkerId id) const;
  // Workers whose on_exit has not run yet.
  size_t running() const;

 private:
  class Worker;
  void Reap();
  void OnSigchld();
  void WatchSigchld();

  boost::asio::io_context& io_;
  SupervisorOptions options_;
  std::map<WorkerId, std::shared_ptr<Worker>> workers_;
  WorkerId next_id_ = 1;
  struct SignalWatch;
  std::unique_ptr<SignalWatch> sigchld_;
};

}  // namespace xtrain::server
