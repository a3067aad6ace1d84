#include "server/supervisor/supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"

namespace {

using namespace std::chrono_literals;
using xtrain::server::SupervisorOptions;
using xtrain::server::WorkerExit;
using xtrain::server::WorkerHandlers;
using xtrain::server::WorkerId;
using xtrain::worker::v1::Control;
using xtrain::worker::v1::WorkerMessage;
using xtrain::worker::v1::WorkerRequest;

// A first request whose job id tells tests/server/fake_worker.cc what to do.
WorkerRequest Job(const std::string& mode, bool plan = false) {
  WorkerRequest request;
  (plan ? request.mutable_plan()->mutable_job() : request.mutable_train()->mutable_job())->set_job_id(mode);
  return request;
}

WorkerRequest Cancel(const std::string& reason) {
  WorkerRequest request;
  request.mutable_control()->set_action(Control::CANCEL);
  request.mutable_control()->set_reason(reason);
  return request;
}

// What one worker's handlers saw.
struct Seen {
  std::vector<WorkerMessage> messages;
  std::optional<WorkerExit> exit;
  int exits = 0;
  bool message_after_exit = false;
};

WorkerHandlers Record(Seen& seen) {
  WorkerHandlers handlers;
  handlers.on_message = [&seen](const WorkerMessage& message) {
    if (seen.exits > 0) seen.message_after_exit = true;
    seen.messages.push_back(message);
  };
  handlers.on_exit = [&seen](const WorkerExit& exit) {
    ++seen.exits;
    seen.exit = exit;
  };
  return handlers;
}

// True when `pid` is no longer a live process: gone, or a zombie its new parent has not reaped yet.
bool Gone(pid_t pid) {
  if (::kill(pid, 0) != 0) return errno == ESRCH;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  const size_t name_end = line.rfind(')');
  if (name_end == std::string::npos || name_end + 2 >= line.size()) return false;
  const char state = line[name_end + 2];
  return state == 'Z' || state == 'X';
}

bool WaitGone(pid_t pid, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!Gone(pid)) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

// Kills, at scope exit, the processes a test learned of outside the supervisor (grandchildren, a forked
// server), so a failing test leaves nothing behind.
struct KillOnExit {
  std::vector<pid_t> pids;
  ~KillOnExit() {
    for (pid_t pid : pids) {
      if (pid > 0 && !Gone(pid)) ::kill(pid, SIGKILL);
    }
  }
};

class Supervisor : public ::testing::Test {
 protected:
  // The fixture's supervisor, made on first use with the fake worker and on_log recording every line.
  xtrain::server::Supervisor& supervisor(const std::function<void(SupervisorOptions&)>& adjust = {}) {
    if (!supervisor_) {
      SupervisorOptions options;
      options.worker_path = XTRAIN_FAKE_WORKER;
      options.on_log = [this](const std::string& label, const std::string& line) { logs_.emplace_back(label, line); };
      if (adjust) adjust(options);
      supervisor_ = std::make_unique<xtrain::server::Supervisor>(io_, std::move(options));
    }
    return *supervisor_;
  }

  // Runs the io_context until `done` or the time limit; returns `done()`.
  bool RunUntil(const std::function<bool()>& done, std::chrono::milliseconds limit = 30s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done()) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      io_.restart();
      io_.run_for(20ms);
    }
    return true;
  }

  // The pid a "child" worker logged for its grandchild; 0 when the line did not come.
  pid_t WaitForGrandchild(const std::string& label) {
    pid_t grandchild = 0;
    RunUntil([&] {
      for (const auto& [from, line] : logs_) {
        if (from == label && absl::StartsWith(line, "grandchild ") &&
            absl::SimpleAtoi(line.substr(11), &grandchild)) {
          return true;
        }
      }
      return false;
    });
    return grandchild;
  }

  boost::asio::io_context io_;
  std::vector<std::pair<std::string, std::string>> logs_;
  std::unique_ptr<xtrain::server::Supervisor> supervisor_;  // destroyed before io_
};

TEST_F(Supervisor, MessagesArriveInOrderThenExitOnce) {
  Seen seen;
  absl::StatusOr<WorkerId> id = supervisor().Start("job-echo", Job("echo-3"), Record(seen));
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_GT(supervisor().pid(*id), 0);
  EXPECT_EQ(supervisor().running(), 1u);
  ASSERT_TRUE(RunUntil([&] { return seen.exits > 0; }));
  RunUntil([] { return false; }, 200ms);  // nothing may follow on_exit

  ASSERT_EQ(seen.messages.size(), 4u);
  for (int step = 1; step <= 3; ++step) {
    ASSERT_TRUE(seen.messages[step - 1].has_step());
    EXPECT_EQ(seen.messages[step - 1].step().step(), step);
  }
  ASSERT_TRUE(seen.messages[3].has_finished());
  EXPECT_EQ(seen.exits, 1);
  EXPECT_FALSE(seen.message_after_exit);
  const WorkerExit& exit = *seen.exit;
  EXPECT_TRUE(exit.finished);
  EXPECT_EQ(exit.finished_message.message(), "echoed 3");
  EXPECT_EQ(exit.finished_message.step(), 3);
  EXPECT_EQ(exit.exit_code, 0);
  EXPECT_EQ(exit.signal, 0);
  EXPECT_EQ(exit.reason, "exited with code 0: echoed 3");
  EXPECT_EQ(supervisor().running(), 0u);
  EXPECT_EQ(supervisor().pid(*id), 0);
}

// The worker exits with much of its messages and lines unread (a slow reader here): on_exit waits for all.
TEST_F(Supervisor, EverythingWrittenArrivesBeforeOnExit) {
  constexpr int kMessages = 300;
  constexpr int kLines = 10 * kMessages;
  Seen seen;
  WorkerHandlers handlers = Record(seen);
  handlers.on_message = [&, record = handlers.on_message](const WorkerMessage& message) {
    record(message);
    std::this_thread::sleep_for(1ms);
  };
  ASSERT_TRUE(supervisor().Start("job-flood", Job("flood-" + std::to_string(kMessages)), handlers).ok());
  ASSERT_TRUE(RunUntil([&] { return seen.exits > 0; }));
  ASSERT_EQ(seen.messages.size(), static_cast<size_t>(kMessages + 1));
  for (int i = 0; i < kMessages; ++i) ASSERT_EQ(seen.messages[i].checkpoint().step(), i + 1);
  EXPECT_TRUE(seen.messages.back().has_finished());
  ASSERT_EQ(logs_.size(), static_cast<size_t>(kLines));
  EXPECT_TRUE(absl::StartsWith(logs_.back().second, "flood " + std::to_string(kLines) + " "));
  EXPECT_EQ(seen.exit->reason, "exited with code 0: flooded " + std::to_string(kMessages));
}

TEST_F(Supervisor, CrashReportsTheSignal) {
  Seen seen;
  ASSERT_TRUE(supervisor().Start("job-crash", Job("crash"), Record(seen)).ok());
  ASSERT_TRUE(RunUntil([&] { return seen.exits > 0; }));
  EXPECT_EQ(seen.exit->signal, SIGABRT);
  EXPECT_EQ(seen.exit->exit_code, -1);
  EXPECT_FALSE(seen.exit->finished);
  EXPECT_TRUE(absl::StartsWith(seen.exit->reason, "killed by signal 6 (Aborted)")) << seen.exit->reason;
}

TEST_F(Supervisor, ExitCodeIsReported) {
  Seen seen;
  ASSERT_TRUE(supervisor().Start("job-exit", Job("exit-7"), Record(seen)).ok());
  ASSERT_TRUE(RunUntil([&] { return seen.exits > 0; }));
  EXPECT_EQ(seen.exit->exit_code, 7);
  EXPECT_EQ(seen.exit->signal, 0);
  EXPECT_FALSE(seen.exit->finished);
  EXPECT_EQ(seen.exit->reason, "exited with code 7");
  EXPECT_TRUE(seen.messages.empty());
}

TEST_F(Supervisor, MissingBinaryIsUnavailableAtStart) {
  const std::string missing = "/nonexistent/xtrain-worker";
  supervisor([&](SupervisorOptions& options) { options.worker_path = missing; });
  Seen seen;
  absl::StatusOr<WorkerId> id = supervisor().Start("job-missing", Job("echo-1"), Record(seen));
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(id.status().message(), missing)) << id.status();
  EXPECT_TRUE(absl::StrContains(id.status().message(), "No such file or directory")) << id.status();
  EXPECT_EQ(supervisor().running(), 0u);
  RunUntil([] { return false; }, 100ms);
  EXPECT_EQ(seen.exits, 0);
}

TEST_F(Supervisor, NonExecutableBinaryIsUnavailableAtStart) {
  char path[] = "/tmp/xtrain-not-executable-XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ::close(fd);
  struct Unlink {
    const char* path;
    ~Unlink() { ::unlink(path); }
  } unlink{path};
  supervisor([&](SupervisorOptions& options) { options.worker_path = path; });
  absl::StatusOr<WorkerId> id = supervisor().Start("job-noexec", Job("echo-1"), {});
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(id.status().message(), "Permission denied")) << id.status();
}

TEST_F(Supervisor, MalformedFrameKillsTheWorkerAndSaysSo) {
  Seen garbage, oversize;
  ASSERT_TRUE(supervisor().Start("job-garbage", Job("garbage"), Record(garbage)).ok());
  ASSERT_TRUE(supervisor().Start("job-oversize", Job("oversize"), Record(oversize)).ok());
  ASSERT_TRUE(RunUntil([&] { return garbage.exits > 0 && oversize.exits > 0; }));
  for (const Seen* seen : {&garbage, &oversize}) {
    EXPECT_TRUE(seen->messages.empty());
    EXPECT_EQ(seen->exit->signal, SIGKILL);  // it sleeps after the bad frame: only the kill ends it
    EXPECT_TRUE(absl::StartsWith(seen->exit->reason, "sent a malformed message (")) << seen->exit->reason;
    EXPECT_TRUE(absl::StrContains(seen->exit->reason, "killed by signal 9 (Killed)")) << seen->exit->reason;
  }
  EXPECT_TRUE(absl::StrContains(garbage.exit->reason, "not a valid xtrain.worker.v1.WorkerMessage"))
      << garbage.exit->reason;
  EXPECT_TRUE(absl::StrContains(oversize.exit->reason, "limit")) << oversize.exit->reason;
}

TEST_F(Supervisor, SendReachesTheWorker) {
  Seen seen;
  absl::StatusOr<WorkerId> id = supervisor().Start("job-hang", Job("hang"), Record(seen));
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(supervisor().Send(*id, Cancel("user asked")).ok());
  ASSERT_TRUE(RunUntil([&] { return seen.exits > 0; }));
  ASSERT_EQ(seen.messages.size(), 1u);
  ASSERT_TRUE(seen.exit->finished);
  EXPECT_EQ(seen.exit->finished_message.code(), static_cast<int>(absl::StatusCode::kCancelled));
  EXPECT_EQ(seen.exit->exit_code, 0);
  EXPECT_EQ(seen.exit->reason, "exited with code 0: cancelled: user asked");
}

TEST_F(Supervisor, SendAfterExitIsNotFound) {
  Seen seen;
  absl::StatusOr<WorkerId> id = supervisor().Start("job-exit", Job("exit-7"), Record(seen));
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(RunUntil([&] { return seen.exits > 0; }));
  EXPECT_EQ(supervisor().Send(*id, Cancel("late")).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(supervisor().Send(*id + 1000, Cancel("unknown")).code(), absl::StatusCode::kNotFound);
  supervisor().Kill(*id);  // nothing to kill, nothing reported
  RunUntil([] { return false; }, 100ms);
  EXPECT_EQ(seen.exits, 1);
}

TEST_F(Supervisor, KillReachesTheGrandchild) {
  Seen seen;
  absl::StatusOr<WorkerId> id = supervisor().Start("job-child", Job("child"), Record(seen));
  ASSERT_TRUE(id.ok()) << id.status();
  const pid_t grandchild = WaitForGrandchild("job-child");
  KillOnExit guard{{grandchild}};
  ASSERT_GT(grandchild, 0);
  EXPECT_FALSE(Gone(grandchild));
  supervisor().Kill(*id);
  ASSERT_TRUE(RunUntil([&] { return seen.exits > 0; }));
  EXPECT_EQ(seen.exit->signal, SIGKILL);
  EXPECT_EQ(seen.exit->reason, "killed by signal 9 (Killed)");
  EXPECT_TRUE(WaitGone(grandchild, 5s));
}

TEST_F(Supervisor, FiftyWorkersAtOnce) {
  constexpr int kWorkers = 50;
  std::vector<Seen> seen(kWorkers);
  for (int i = 0; i < kWorkers; ++i) {
    absl::StatusOr<WorkerId> id =
        supervisor().Start("job-" + std::to_string(i), Job("echo-" + std::to_string(i % 5), i % 2 == 0), Record(seen[i]));
    ASSERT_TRUE(id.ok()) << id.status();
  }
  EXPECT_EQ(supervisor().running(), static_cast<size_t>(kWorkers));
  ASSERT_TRUE(RunUntil([&] { return supervisor().running() == 0; }, 120s));
  for (int i = 0; i < kWorkers; ++i) {
    SCOPED_TRACE(i);
    const int steps = i % 5;
    EXPECT_EQ(seen[i].exits, 1);
    EXPECT_FALSE(seen[i].message_after_exit);
    ASSERT_EQ(seen[i].messages.size(), static_cast<size_t>(steps + 1));
    for (int step = 1; step <= steps; ++step) EXPECT_EQ(seen[i].messages[step - 1].step().step(), step);
    ASSERT_TRUE(seen[i].exit.has_value());
    EXPECT_EQ(seen[i].exit->finished_message.message(), "echoed " + std::to_string(steps));
    EXPECT_EQ(seen[i].exit->exit_code, 0);
  }
}

TEST_F(Supervisor, StderrLinesReachOnLogAndTheTail) {
  supervisor([](SupervisorOptions& options) { options.log_tail_lines = 5; });
  Seen seen;
  ASSERT_TRUE(supervisor().Start("job-spam", Job("spam-stderr"), Record(seen)).ok());
  ASSERT_TRUE(RunUntil([&] { return seen.exits > 0; }));

  std::vector<std::string> lines;
  for (const auto& [label, line] : logs_) {
    EXPECT_EQ(label, "job-spam");
    lines.push_back(line);
  }
  // 1000 lines, a 150,000-byte line in 64 KiB pieces, and the last line that had no newline.
  ASSERT_EQ(lines.size(), 1000u + 3u + 1u);
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(lines[i].size(), 200u);
    ASSERT_TRUE(absl::StartsWith(lines[i], "line " + std::to_string(i) + " ")) << lines[i].substr(0, 20);
  }
  EXPECT_EQ(lines[1000], std::string(65536, 'y'));
  EXPECT_EQ(lines[1001], std::string(65536, 'y'));
  EXPECT_EQ(lines[1002], std::string(150000 - 2 * 65536, 'y'));
  EXPECT_EQ(lines[1003], "last words");
  const std::vector<std::string> last(lines.end() - 5, lines.end());
  EXPECT_EQ(seen.exit->log_tail, absl::StrJoin(last, "\n"));
  EXPECT_EQ(seen.exit->reason, "exited with code 0: spammed");
}

TEST_F(Supervisor, WorkerGetsItsDescriptorsEnvironmentAndArguments) {
  supervisor([](SupervisorOptions& options) {
    options.worker_args = {"--alpha", "beta"};
    options.worker_env = {{"XTRAIN_FAKE_VALUE", "42"}};
  });
  ASSERT_EQ(::setenv("XTRAIN_FAKE_VALUE", "from-the-server", 1), 0);  // worker_env wins
  const int leaked = ::open("/dev/null", O_RDONLY);                   // no CLOEXEC: must not reach it
  ASSERT_GE(leaked, 0);
  Seen seen;
  absl::StatusOr<WorkerId> id = supervisor().Start("job-inspect", Job("inspect"), Record(seen));
  ::close(leaked);
  ::unsetenv("XTRAIN_FAKE_VALUE");
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(RunUntil([&] { return seen.exits > 0; }));
  ASSERT_TRUE(seen.exit->finished) << seen.exit->reason;

  // stdout and stderr are one pipe, the log the supervisor reads: all a worker prints reaches the log.
  EXPECT_EQ(seen.exit->finished_message.message(),
            "fds=0,1,2,3 stdin=/dev/null stdout=stderr stderr=pipe own_group=1 env=42 args=--alpha,beta");
}

TEST_F(Supervisor, HandlersMayDestroyTheSupervisor) {
  Seen seen;
  WorkerHandlers handlers = Record(seen);
  handlers.on_message = [&](const WorkerMessage& message) {
    seen.messages.push_back(message);
    supervisor_.reset();
  };
  absl::StatusOr<WorkerId> id = supervisor().Start("job-echo", Job("echo-3"), std::move(handlers));
  ASSERT_TRUE(id.ok()) << id.status();
  const pid_t pid = supervisor().pid(*id);
  ASSERT_TRUE(RunUntil([&] { return !supervisor_; }));
  RunUntil([] { return false; }, 300ms);
  EXPECT_EQ(seen.messages.size(), 1u);
  EXPECT_EQ(seen.exits, 0);
  EXPECT_EQ(::kill(pid, 0), -1);  // reaped by the destructor
}

TEST_F(Supervisor, DestructionLeavesNoProcessBehind) {
  std::vector<Seen> seen(4);
  std::vector<pid_t> pids;
  int index = 0;
  for (const char* mode : {"hang", "hang", "deaf", "child"}) {
    absl::StatusOr<WorkerId> id = supervisor().Start(std::string("job-") + mode, Job(mode), Record(seen[index++]));
    ASSERT_TRUE(id.ok()) << id.status();
    pids.push_back(supervisor().pid(*id));
  }
  const pid_t grandchild = WaitForGrandchild("job-child");
  KillOnExit guard{{grandchild}};
  ASSERT_GT(grandchild, 0);
  for (pid_t pid : pids) EXPECT_FALSE(Gone(pid));

  supervisor_.reset();
  for (pid_t pid : pids) {
    EXPECT_EQ(::kill(pid, 0), -1) << pid;  // killed and reaped before the destructor returned
    EXPECT_EQ(errno, ESRCH);
  }
  EXPECT_TRUE(WaitGone(grandchild, 5s));
  RunUntil([] { return false; }, 300ms);  // aborted operations complete; no handler may run
  for (const Seen& s : seen) EXPECT_EQ(s.exits, 0);
}

// The server process dies with SIGKILL: its worker gets PR_SET_PDEATHSIG. The "deaf" worker never reads
// its socket, so only that signal can end it.
TEST_F(Supervisor, WorkerDiesWithTheServer) {
  int report[2];
  ASSERT_EQ(::pipe2(report, O_CLOEXEC), 0);
  const pid_t server = ::fork();
  ASSERT_GE(server, 0);
  if (server == 0) {
    ::close(report[0]);
    boost::asio::io_context io;
    SupervisorOptions options;
    options.worker_path = XTRAIN_FAKE_WORKER;
    options.on_log = [](const std::string&, const std::string&) {};
    xtrain::server::Supervisor supervisor(io, std::move(options));
    absl::StatusOr<WorkerId> id = supervisor.Start("job-deaf", Job("deaf"), {});
    const pid_t pid = id.ok() ? supervisor.pid(*id) : 0;
    if (::write(report[1], &pid, sizeof pid) != sizeof pid) ::_exit(1);
    for (;;) io.run();  // until SIGKILL
  }
  KillOnExit guard{{server}};
  ::close(report[1]);
  pollfd ready{report[0], POLLIN, 0};
  ASSERT_EQ(::poll(&ready, 1, 30000), 1);
  pid_t worker = 0;
  ASSERT_EQ(::read(report[0], &worker, sizeof worker), static_cast<ssize_t>(sizeof worker));
  ::close(report[0]);
  guard.pids.push_back(worker);
  ASSERT_GT(worker, 0);
  EXPECT_FALSE(Gone(worker));

  ASSERT_EQ(::kill(server, SIGKILL), 0);
  ASSERT_EQ(::waitpid(server, nullptr, 0), server);
  EXPECT_TRUE(WaitGone(worker, 5s));
}

}  // namespace
