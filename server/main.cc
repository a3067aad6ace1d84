// xtrain-server: the gRPC service (DESIGN.md §3). No LibTorch here: jobs run in xtrain-worker processes.
#include <csignal>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "server/api/server.h"
#include "server/api/server_config.h"
#include "spdlog/spdlog.h"

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
  spdlog::set_level(spdlog::level::from_str(command->log_level));
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
    std::cerr << "xtrain-server: " << server.status().message() << "\n";
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
