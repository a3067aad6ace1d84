// xtrain-server: the gRPC service (DESIGN.md §3). No LibTorch here: jobs run in xtrain-worker processes.
#include <csignal>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <grpc/support/log.h>

#include "absl/synchronization/mutex.h"
#include "server/api/server.h"
#include "server/api/server_config.h"
#include "server/common/logging.h"
#include "spdlog/spdlog.h"

namespace {

// gRPC's own messages go into the server's log (in its format) rather than straight to stderr.
void GrpcLog(gpr_log_func_args* args) {
  spdlog::level::level_enum level = spdlog::level::info;
  if (args->severity == GPR_LOG_SEVERITY_ERROR) level = spdlog::level::err;
  if (args->severity == GPR_LOG_SEVERITY_DEBUG) level = spdlog::level::debug;
  spdlog::log(level, "grpc: {} ({}:{})", args->message, args->file, args->line);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace xtrain::server;
  absl::StatusOr<ServerCommand> command = LoadServerCommand(std::vector<std::string>(argv + 1, argv + argc));
  if (!command.ok()) {
    std::cerr << "xtrain-server: " << command.status().message() << "\n";
    return 2;
  }
  if (command->help) {
    std::cout << ServerUsage();
    return 0;
  }
  // The level was checked when the command was read.
  xtrain::server::ConfigureServerLogging(command->log_format, *ParseLogLevel(command->log_level));
  gpr_set_log_function(GrpcLog);
  // Debian builds Abseil without NDEBUG, so every absl::Mutex lock (gRPC's own included) records lock
  // order in one process-wide deadlock graph under a spin lock: a debugging aid that serialises the
  // server's threads. The tests keep it on; the server does not.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // Signals are taken synchronously by one thread; the others never see them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(command->options);
  if (!server.ok()) {
    spdlog::critical("xtrain-server did not start: {}", std::string(server.status().message()));
    return 1;
  }
  int signal = 0;
  for (;;) {
    sigwait(&signals, &signal);
    if (signal != SIGHUP) break;
    if ((*server)->options().tokens_file.empty()) {
      spdlog::info("received SIGHUP: no tokens file to reload");
    } else {
      (void)(*server)->ReloadTokens();  // it logs what happened
    }
  }
  spdlog::info("received {}", signal == SIGTERM ? "SIGTERM" : "SIGINT");
  (*server)->Shutdown(command->options.grace_seconds);
  return 0;
}
