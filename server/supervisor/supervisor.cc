#include "server/supervisor/supervisor.h"

#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <deque>
#include <optional>
#include <utility>

#include <boost/asio/buffer.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "server/protocol/frame.h"

extern char** environ;

namespace xtrain::server {
namespace {

using xtrain::worker::v1::WorkerMessage;
using xtrain::worker::v1::WorkerRequest;

constexpr size_t kReadBufferBytes = 64u << 10;
// A stderr line longer than this reaches on_log in pieces of this size.
constexpr size_t kMaxLogLineBytes = 64u << 10;
// How long the supervisor waits, after a worker has exited and its process group was killed, for its
// socket and stderr to reach end of stream (a process outside the group may hold them open).
constexpr std::chrono::seconds kStreamGrace{5};
// Where the child moves the descriptors it hands on, so none of them sits on fds 0-3 while those are set.
constexpr int kChildHighFd = 10;

// What a child that failed before exec reports on its status pipe.
enum ChildStage : int { kStageSetpgid = 1, kStageDescriptors = 2, kStageExec = 3 };
struct ChildFailure {
  int stage;
  int error;
};

const char* StageName(int stage) {
  switch (stage) {
    case kStageSetpgid:
      return "setpgid";
    case kStageDescriptors:
      return "setting up its descriptors";
    case kStageExec:
      return "exec";
    default:
      return "starting";
  }
}

std::string SignalName(int signal) {
  const char* description = sigdescr_np(signal);  // strsignal's text, thread-safe
  return description != nullptr ? description : "unknown signal";
}

// An owned file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

absl::Status SpawnError(const std::string& path, absl::string_view what, int error) {
  return absl::UnavailableError(
      absl::StrCat("cannot start the worker ", path, ": ", what, ": ", strerrordesc_np(error)));
}

// Everything the child needs, prepared before fork: after fork it may only make async-signal-safe calls.
struct ChildPlan {
  pid_t parent;
  const char* path;
  char* const* argv;
  char* const* envp;
  int null_fd;     // becomes stdin
  int log_fd;      // becomes stdout and stderr
  int socket_fd;   // becomes fd 3
  int status_fd;   // stays open (CLOEXEC) until exec; takes a ChildFailure
  int max_fd;      // the fallback close loop's bound where close_range is missing
};

[[noreturn]] void Fail(int status_fd, int stage) {
  ChildFailure failure{stage, errno};
  ssize_t ignored = ::write(status_fd, &failure, sizeof failure);
  (void)ignored;
  ::_exit(127);
}

// Closes fds first..last; where close_range is missing (kernels before 5.9), one by one below max_fd.
void CloseRange(unsigned first, unsigned last, int max_fd) {
  if (first > last) return;
  if (::close_range(first, last, 0) == 0) return;
  for (unsigned fd = first; fd <= last && fd < static_cast<unsigned>(max_fd); ++fd) ::close(static_cast<int>(fd));
}

[[noreturn]] void RunChild(const ChildPlan& plan) {
  // Its own process group, so a kill reaches everything it starts.
  if (::setpgid(0, 0) != 0) Fail(plan.status_fd, kStageSetpgid);
  // Die with the server; if the server died before this line, no signal will come: leave now.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != plan.parent) ::_exit(127);

  // Default signal handling and an empty mask: exec keeps ignored signals and the mask otherwise.
  struct sigaction default_action;
  ::memset(&default_action, 0, sizeof default_action);
  default_action.sa_handler = SIG_DFL;
  for (int signal = 1; signal < NSIG; ++signal) {
    if (signal != SIGKILL && signal != SIGSTOP) ::sigaction(signal, &default_action, nullptr);
  }
  sigset_t empty;
  ::sigemptyset(&empty);
  ::sigprocmask(SIG_SETMASK, &empty, nullptr);

  // Move what is handed on above fd 3, then place it: stdin /dev/null, stdout and stderr the log pipe
  // (everything it prints reaches the server's log as its lines), fd 3 the socket.
  const int status_fd = ::fcntl(plan.status_fd, F_DUPFD_CLOEXEC, kChildHighFd);
  if (status_fd < 0) Fail(plan.status_fd, kStageDescriptors);
  const int null_fd = ::fcntl(plan.null_fd, F_DUPFD, kChildHighFd);
  const int log_fd = ::fcntl(plan.log_fd, F_DUPFD, kChildHighFd);
  const int socket_fd = ::fcntl(plan.socket_fd, F_DUPFD, kChildHighFd);
  if (null_fd < 0 || log_fd < 0 || socket_fd < 0) Fail(status_fd, kStageDescriptors);
  if (::dup2(null_fd, 0) < 0 || ::dup2(log_fd, 1) < 0 || ::dup2(log_fd, 2) < 0 || ::dup2(socket_fd, 3) < 0) {
    Fail(status_fd, kStageDescriptors);
  }
  CloseRange(4, static_cast<unsigned>(status_fd) - 1, plan.max_fd);
  CloseRange(static_cast<unsigned>(status_fd) + 1, ~0u, plan.max_fd);

  ::execve(plan.path, plan.argv, plan.envp);
  Fail(status_fd, kStageExec);
}

struct Spawned {
  pid_t pid = 0;
  Fd socket;  // the server's end
  Fd log;     // the read end of the worker's stdout and stderr
};

absl::StatusOr<Spawned> Spawn(const SupervisorOptions& options) {
  const std::string& path = options.worker_path;
  std::vector<std::string> args = {path};
  args.insert(args.end(), options.worker_args.begin(), options.worker_args.end());
  std::vector<std::string> env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    absl::string_view pair(*entry);
    if (!options.worker_env.contains(std::string(pair.substr(0, pair.find('='))))) env.emplace_back(pair);
  }
  for (const auto& [key, value] : options.worker_env) env.push_back(absl::StrCat(key, "=", value));
  std::vector<char*> argv, envp;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  for (std::string& entry : env) envp.push_back(entry.data());
  envp.push_back(nullptr);

  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) return SpawnError(path, "socketpair", errno);
  Fd server_socket(pair[0]), child_socket(pair[1]);
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return SpawnError(path, "pipe", errno);
  Fd log_read(pipe_fds[0]), log_write(pipe_fds[1]);
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return SpawnError(path, "pipe", errno);
  Fd status_read(pipe_fds[0]), status_write(pipe_fds[1]);
  Fd null_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (null_fd.get() < 0) return SpawnError(path, "/dev/null", errno);
  rlimit limit{};
  int max_fd = 1 << 16;
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    max_fd = static_cast<int>(std::min<rlim_t>(limit.rlim_cur, 1 << 20));
  }

  const ChildPlan plan{::getpid(),    path.c_str(),      argv.data(),         envp.data(), null_fd.get(),
                       log_write.get(), child_socket.get(), status_write.get(), max_fd};
  const pid_t pid = ::fork();
  if (pid < 0) return SpawnError(path, "fork", errno);
  if (pid == 0) RunChild(plan);

  ::setpgid(pid, pid);  // also from here, so the group exists whichever runs first (EACCES after exec)
  child_socket.Reset();
  log_write.Reset();
  status_write.Reset();
  null_fd.Reset();

  // The status pipe closes at exec (CLOEXEC) or carries why the child failed before it.
  ChildFailure failure{};
  size_t got = 0;
  while (got < sizeof failure) {
    ssize_t n = ::read(status_read.get(), reinterpret_cast<char*>(&failure) + got, sizeof failure - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  if (got == 0) return Spawned{pid, std::move(server_socket), std::move(log_read)};
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (got < sizeof failure) return SpawnError(path, "starting", EIO);
  return SpawnError(path, StageName(failure.stage), failure.error);
}

}  // namespace

// What the SIGCHLD handler needs: the signal set and a token that expires with the Supervisor, so
// code that called out to a handler can tell whether that handler destroyed it.
struct Supervisor::SignalWatch {
  explicit SignalWatch(boost::asio::io_context& io) : signals(io) {}
  boost::asio::signal_set signals;
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);
};

// One worker process: its socket, its stderr, its write queue and what is known of its end. Async
// operations hold a shared_ptr to it; owner_ is null once the Supervisor is gone or the worker ended,
// and then no completion touches anything but the Worker itself.
class Supervisor::Worker : public std::enable_shared_from_this<Worker> {
 public:
  Worker(Supervisor* owner, WorkerId id, std::string label, LogContext context, pid_t pid, WorkerHandlers handlers)
      : owner_(owner),
        id_(id),
        label_(std::move(label)),
        context_(std::move(context)),
        pid_(pid),
        handlers_(std::move(handlers)),
        on_log_(owner->options_.on_log),
        tail_lines_(static_cast<size_t>(std::max(owner->options_.log_tail_lines, 0))),
        socket_(owner->io_),
        log_(owner->io_),
        grace_(owner->io_) {}

  // Takes the descriptors and starts reading both streams.
  absl::Status Begin(Fd socket, Fd log) {
    boost::system::error_code error;
    socket_.assign(boost::asio::local::stream_protocol(), socket.get(), error);
    if (error) return absl::InternalError(absl::StrCat("the worker's socket: ", error.message()));
    socket.Release();
    log_.assign(log.get(), error);
    if (error) return absl::InternalError(absl::StrCat("the worker's stderr: ", error.message()));
    log.Release();
    ReadSocket();
    ReadLog();
    return absl::OkStatus();
  }

  pid_t pid() const { return exited_ ? 0 : pid_; }
  bool exited() const { return exited_; }

  absl::Status Send(std::string frame) {
    if (exited_ || socket_done_ || write_failed_) {
      return absl::NotFoundError(absl::StrCat("worker ", id_, " (", label_, ") has ended"));
    }
    writes_.push_back(std::move(frame));
    if (!writing_) WriteNext();
    return absl::OkStatus();
  }

  // SIGKILL to the group, and to the process itself in case it left the group. Only before it is reaped:
  // until then its pid cannot name another process.
  void Kill() {
    if (exited_) return;
    ::kill(-pid_, SIGKILL);
    ::kill(pid_, SIGKILL);
  }

  // Checks, without blocking, whether the process has exited; if so records how (nothing known when
  // someone else collected it) and returns true. Reaped follows.
  bool Poll() {
    int status = 0;
    const pid_t got = ::waitpid(pid_, &status, WNOHANG);
    if (got == pid_) {
      status_ = status;
    } else if (!(got < 0 && errno == ECHILD)) {
      return false;
    }
    exited_ = true;
    return true;
  }

  // The process has exited (Poll said so).
  void Reaped() {
    // Whatever it left in its group goes too, and with it the last holders of its socket and stderr.
    ::kill(-pid_, SIGKILL);
    MaybeFinish();
    if (ended_ || owner_ == nullptr) return;
    grace_.expires_after(kStreamGrace);
    grace_.async_wait([self = shared_from_this()](const boost::system::error_code& error) {
      if (!error) self->OnGraceOver();
    });
  }

  // The Supervisor is going away: kill and reap the process, close the streams, call nothing more.
  void Shutdown() {
    owner_ = nullptr;
    if (!exited_) {
      Kill();
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      exited_ = true;
    }
    CloseStreams();
  }

 private:
  void ReadSocket() {
    socket_.async_read_some(boost::asio::buffer(socket_buffer_),
                            [self = shared_from_this()](const boost::system::error_code& error, size_t n) {
                              self->OnSocket(error, n);
                            });
  }

  void OnSocket(const boost::system::error_code& error, size_t n) {
    if (owner_ == nullptr || socket_done_) return;
    if (error) {  // end of stream, or the socket failed: nothing more will come either way
      cut_bytes_ = decoder_.pending();
      EndSocket();
      MaybeFinish();
      return;
    }
    decoder_.Feed(absl::string_view(socket_buffer_.data(), n));
    while (true) {
      absl::StatusOr<std::optional<std::string>> payload = decoder_.Next();
      if (!payload.ok()) return Break(payload.status().message());
      if (!payload->has_value()) break;
      WorkerMessage message;
      if (absl::Status parsed = ParseFrame(**payload, message); !parsed.ok()) return Break(parsed.message());
      if (message.has_finished()) finished_ = message.finished();
      if (handlers_.on_message) handlers_.on_message(message);
      if (owner_ == nullptr || socket_done_) return;  // the handler destroyed the Supervisor
    }
    ReadSocket();
  }

  // A malformed frame: the stream cannot be trusted past it, so the worker is killed and its reason says so.
  void Break(absl::string_view detail) {
    malformed_ = std::string(detail);
    LogAbout(context_, spdlog::level::warn, "worker {} (pid {}) sent a malformed message ({}); killing it", id_, pid_,
             malformed_);
    Kill();
    EndSocket();
    MaybeFinish();
  }

  // The write queue stays until the write in flight completes (aborted): it owns that write's buffer.
  void EndSocket() {
    socket_done_ = true;
    boost::system::error_code ignored;
    socket_.close(ignored);
  }

  void WriteNext() {
    writing_ = true;
    boost::asio::async_write(socket_, boost::asio::buffer(writes_.front()),
                             [self = shared_from_this()](const boost::system::error_code& error, size_t) {
                               self->OnWritten(error);
                             });
  }

  void OnWritten(const boost::system::error_code& error) {
    writing_ = false;
    if (error || owner_ == nullptr) {  // it stopped reading (closed its end or died); its exit will tell why
      write_failed_ = true;
      writes_.clear();
      return;
    }
    writes_.pop_front();
    if (!writes_.empty()) WriteNext();
  }

  void ReadLog() {
    log_.async_read_some(boost::asio::buffer(log_buffer_),
                         [self = shared_from_this()](const boost::system::error_code& error, size_t n) {
                           self->OnLog(error, n);
                         });
  }

  void OnLog(const boost::system::error_code& error, size_t n) {
    if (owner_ == nullptr || log_done_) return;
    if (error) {
      EndLog();
      MaybeFinish();
      return;
    }
    partial_line_.append(log_buffer_.data(), n);
    size_t start = 0;
    for (size_t newline; (newline = partial_line_.find('\n', start)) != std::string::npos; start = newline + 1) {
      if (!EmitLine(absl::string_view(partial_line_).substr(start, newline - start))) return;
    }
    partial_line_.erase(0, start);
    while (partial_line_.size() > kMaxLogLineBytes) {
      if (!EmitLine(absl::string_view(partial_line_).substr(0, kMaxLogLineBytes))) return;
      partial_line_.erase(0, kMaxLogLineBytes);
    }
    ReadLog();
  }

  // Hands `line` to on_log in pieces of at most kMaxLogLineBytes and keeps the last ones for the tail.
  // False when a handler destroyed the Supervisor.
  bool EmitLine(absl::string_view line) {
    do {
      const absl::string_view piece = line.substr(0, kMaxLogLineBytes);
      line.remove_prefix(piece.size());
      if (tail_lines_ > 0) {
        if (tail_.size() == tail_lines_) tail_.pop_front();
        tail_.emplace_back(piece);
      }
      if (on_log_) {
        on_log_(label_, std::string(piece));
      } else {
        ForwardWorkerLine(context_, std::string_view(piece.data(), piece.size()));
      }
      if (owner_ == nullptr) return false;
    } while (!line.empty());
    return true;
  }

  void EndLog() {
    log_done_ = true;
    if (!partial_line_.empty()) {
      std::string last = std::move(partial_line_);
      partial_line_.clear();
      if (!EmitLine(last)) return;
    }
    boost::system::error_code ignored;
    log_.close(ignored);
  }

  void OnGraceOver() {
    if (owner_ == nullptr || ended_) return;
    LogAbout(context_, spdlog::level::warn, "worker {} (pid {}) exited but its output stayed open for {} s; closing it",
             id_, pid_, kStreamGrace.count());
    streams_forced_ = true;
    if (!socket_done_) EndSocket();
    if (!log_done_) EndLog();
    MaybeFinish();
  }

  void CloseStreams() {
    boost::system::error_code ignored;
    socket_.close(ignored);
    log_.close(ignored);
    grace_.cancel();
  }

  // on_exit, once: after the process exited and both streams ended, so every message and line is in.
  void MaybeFinish() {
    if (owner_ == nullptr || ended_ || !exited_ || !socket_done_ || !log_done_) return;
    ended_ = true;
    grace_.cancel();
    WorkerExit exit = Describe();
    LogAbout(context_, spdlog::level::info, "worker {} (pid {}) {}", id_, pid_, exit.reason);
    auto self = shared_from_this();
    owner_->workers_.erase(id_);
    owner_ = nullptr;
    auto on_exit = std::move(handlers_.on_exit);
    handlers_ = {};
    if (on_exit) on_exit(exit);
  }

  WorkerExit Describe() const {
    WorkerExit exit;
    std::vector<std::string> parts;
    if (!malformed_.empty()) parts.push_back(absl::StrCat("sent a malformed message (", malformed_, ")"));
    if (!status_.has_value()) {
      parts.push_back("ended (its exit status was collected elsewhere)");
    } else if (WIFEXITED(*status_)) {
      exit.exit_code = WEXITSTATUS(*status_);
      parts.push_back(absl::StrCat("exited with code ", exit.exit_code));
    } else if (WIFSIGNALED(*status_)) {
      exit.signal = WTERMSIG(*status_);
      parts.push_back(absl::StrCat("killed by signal ", exit.signal, " (", SignalName(exit.signal), ")",
                                   WCOREDUMP(*status_) ? ", core dumped" : ""));
    }
    if (cut_bytes_ > 0 && malformed_.empty()) {
      parts.push_back(absl::StrCat("its last message was cut off after ", cut_bytes_, " bytes"));
    }
    if (streams_forced_) parts.push_back("its output stayed open after it exited");
    exit.reason = absl::StrJoin(parts, "; ");
    if (finished_.has_value()) {
      exit.finished = true;
      exit.finished_message = *finished_;
      if (!finished_->message().empty()) absl::StrAppend(&exit.reason, ": ", finished_->message());
    }
    exit.log_tail = absl::StrJoin(tail_, "\n");
    return exit;
  }

  Supervisor* owner_;
  const WorkerId id_;
  const std::string label_;
  const LogContext context_;
  const pid_t pid_;
  WorkerHandlers handlers_;
  const std::function<void(const std::string&, const std::string&)> on_log_;
  const size_t tail_lines_;

  boost::asio::local::stream_protocol::socket socket_;
  boost::asio::posix::stream_descriptor log_;
  boost::asio::steady_timer grace_;
  std::array<char, kReadBufferBytes> socket_buffer_;
  std::array<char, kReadBufferBytes> log_buffer_;
  FrameDecoder decoder_;
  std::deque<std::string> writes_;  // frames not yet written; the front one is in flight
  bool writing_ = false;
  bool write_failed_ = false;
  std::string partial_line_;
  std::deque<std::string> tail_;

  bool exited_ = false;
  bool socket_done_ = false;
  bool log_done_ = false;
  bool ended_ = false;
  bool streams_forced_ = false;
  std::optional<int> status_;
  std::string malformed_;
  size_t cut_bytes_ = 0;
  std::optional<xtrain::worker::v1::Finished> finished_;
};

Supervisor::Supervisor(boost::asio::io_context& io, SupervisorOptions options)
    : io_(io), options_(std::move(options)), sigchld_(std::make_unique<SignalWatch>(io)) {
  boost::system::error_code error;
  sigchld_->signals.add(SIGCHLD, error);
  if (error) spdlog::error("the supervisor cannot watch SIGCHLD: {}", error.message());
  WatchSigchld();
}

Supervisor::~Supervisor() {
  for (auto& [id, worker] : workers_) worker->Shutdown();
  workers_.clear();
  sigchld_.reset();
}

void Supervisor::WatchSigchld() {
  sigchld_->signals.async_wait(
      [this, alive = std::weak_ptr<bool>(sigchld_->alive)](const boost::system::error_code& error, int) {
        if (error || alive.expired()) return;
        OnSigchld();
      });
}

void Supervisor::OnSigchld() {
  WatchSigchld();
  Reap();
}

void Supervisor::Reap() {
  std::vector<std::shared_ptr<Worker>> reaped;
  for (auto& [id, worker] : workers_) {
    if (!worker->exited() && worker->Poll()) reaped.push_back(worker);
  }
  std::weak_ptr<bool> alive = sigchld_->alive;
  for (const std::shared_ptr<Worker>& worker : reaped) {
    worker->Reaped();
    if (alive.expired()) return;  // an on_exit destroyed the Supervisor
  }
}

absl::StatusOr<WorkerId> Supervisor::Start(const std::string& label, const WorkerRequest& first,
                                           WorkerHandlers handlers, LogContext context) {
  if (context.empty()) context.job_id = label;
  if (first.ByteSizeLong() > kMaxFrameBytes) {
    return absl::InvalidArgumentError(absl::StrCat("the first request for ", label, " is ", first.ByteSizeLong(),
                                                   " bytes, above the ", kMaxFrameBytes, "-byte frame limit"));
  }
  absl::StatusOr<Spawned> spawned = Spawn(options_);
  if (!spawned.ok()) return spawned.status();
  const WorkerId id = next_id_++;
  auto worker = std::make_shared<Worker>(this, id, label, context, spawned->pid, std::move(handlers));
  workers_[id] = worker;
  if (absl::Status begun = worker->Begin(std::move(spawned->socket), std::move(spawned->log)); !begun.ok()) {
    worker->Shutdown();
    workers_.erase(id);
    return absl::UnavailableError(absl::StrCat("cannot watch the worker for ", label, ": ", begun.message()));
  }
  LogAbout(context, spdlog::level::info, "worker {} started: pid {}", id, spawned->pid);
  absl::Status sent = worker->Send(EncodeFrame(first));
  (void)sent;  // cannot fail: nothing has ended yet
  return id;
}

absl::Status Supervisor::Send(WorkerId id, const WorkerRequest& request) {
  auto found = workers_.find(id);
  if (found == workers_.end()) return absl::NotFoundError(absl::StrCat("no running worker ", id));
  if (request.ByteSizeLong() > kMaxFrameBytes) {
    return absl::InvalidArgumentError(absl::StrCat("a ", request.ByteSizeLong(), "-byte request is above the ",
                                                   kMaxFrameBytes, "-byte frame limit"));
  }
  return found->second->Send(EncodeFrame(request));
}

void Supervisor::Kill(WorkerId id) {
  auto found = workers_.find(id);
  if (found != workers_.end()) found->second->Kill();
}

void Supervisor::KillAll() {
  for (auto& [id, worker] : workers_) worker->Kill();
}

pid_t Supervisor::pid(WorkerId id) const {
  auto found = workers_.find(id);
  return found == workers_.end() ? 0 : found->second->pid();
}

size_t Supervisor::running() const { return workers_.size(); }

}  // namespace xtrain::server
