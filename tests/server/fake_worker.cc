// xtrain-fake-worker: a stand-in for xtrain-worker in the supervisor's tests. It reads its first
// WorkerRequest from fd 3 and acts as the request's JobContext.job_id says:
//   echo-N       N StepMetrics (steps 1..N), then Finished "echoed N"; exit 0
//   flood-N      N 16 KiB CheckpointDone messages, 10 N 300-byte stderr lines, Finished; it exits with
//                much of that unread
//   crash        abort()
//   exit-N       exit(N) without a Finished
//   hang         waits for a Control CANCEL, answers Finished CANCELLED with its reason; exit 0
//   garbage      a frame that is not a WorkerMessage, then sleeps
//   oversize     a length above kMaxFrameBytes, then sleeps
//   spam-stderr  1000 lines of 200 bytes, one 150,000-byte line, "last words" without newline; Finished
//   child        forks a grandchild that sleeps, logs "grandchild PID", then waits like hang
//   deaf         sleeps without reading its socket (only a signal ends it)
//   inspect      Finished whose message lists its fds, stdin, stdout, stderr, process group, env and
//                arguments
// A job id a real xtrain-server gives (plan-..., job-...) makes it a stand-in for xtrain-worker behind a
// real server (the service benchmark): a PlanCall gets a one-point plan of 1 MiB at once; a TrainCall
// reports max_steps steps (1000 when 0), one every `fake_step_ms` milliseconds (a label of the spec;
// default 50), and obeys CANCEL, STOP, CHECKPOINT and REPLAN between them. Behind a server it writes
// log lines as xtrain-worker does ("<level>: <message>"), with quotes, a backslash, a tab, UTF-8 and a
// line without a level holding a control character and a byte that is not UTF-8 (the log's escaping).
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "xtrain/v1/training_service.pb.h"
#include "server/protocol/frame.h"
#include "xtrain/worker/v1/worker.pb.h"

namespace {

using xtrain::worker::v1::Control;
using xtrain::worker::v1::WorkerMessage;
using xtrain::worker::v1::WorkerRequest;
using xtrain::server::ReadFrame;
using xtrain::server::WriteFrame;

constexpr int kSocket = 3;

[[noreturn]] void Die(absl::string_view why) {
  std::fprintf(stderr, "fake worker: %.*s\n", static_cast<int>(why.size()), why.data());
  std::exit(90);
}

void Send(const WorkerMessage& message) {
  if (absl::Status sent = WriteFrame(kSocket, message); !sent.ok()) Die(sent.ToString());
}

void Finish(int code, const std::string& text, int64_t step = 0) {
  WorkerMessage message;
  message.mutable_finished()->set_code(code);
  message.mutable_finished()->set_message(text);
  message.mutable_finished()->set_step(step);
  Send(message);
}

void WriteAll(int fd, absl::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) Die("cannot write");
    bytes.remove_prefix(static_cast<size_t>(n));
  }
}

[[noreturn]] void SleepForever() {
  for (;;) ::pause();
}

// Reads requests until a Control CANCEL, then answers Finished CANCELLED; exits 0 at end of stream.
[[noreturn]] void WaitForCancel() {
  for (;;) {
    absl::StatusOr<std::optional<std::string>> payload = ReadFrame(kSocket);
    if (!payload.ok()) Die(payload.status().ToString());
    if (!payload->has_value()) std::exit(0);
    WorkerRequest request;
    if (!request.ParseFromString(**payload)) Die("a request that does not parse");
    if (request.has_control() && request.control().action() == Control::CANCEL) {
      Finish(static_cast<int>(absl::StatusCode::kCancelled), absl::StrCat("cancelled: ", request.control().reason()));
      std::exit(0);
    }
  }
}

std::string Link(const std::string& path) {
  char target[4096];
  ssize_t n = ::readlink(path.c_str(), target, sizeof target);
  return n < 0 ? std::string("?") : std::string(target, static_cast<size_t>(n));
}

std::string Inspect(int argc, char** argv) {
  std::vector<std::string> fds;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) Die("cannot list /proc/self/fd");
  while (dirent* entry = ::readdir(dir)) {
    int fd = 0;
    if (absl::SimpleAtoi(entry->d_name, &fd) && fd != ::dirfd(dir)) fds.push_back(entry->d_name);
  }
  ::closedir(dir);
  std::sort(fds.begin(), fds.end());
  const char* value = std::getenv("XTRAIN_FAKE_VALUE");
  const std::string out = Link("/proc/self/fd/1"), err = Link("/proc/self/fd/2");
  return absl::StrCat("fds=", absl::StrJoin(fds, ","), " stdin=", Link("/proc/self/fd/0"),
                      " stdout=", out == err ? "stderr" : out, " stderr=", err.rfind("pipe:", 0) == 0 ? "pipe" : err,
                      " own_group=", ::getpgrp() == ::getpid() ? 1 : 0,
                      " env=", value != nullptr ? value : "(unset)", " args=",
                      absl::StrJoin(std::vector<std::string>(argv + 1, argv + argc), ","));
}

// The plan a server's PlanCall gets: one point, 1 MiB, exact.
constexpr int64_t kFakePeakBytes = int64_t{1} << 20;

int64_t FakeTotalSteps(const xtrain::v1::JobSpec& spec) {
  return spec.training().max_steps() > 0 ? spec.training().max_steps() : 1000;
}

xtrain::v1::Plan FakePlan(const xtrain::worker::v1::JobContext& job) {
  xtrain::v1::Plan plan;
  plan.set_batch_size(job.spec().training().batch_size() > 0 ? job.spec().training().batch_size() : 32);
  plan.set_budget_bytes(job.budget_bytes());
  plan.set_predicted_peak_bytes(kFakePeakBytes);
  plan.set_exact_peak_bytes(kFakePeakBytes);
  plan.set_fidelity(1);
  plan.set_largest_batch(plan.batch_size());
  plan.set_minimum_budget_bytes(kFakePeakBytes);
  plan.set_table("fake worker: no layers");
  return plan;
}

[[noreturn]] void ServePlan(const xtrain::worker::v1::PlanCall& call) {
  WriteAll(STDERR_FILENO, "info: fake planning: one point of 1 MiB\n");
  WorkerMessage message;
  xtrain::worker::v1::PlanResult& result = *message.mutable_plan_result();
  *result.mutable_plan() = FakePlan(call.job());
  xtrain::worker::v1::ChainPoint& point = *result.add_chain();
  point.set_peak_bytes(kFakePeakBytes);
  point.set_fidelity(1);
  result.set_mode("independent");
  result.set_total_steps(FakeTotalSteps(call.job().spec()));
  Send(message);
  std::exit(0);
}

void SendCheckpoint(const std::string& dir, int64_t step, const std::string& reason) {
  WorkerMessage message;
  message.mutable_checkpoint()->set_step(step);
  message.mutable_checkpoint()->set_path(absl::StrCat(dir, "/fake-", step));
  message.mutable_checkpoint()->set_reason(reason);
  Send(message);
}

// Steps at the spec's pace; Controls are read between steps (poll on the socket while it waits).
[[noreturn]] void ServeTrain(const xtrain::worker::v1::TrainCall& call) {
  const xtrain::v1::JobSpec& spec = call.job().spec();
  int64_t step_ms = 50;
  if (auto it = spec.labels().find("fake_step_ms"); it != spec.labels().end()) {
    if (!absl::SimpleAtoi(it->second, &step_ms) || step_ms < 0) Die("label fake_step_ms is not a count of ms");
  }
  const int64_t total = FakeTotalSteps(spec);
  WriteAll(STDERR_FILENO, absl::StrCat("info: fake training of ", total,
                                       " steps: a \"quoted\" word, a back\\slash, a\ttab and caf\xc3\xa9\n"));
  WriteAll(STDERR_FILENO, "warning: a warning from the worker\n");
  WriteAll(STDERR_FILENO, "a raw line: bell \x07, a stray byte \xff, end\n");
  {
    WorkerMessage message;
    *message.mutable_plan() = FakePlan(call.job());
    Send(message);
  }
  using Clock = std::chrono::steady_clock;
  auto next = Clock::now();
  for (int64_t step = 1; step <= total; ++step) {
    // No bursts to catch up after a stall (a loaded machine): at most one step per step_ms.
    next = std::max(next + std::chrono::milliseconds(step_ms), Clock::now());
    for (;;) {
      const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count();
      pollfd fd{kSocket, POLLIN, 0};
      const int ready = ::poll(&fd, 1, static_cast<int>(std::max<int64_t>(0, wait)));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) break;  // time for the next step
      absl::StatusOr<std::optional<std::string>> payload = ReadFrame(kSocket);
      if (!payload.ok()) Die(payload.status().ToString());
      if (!payload->has_value()) std::exit(0);  // the server is gone
      WorkerRequest request;
      if (!request.ParseFromString(**payload)) Die("a request that does not parse");
      if (!request.has_control()) continue;
      const Control& control = request.control();
      if (control.action() == Control::CANCEL) {
        Finish(static_cast<int>(absl::StatusCode::kCancelled), absl::StrCat("cancelled after step ", step - 1), step - 1);
        std::exit(0);
      }
      if (control.action() == Control::STOP) {
        SendCheckpoint(call.checkpoint_dir(), step - 1, "stop");
        WorkerMessage message;
        message.mutable_finished()->set_step(step - 1);
        message.mutable_finished()->set_stopped(true);
        Send(message);
        std::exit(0);
      }
      if (control.action() == Control::CHECKPOINT) SendCheckpoint(call.checkpoint_dir(), step - 1, control.reason());
      if (control.action() == Control::REPLAN) {
        SendCheckpoint(call.checkpoint_dir(), step - 1, "shrink");
        WorkerMessage message;
        message.mutable_replanned()->set_reason(control.reason());
        message.mutable_replanned()->set_new_budget_bytes(control.plan().budget_bytes());
        Send(message);
      }
    }
    WorkerMessage message;
    xtrain::v1::StepMetrics& metrics = *message.mutable_step();
    metrics.set_step(step);
    metrics.set_total_steps(total);
    metrics.set_loss(1.0 / static_cast<double>(step));
    metrics.set_step_seconds(static_cast<double>(step_ms) / 1000);
    metrics.set_predicted_peak_bytes(kFakePeakBytes);
    metrics.set_measured_peak_bytes(kFakePeakBytes);
    Send(message);
  }
  Finish(0, absl::StrCat("fake training of ", total, " steps"), total);
  std::exit(0);
}

}  // namespace

int main(int argc, char** argv) {
  absl::StatusOr<std::optional<std::string>> payload = ReadFrame(kSocket);
  if (!payload.ok()) Die(payload.status().ToString());
  if (!payload->has_value()) Die("no first request");
  WorkerRequest first;
  if (!first.ParseFromString(**payload)) Die("a first request that does not parse");
  const std::string mode = first.has_plan() ? first.plan().job().job_id() : first.train().job().job_id();
  if (mode.rfind("plan-", 0) == 0 || mode.rfind("job-", 0) == 0) {
    if (first.has_plan()) ServePlan(first.plan());
    ServeTrain(first.train());
  }

  int count = 0;
  if (mode.rfind("echo-", 0) == 0 && absl::SimpleAtoi(mode.substr(5), &count)) {
    for (int step = 1; step <= count; ++step) {
      WorkerMessage message;
      message.mutable_step()->set_step(step);
      Send(message);
    }
    Finish(0, absl::StrCat("echoed ", count), count);
    return 0;
  }
  if (mode.rfind("flood-", 0) == 0 && absl::SimpleAtoi(mode.substr(6), &count)) {
    for (int i = 1; i <= count; ++i) {
      WorkerMessage message;
      message.mutable_checkpoint()->set_step(i);
      message.mutable_checkpoint()->set_path(std::string(16 << 10, 'p'));
      Send(message);
    }
    // Then 10 lines per message at once into a 1 MiB pipe (the most an unprivileged process may ask),
    // so it exits with most of them unread.
    ::fcntl(STDERR_FILENO, F_SETPIPE_SZ, 1 << 20);
    std::string lines;
    for (int i = 1; i <= 10 * count; ++i) {
      std::string line = absl::StrCat("flood ", i, " ");
      line.resize(300, 'f');
      lines += line + "\n";
    }
    WriteAll(STDERR_FILENO, lines);
    Finish(0, absl::StrCat("flooded ", count), count);
    return 0;
  }
  if (mode.rfind("exit-", 0) == 0 && absl::SimpleAtoi(mode.substr(5), &count)) return count;
  if (mode == "crash") {
    rlimit no_core{0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);
    std::abort();
  }
  if (mode == "hang") WaitForCancel();
  if (mode == "garbage") {
    // A 4-byte frame of 0xff: a varint that never ends, which no message parses.
    WriteAll(kSocket, absl::string_view("\x04\x00\x00\x00\xff\xff\xff\xff", 8));
    SleepForever();
  }
  if (mode == "oversize") {
    WriteAll(kSocket, absl::string_view("\xff\xff\xff\xff", 4));
    SleepForever();
  }
  if (mode == "spam-stderr") {
    for (int line = 0; line < 1000; ++line) {
      std::string text = absl::StrCat("line ", line, " ");
      text.resize(200, 'x');
      WriteAll(STDERR_FILENO, text + "\n");
    }
    WriteAll(STDERR_FILENO, std::string(150000, 'y') + "\n");
    WriteAll(STDERR_FILENO, "last words");
    Finish(0, "spammed");
    return 0;
  }
  if (mode == "child") {
    const pid_t child = ::fork();
    if (child < 0) Die("fork failed");
    if (child == 0) SleepForever();
    WriteAll(STDERR_FILENO, absl::StrCat("grandchild ", child, "\n"));
    WaitForCancel();
  }
  if (mode == "deaf") SleepForever();
  if (mode == "inspect") {
    Finish(0, Inspect(argc, argv));
    return 0;
  }
  Finish(static_cast<int>(absl::StatusCode::kInvalidArgument), absl::StrCat("unknown mode ", mode));
  return 2;
}
