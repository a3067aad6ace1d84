#include "bench/service_bench.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <latch>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "bench/bench_util.h"
#include "client/client.h"
#include "xtrain/v1/training_service.grpc.pb.h"

#ifndef XTRAIN_BENCH_SERVER_PATH
#define XTRAIN_BENCH_SERVER_PATH ""
#endif
#ifndef XTRAIN_BENCH_WORKER_PATH
#define XTRAIN_BENCH_WORKER_PATH ""
#endif

namespace xtrain::bench {
namespace {

namespace v1 = ::xtrain::v1;
namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------------------------
// Options and sizes.

struct Options {
  std::string server_bin = XTRAIN_BENCH_SERVER_PATH;
  std::string worker_bin = XTRAIN_BENCH_WORKER_PATH;
  bool quick = false;
  std::set<std::string> figures;  // the figures to measure (empty: all)
  std::vector<int> watchers;      // watcher counts instead of the defaults
  std::string json;
  std::string markdown;
  std::string data_root;
  std::vector<std::string> server_args;  // more xtrain-server flags (--server-arg, each one word)
  bool help = false;
};

// How much each figure measures (the full run, or --quick's few seconds).
struct Sizes {
  int store_jobs;
  std::vector<int> clients;
  int get_calls_total;       // per concurrency level, shared among its clients
  int get_calls_min;         // per client at least
  int list_calls_total;
  int list_calls_min;
  int plan_cold;
  int plan_cached;
  int submit_runs;           // per variant (plan cached or not)
  std::vector<int> watchers;
  double watch_window_s;
  int watch_step_ms;         // the fake worker's step interval in the watched job
};

Sizes SizesFor(bool quick) {
  if (quick) return Sizes{100, {1, 16, 64}, 320, 10, 160, 5, 3, 50, 2, {300, 1000}, 2.0, 100};
  // Tens of thousands of calls a level: its p99 rests on hundreds of samples, over seconds of the
  // shared machine rather than a fraction of one.
  return Sizes{200, {1, 16, 64}, 64000, 1000, 16000, 250, 8, 500, 5, {1000, 10000}, 10.0, 100};
}

constexpr int kWatchersPerChannel = 500;

const std::set<absl::string_view> kFigures = {"get_job", "list_jobs", "plan_job", "submit_to_first_step", "watch_job"};

std::string Usage() {
  return R"(xtrain-bench service (also xtrain-service-bench): the service's latencies against a real
xtrain-server started here on 127.0.0.1 (port 0) with a fresh data dir, stopped and removed at the end.

Figures (one JSON object per line in --json; a table in --markdown):
  get_job, list_jobs     latency at 1, 16 and 64 concurrent clients (each its own channel)
  plan_job_cold          PlanJob of a spec not planned before (a planning worker runs)
  plan_job_cached        PlanJob of the same spec again (answered from the plan cache)
  submit_to_first_step   SubmitJob until WatchJob delivers the job's first step event
  watch_job              1,000 and 10,000 watchers on one running job: delivery lag, server memory each

Flags:
  --server-bin PATH   xtrain-server (default: this build's)
  --worker-bin PATH   the worker the server starts (default: this build's xtrain-worker); the fake worker
                      (tests/server/xtrain-fake-worker) plans and steps without LibTorch: rows say which
  --quick             small counts (seconds; for tests)
  --json FILE         one JSON object per figure row
  --markdown FILE     the table and the goals
  --data-root DIR     where the temporary data dir goes (default: $TMPDIR or /tmp)
  --figures LIST      only these figures, comma-separated: get_job, list_jobs, plan_job,
                      submit_to_first_step, watch_job (default: all; for profiling one of them)
  --watchers LIST     watch_job's watcher counts, comma-separated (default: 1000,10000; --quick 300,1000)
  --server-arg ARG    one more word on xtrain-server's command line (repeat it: --server-arg
                      --watch-step-rate --server-arg 0); rows record them
)";
}

absl::StatusOr<Options> ParseOptions(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  absl::StatusOr<std::vector<Flag>> flags =
      SplitFlags(args, {"--quick", "--help", "-h"}, {"--server-bin", "--worker-bin", "--json", "--markdown", "--data-root", "--figures", "--watchers",
                  "--server-arg"},
                 "service");
  if (!flags.ok()) return flags.status();
  Options options;
  for (const Flag& flag : *flags) {
    if (flag.name == "--help" || flag.name == "-h") options.help = true;
    if (flag.name == "--quick") options.quick = true;
    if (flag.name == "--server-bin") options.server_bin = flag.value;
    if (flag.name == "--worker-bin") options.worker_bin = flag.value;
    if (flag.name == "--json") options.json = flag.value;
    if (flag.name == "--markdown") options.markdown = flag.value;
    if (flag.name == "--data-root") options.data_root = flag.value;
    if (flag.name == "--server-arg") options.server_args.push_back(flag.value);
    if (flag.name == "--figures") {
      for (absl::string_view name : absl::StrSplit(flag.value, ',', absl::SkipEmpty())) {
        if (!kFigures.contains(name)) {
          return absl::InvalidArgumentError(absl::StrCat("--figures: unknown figure '", name, "'; use ",
                                                         absl::StrJoin(kFigures, ", ")));
        }
        options.figures.insert(std::string(name));
      }
    }
    if (flag.name == "--watchers") {
      for (absl::string_view count : absl::StrSplit(flag.value, ',', absl::SkipEmpty())) {
        absl::StatusOr<int64_t> watchers = ParseInt("--watchers", count, 1);
        if (!watchers.ok()) return watchers.status();
        options.watchers.push_back(static_cast<int>(*watchers));
      }
    }
  }
  if (options.help) return options;
  if (options.figures.empty()) options.figures = std::set<std::string>(kFigures.begin(), kFigures.end());
  if (options.server_bin.empty()) return absl::InvalidArgumentError("this build has no xtrain-server: give --server-bin");
  if (options.worker_bin.empty()) {
    return absl::InvalidArgumentError("this build has no xtrain-worker: give --worker-bin (the real or the fake worker)");
  }
  for (const std::string* path : {&options.server_bin, &options.worker_bin}) {
    if (::access(path->c_str(), X_OK) != 0) return absl::InvalidArgumentError(absl::StrCat(*path, " is not an executable"));
  }
  if (options.data_root.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    options.data_root = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  }
  return options;
}

bool FakeWorker(const Options& options) {
  return absl::StrContains(fs::path(options.worker_bin).filename().string(), "fake");
}

// ---------------------------------------------------------------------------------------------------
// The server under test.

// SIGINT and SIGTERM: a thread takes them (blocked everywhere else), kills the server and removes the
// data dir, then exits; destructors do the same on every other way out.
std::atomic<pid_t> g_server_pid{-1};
std::atomic<bool> g_stopping{false};  // the main thread then waits for the signal thread's _Exit

void HandleStopSignals(const std::string& scratch_dir) {
  // Never destroyed: the thread may still use it while the main thread returns from main.
  const std::string& scratch = *new std::string(scratch_dir);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::thread([signals, &scratch] {
    int signal = 0;
    if (sigwait(&signals, &signal) != 0) return;
    g_stopping = true;
    if (const pid_t pid = g_server_pid.load(); pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    // The main thread may be removing it too (its calls fail once the server is gone): retry until it is.
    std::error_code error;
    for (int attempt = 0; attempt < 20 && fs::exists(scratch, error); ++attempt) fs::remove_all(scratch, error);
    std::fprintf(stderr, "xtrain-bench service: stopped by signal %d; the server was killed and %s %s\n", signal,
                 scratch.c_str(), fs::exists(scratch, error) ? "could not be removed" : "removed");
    std::_Exit(128 + signal);
  }).detach();
}

// A fresh folder under `parent`, removed with everything in it when this goes (also on failure).
class ScratchDir {
 public:
  static absl::StatusOr<std::unique_ptr<ScratchDir>> Create(const std::string& parent) {
    std::string pattern = (fs::path(parent) / "xtrain-service-bench-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      return absl::UnavailableError(absl::StrCat("cannot make a temporary folder under ", parent));
    }
    return std::unique_ptr<ScratchDir>(new ScratchDir(pattern));
  }
  ~ScratchDir() {
    std::error_code error;
    for (int attempt = 0; attempt < 20 && fs::exists(path_, error); ++attempt) fs::remove_all(path_, error);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  explicit ScratchDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

// xtrain-server as a child process on 127.0.0.1, port 0 (--port-file), its log in the scratch folder.
// It dies with this process (PR_SET_PDEATHSIG) and is stopped when this object goes.
class ServerProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(const Options& options, const std::string& dir) {
    auto server = std::unique_ptr<ServerProcess>(new ServerProcess());
    server->log_path_ = absl::StrCat(dir, "/server.log");
    const std::string port_file = absl::StrCat(dir, "/port");
    const std::string data_root = absl::StrCat(dir, "/data");
    fs::create_directories(data_root);
    std::vector<std::string> args = {options.server_bin, "--listen", "127.0.0.1:0", "--port-file", port_file,
                                     "--data-dir", absl::StrCat(dir, "/server"), "--data-root", data_root,
                                     "--worker", options.worker_bin, "--device", "cpu:slots=1",
                                     "--threads-per-job", "1", "--grace-seconds", "5", "--log-level", "warn",
                                     "--metrics-port", "0"};
    args.insert(args.end(), options.server_args.begin(), options.server_args.end());
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    const int log = ::open(server->log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log < 0) return absl::UnavailableError(absl::StrCat("cannot create ", server->log_path_));
    const pid_t parent = ::getpid();
    server->pid_ = ::fork();
    if (server->pid_ < 0) {
      ::close(log);
      return absl::UnavailableError("fork failed");
    }
    if (server->pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      sigset_t none;
      sigemptyset(&none);
      pthread_sigmask(SIG_SETMASK, &none, nullptr);  // the stop signals are blocked here, not in the server
      if (::getppid() != parent) ::_exit(126);
      ::dup2(log, STDOUT_FILENO);
      ::dup2(log, STDERR_FILENO);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(log);
    g_server_pid = server->pid_;
    const auto deadline = SteadyClock::now() + std::chrono::seconds(60);
    while (SteadyClock::now() < deadline) {
      std::ifstream in(port_file);
      std::string text;
      int port = 0;
      if (in && std::getline(in, text) && absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &port) && port > 0) {
        server->port_ = port;
        return server;
      }
      int status = 0;
      if (::waitpid(server->pid_, &status, WNOHANG) == server->pid_) {
        server->pid_ = -1;
        g_server_pid = -1;
        return absl::UnavailableError(absl::StrCat("xtrain-server exited at start (wait status ", status,
                                                   "); its log: ", server->LogTail()));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return absl::DeadlineExceededError(absl::StrCat("xtrain-server wrote no port within 60 s; its log: ", server->LogTail()));
  }

  ~ServerProcess() {
    if (pid_ <= 0) return;
    g_server_pid = -1;
    // SIGTERM lets it stop its workers; SIGKILL if it takes longer than its grace period and a margin.
    ::kill(pid_, SIGTERM);
    const auto deadline = SteadyClock::now() + std::chrono::seconds(15);
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (SteadyClock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  pid_t pid() const { return pid_; }
  std::string target() const { return absl::StrCat("127.0.0.1:", port_); }

  // The server's resident memory (VmRSS), bytes.
  absl::StatusOr<int64_t> Rss() const {
    std::ifstream in(absl::StrCat("/proc/", pid_, "/status"));
    std::string line;
    while (std::getline(in, line)) {
      if (!absl::StartsWith(line, "VmRSS:")) continue;
      std::istringstream fields(line.substr(6));
      int64_t kib = 0;
      if (fields >> kib) return kib * 1024;
    }
    return absl::UnavailableError(absl::StrCat("no VmRSS in /proc/", pid_, "/status"));
  }

  // CPU time the server has used (user + system), seconds.
  absl::StatusOr<double> CpuSeconds() const {
    std::ifstream in(absl::StrCat("/proc/", pid_, "/stat"));
    std::string line;
    if (!std::getline(in, line)) return absl::UnavailableError(absl::StrCat("cannot read /proc/", pid_, "/stat"));
    // pid (comm) state ppid ... : utime and stime are fields 14 and 15, the 12th and 13th after ")".
    std::istringstream rest(line.substr(line.rfind(')') + 2));
    std::string field;
    double utime = 0, stime = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i) {
      if (i == 14) utime = std::stod(field);
      if (i == 15) stime = std::stod(field);
    }
    return (utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }

  // CPU seconds of each of the server's threads by thread id, with the thread's name.
  std::map<std::string, std::pair<std::string, double>> ThreadCpuSeconds() const {
    std::map<std::string, std::pair<std::string, double>> threads;
    std::error_code error;
    for (const auto& entry : fs::directory_iterator(absl::StrCat("/proc/", pid_, "/task"), error)) {
      std::ifstream in(entry.path() / "stat");
      std::string line;
      if (!std::getline(in, line)) continue;
      const size_t open = line.find('('), close = line.rfind(')');
      if (open == std::string::npos || close == std::string::npos) continue;
      std::istringstream rest(line.substr(close + 2));
      std::string field;
      double utime = 0, stime = 0;
      for (int i = 3; i <= 15 && rest >> field; ++i) {
        if (i == 14) utime = std::stod(field);
        if (i == 15) stime = std::stod(field);
      }
      threads[entry.path().filename().string()] = {line.substr(open + 1, close - open - 1),
                                                   (utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK))};
    }
    return threads;
  }

  std::string LogTail() const {
    std::ifstream in(log_path_);
    std::stringstream text;
    text << in.rdbuf();
    std::string all = text.str();
    return all.size() > 2000 ? all.substr(all.size() - 2000) : all;
  }

 private:
  ServerProcess() = default;
  pid_t pid_ = -1;
  int port_ = 0;
  std::string log_path_;
};

// A stub on its own channel and its own connection (a local subchannel pool: channels with equal
// arguments would otherwise share one connection).
std::unique_ptr<v1::TrainingService::Stub> OwnStub(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  return v1::TrainingService::NewStub(grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
}

void SetDeadline(grpc::ClientContext& context, std::chrono::seconds seconds) {
  context.set_deadline(std::chrono::system_clock::now() + seconds);
}

absl::Status Failed(const std::string& what, const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), absl::StrCat(what, ": ", status.error_message()));
}

// A job of the benchmark: the tests' tiny small_cnn job (16x16 synthetic images), `max_steps` steps.
// `seed` goes into model.init_seed, so each seed is a spec the plan cache has not seen. The fake worker
// steps every `step_ms` (a label the real worker ignores).
v1::JobSpec BenchSpec(uint64_t seed, int64_t max_steps, int step_ms) {
  v1::JobSpec spec;
  spec.set_display_name("service-bench");
  spec.mutable_model()->set_name("small_cnn");
  spec.mutable_model()->set_width(4);
  spec.mutable_model()->set_init_seed(seed);
  v1::DatasetSpec& data = *spec.mutable_dataset();
  data.set_kind(v1::DatasetSpec::SYNTHETIC);
  data.set_synthetic_examples(256);
  data.set_synthetic_size(16);
  data.set_synthetic_classes(4);
  data.set_no_validation(true);
  v1::TrainingSpec& training = *spec.mutable_training();
  training.set_batch_size(32);
  training.set_max_steps(max_steps);
  training.set_epochs(std::min<int64_t>(100000, max_steps / 8 + 1));  // 8 batches an epoch; the API's most
  training.set_optimizer("sgd_momentum");
  training.set_lr(0.05);
  training.set_seed(7);
  training.set_fidelity_interval(-1);
  spec.mutable_checkpoint()->set_every_seconds(-1);
  (*spec.mutable_labels())["bench"] = "service";
  (*spec.mutable_labels())["fake_step_ms"] = absl::StrCat(step_ms);
  return spec;
}

bool Terminal(v1::JobState state) { return state == v1::SUCCEEDED || state == v1::FAILED || state == v1::CANCELLED; }

int64_t SystemNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// CPU time of this process (user + system), seconds.
double OwnCpuSeconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// The machine's CPU time from /proc/stat's first line, in clock ticks: all of it, and what the
// hypervisor gave to other guests (steal) while this one's cores were ready to run.
struct MachineTicks {
  double total = 0;
  double steal = 0;
};
MachineTicks ReadMachineTicks() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  in >> cpu;
  MachineTicks ticks;
  double value = 0;
  for (int field = 0; field < 10 && in >> value; ++field) {
    // user nice system idle iowait irq softirq steal guest guest_nice: guest time is in user already.
    if (field < 8) ticks.total += value;
    if (field == 7) ticks.steal = value;
  }
  return ticks;
}
// The share of the machine's CPU time stolen since `start`: a figure run while it is high measures the
// neighbours as much as the service.
double StealSince(const MachineTicks& start) {
  const MachineTicks end = ReadMachineTicks();
  const double total = end.total - start.total;
  return total > 0 ? (end.steal - start.steal) / total : 0.0;
}

double MillisSince(SteadyClock::time_point start) {
  return std::chrono::duration<double, std::milli>(SteadyClock::now() - start).count();
}

// ---------------------------------------------------------------------------------------------------
// Statistics and output.

struct Summary {
  int64_t samples = 0;
  double p50 = 0, p99 = 0, mean = 0, max = 0;
};

// Nearest-rank percentiles.
Summary Summarize(std::vector<double> values) {
  Summary s;
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  auto rank = [&](double q) {
    const size_t index = static_cast<size_t>(std::ceil(q * static_cast<double>(values.size())));
    return values[std::min(values.size() - 1, index == 0 ? 0 : index - 1)];
  };
  s.samples = static_cast<int64_t>(values.size());
  s.p50 = rank(0.50);
  s.p99 = rank(0.99);
  double sum = 0;
  for (double v : values) sum += v;
  s.mean = sum / static_cast<double>(values.size());
  s.max = values.back();
  return s;
}

struct MarkdownRow {
  std::string figure, who, samples, p50, p99, details, goal;
};

class Report {
 public:
  Report(const Options& options, const Sizes& sizes) : options_(options), sizes_(sizes) {}

  absl::Status Open() {
    if (options_.json.empty()) return absl::OkStatus();
    json_.open(options_.json, std::ios::trunc);
    if (!json_) return absl::UnavailableError(absl::StrCat("cannot write ", options_.json));
    return absl::OkStatus();
  }

  // The fields every row starts with.
  JsonObject Begin(const std::string& name, const std::string& who_key, int64_t who, const Summary& s) const {
    JsonObject row;
    row.String("name", name).Int(who_key, who).Number("p50_ms", s.p50).Number("p99_ms", s.p99);
    row.Number("mean_ms", s.mean).Number("max_ms", s.max).Int("samples", s.samples);
    return row;
  }

  // Adds the shared fields (worker, machine) and writes the row; `markdown` is its table line.
  void Add(JsonObject& row, int client_threads, MarkdownRow markdown) {
    double load[1] = {0};
    ::getloadavg(load, 1);
    row.String("worker", FakeWorker(options_) ? "fake" : "xtrain-worker")
        .String("worker_bin", options_.worker_bin)
        .Int("cores", std::thread::hardware_concurrency())
        .Int("client_threads", client_threads)
        .Number("loadavg_1m", load[0])
        .Bool("quick", options_.quick)
        .String("server_args", absl::StrJoin(options_.server_args, " "))
        .String("date", Now("%Y-%m-%dT%H:%M:%S"));
    if (json_) {
      json_ << row.Text() << "\n";
      json_.flush();
    }
    std::fprintf(stderr, "  %s\n", row.Text().c_str());
    rows_.push_back(std::move(markdown));
    WriteMarkdown();
  }

  void Note(const std::string& line) { notes_.push_back(line); }

  void WriteMarkdown() const {
    if (options_.markdown.empty()) return;
    std::ofstream out(options_.markdown, std::ios::trunc);
    out << "# xtrain-bench service" << (options_.quick ? " --quick" : "") << "\n\n";
    out << "Date " << Now("%F %H:%M") << "; " << std::thread::hardware_concurrency()
        << " cores shared by the server, its workers and the benchmark's clients (all on this machine, "
           "over loopback). Worker: `"
        << options_.worker_bin << "`"
        << (FakeWorker(options_) ? " (**the fake worker**: plans at once and steps every "
                                   "`fake_step_ms`, no LibTorch; PlanJob cold and submit-to-first-step do not "
                                   "include real planning or training)"
                                 : "")
        << ". Store: " << sizes_.store_jobs << " jobs.\n\n";
    out << "| figure | clients / watchers | samples | p50 ms | p99 ms | details | goal |\n";
    out << "|---|---|---|---|---|---|---|\n";
    for (const MarkdownRow& r : rows_) {
      out << "| " << r.figure << " | " << r.who << " | " << r.samples << " | " << r.p50 << " | " << r.p99 << " | "
          << r.details << " | " << r.goal << " |\n";
    }
    if (!notes_.empty()) {
      out << "\n";
      for (const std::string& note : notes_) out << "- " << note << "\n";
    }
  }

 private:
  const Options& options_;
  const Sizes& sizes_;
  std::ofstream json_;
  std::vector<MarkdownRow> rows_;
  std::vector<std::string> notes_;
};

std::string Ms(double value) { return absl::StrFormat("%.2f", value); }

std::string GoalText(bool met, const std::string& goal) { return absl::StrCat(met ? "met: " : "**missed**: ", goal); }

// ---------------------------------------------------------------------------------------------------
// The store: jobs for GetJob and ListJobs to read, cancelled so nothing trains while they are read.

absl::StatusOr<std::vector<std::string>> FillStore(client::Client& client, int jobs) {
  std::vector<std::string> ids;
  for (int i = 0; i < jobs; ++i) {
    // One spec for all: planned once, then from the cache.
    absl::StatusOr<v1::SubmitJobResponse> submitted =
        client.SubmitJob(BenchSpec(1, 1000, 50), absl::StrCat("service-bench-store-", i));
    if (!submitted.ok()) return submitted.status();
    ids.push_back(submitted->job().id());
  }
  for (const std::string& id : ids) {
    absl::StatusOr<v1::Job> cancelled = client.CancelJob(id);
    if (!cancelled.ok()) return cancelled.status();
  }
  const auto deadline = SteadyClock::now() + std::chrono::minutes(2);
  for (const std::string& id : ids) {
    for (;;) {
      absl::StatusOr<v1::Job> job = client.GetJob(id);
      if (!job.ok()) return job.status();
      if (Terminal(job->state())) break;
      if (SteadyClock::now() > deadline) return absl::DeadlineExceededError(absl::StrCat("job ", id, " did not end after its cancel"));
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  return ids;
}

// ---------------------------------------------------------------------------------------------------
// Figure 1: unary latency at concurrent clients.

// One client's calls: how to fill a request, start the call on gRPC's callback API, and check the answer.
template <typename Request, typename Response>
struct UnaryKind {
  std::function<void(int client, int call, Request*)> fill;  // call -1: the untimed connecting call
  std::function<void(v1::TrainingService::Stub&, grpc::ClientContext*, const Request*, Response*,
                     std::function<void(grpc::Status)>)>
      start;
  std::function<grpc::Status(const Request&, const Response&)> check;
};

// A closed-loop client on its own channel: each call starts as the previous one returns, from gRPC's
// callback thread, so the benchmark runs no thread per client (64 blocking threads on 2 cores would
// measure their own scheduling as much as the server).
template <typename Request, typename Response>
class UnaryLoop {
 public:
  UnaryLoop(v1::TrainingService::Stub& stub, const UnaryKind<Request, Response>& kind, int client, int calls,
            std::latch& finished)
      : stub_(stub), kind_(kind), client_(client), calls_(calls), finished_(finished) {
    times_.reserve(calls);
  }

  // The connecting call: waits for the channel (a failed connect attempt is retried), untimed.
  grpc::Status Connect() {
    grpc::ClientContext context;
    SetDeadline(context, std::chrono::seconds(60));
    context.set_wait_for_ready(true);
    Request request;
    Response response;
    kind_.fill(client_, -1, &request);
    std::promise<grpc::Status> done;
    kind_.start(stub_, &context, &request, &response, [&done](grpc::Status s) { done.set_value(std::move(s)); });
    grpc::Status status = done.get_future().get();
    return status.ok() ? kind_.check(request, response) : status;
  }

  void Start() { Next(); }

  const std::vector<double>& times() const { return times_; }
  const grpc::Status& status() const { return status_; }

 private:
  void Next() {
    context_ = std::make_unique<grpc::ClientContext>();
    SetDeadline(*context_, std::chrono::seconds(60));
    request_.Clear();
    response_.Clear();
    kind_.fill(client_, static_cast<int>(times_.size()), &request_);
    start_ = SteadyClock::now();
    kind_.start(stub_, context_.get(), &request_, &response_, [this](grpc::Status status) { Done(std::move(status)); });
  }

  void Done(grpc::Status status) {
    times_.push_back(MillisSince(start_));
    if (status.ok()) status = kind_.check(request_, response_);
    if (!status.ok()) {
      status_ = std::move(status);
      finished_.count_down();
      return;
    }
    if (static_cast<int>(times_.size()) == calls_) {
      finished_.count_down();
      return;
    }
    Next();
  }

  v1::TrainingService::Stub& stub_;
  const UnaryKind<Request, Response>& kind_;
  const int client_;
  const int calls_;
  std::latch& finished_;
  std::unique_ptr<grpc::ClientContext> context_;
  Request request_;
  Response response_;
  SteadyClock::time_point start_;
  std::vector<double> times_;
  grpc::Status status_;
};

struct UnaryRun {
  std::vector<double> times_ms;
  double wall_s = 0;
  double client_cpu_s = 0;  // this process's CPU time over the timed calls
};

// `clients` closed-loop clients, each on its own channel; one untimed call each to connect, then
// `calls` timed ones each, all starting together.
template <typename Request, typename Response>
absl::StatusOr<UnaryRun> RunClients(const std::string& target, int clients, int calls,
                                    const UnaryKind<Request, Response>& kind) {
  std::vector<std::unique_ptr<v1::TrainingService::Stub>> stubs;
  for (int c = 0; c < clients; ++c) stubs.push_back(OwnStub(target));
  std::latch finished(clients);
  std::vector<std::unique_ptr<UnaryLoop<Request, Response>>> loops;
  for (int c = 0; c < clients; ++c) {
    loops.push_back(std::make_unique<UnaryLoop<Request, Response>>(*stubs[c], kind, c, calls, finished));
    if (grpc::Status warm = loops.back()->Connect(); !warm.ok()) return Failed(absl::StrCat("client ", c), warm);
  }
  const double cpu_start = OwnCpuSeconds();
  const auto start = SteadyClock::now();
  for (auto& loop : loops) loop->Start();
  finished.wait();
  UnaryRun run;
  run.wall_s = MillisSince(start) / 1000;
  run.client_cpu_s = OwnCpuSeconds() - cpu_start;
  for (int c = 0; c < clients; ++c) {
    if (!loops[c]->status().ok()) return Failed(absl::StrCat("client ", c), loops[c]->status());
    run.times_ms.insert(run.times_ms.end(), loops[c]->times().begin(), loops[c]->times().end());
  }
  return run;
}

absl::Status UnaryFigures(Report& report, const Sizes& sizes, const ServerProcess& server,
                          const std::vector<std::string>& ids, const std::set<std::string>& figures) {
  const std::string target = server.target();
  UnaryKind<v1::GetJobRequest, v1::GetJobResponse> get;
  get.fill = [&ids](int client, int call, v1::GetJobRequest* request) {
    request->set_job_id(ids[(static_cast<size_t>(client) * 7919 + static_cast<size_t>(call + 1) * 31) % ids.size()]);
  };
  get.start = [](v1::TrainingService::Stub& stub, grpc::ClientContext* context, const v1::GetJobRequest* request,
                 v1::GetJobResponse* response, std::function<void(grpc::Status)> done) {
    stub.async()->GetJob(context, request, response, std::move(done));
  };
  get.check = [](const v1::GetJobRequest& request, const v1::GetJobResponse& response) {
    if (response.job().id() != request.job_id()) return grpc::Status(grpc::StatusCode::INTERNAL, "GetJob answered another job");
    return grpc::Status::OK;
  };
  UnaryKind<v1::ListJobsRequest, v1::ListJobsResponse> list;
  list.fill = [](int, int, v1::ListJobsRequest* request) { request->set_page_size(50); };
  list.start = [](v1::TrainingService::Stub& stub, grpc::ClientContext* context, const v1::ListJobsRequest* request,
                  v1::ListJobsResponse* response, std::function<void(grpc::Status)> done) {
    stub.async()->ListJobs(context, request, response, std::move(done));
  };
  list.check = [&sizes](const v1::ListJobsRequest&, const v1::ListJobsResponse& response) {
    if (response.jobs_size() != std::min(50, sizes.store_jobs)) {
      return grpc::Status(grpc::StatusCode::INTERNAL, absl::StrCat("ListJobs gave ", response.jobs_size(), " jobs"));
    }
    return grpc::Status::OK;
  };
  struct Kind {
    const char* name;
    std::function<absl::StatusOr<UnaryRun>(int clients, int calls)> run;
    int total, min;
    const char* what;
  };
  const Kind kinds[] = {
      {"get_job", [&](int clients, int calls) { return RunClients(target, clients, calls, get); }, sizes.get_calls_total,
       sizes.get_calls_min, "one job of the store"},
      {"list_jobs", [&](int clients, int calls) { return RunClients(target, clients, calls, list); },
       sizes.list_calls_total, sizes.list_calls_min, "first page, 50 jobs"},
  };
  for (const Kind& kind : kinds) {
    if (!figures.count(kind.name)) continue;
    for (int clients : sizes.clients) {
      const int calls = std::max(kind.min, kind.total / clients);
      std::fprintf(stderr, "%s: %d clients x %d calls\n", kind.name, clients, calls);
      absl::StatusOr<double> cpu_before = server.CpuSeconds();
      const MachineTicks ticks = ReadMachineTicks();
      absl::StatusOr<UnaryRun> run = kind.run(clients, calls);
      const double steal = StealSince(ticks);
      absl::StatusOr<double> cpu_after = server.CpuSeconds();
      if (!run.ok()) return absl::Status(run.status().code(), absl::StrCat(kind.name, ": ", run.status().message()));
      if (!cpu_before.ok()) return cpu_before.status();
      if (!cpu_after.ok()) return cpu_after.status();
      const Summary s = Summarize(run->times_ms);
      const double qps = static_cast<double>(s.samples) / run->wall_s;
      // Includes the untimed connecting call of each client.
      const double server_cpu_ms = 1000 * (*cpu_after - *cpu_before) / static_cast<double>(s.samples + clients);
      const double client_cpu_ms = 1000 * run->client_cpu_s / static_cast<double>(s.samples);
      JsonObject row = report.Begin(kind.name, "clients", clients, s);
      row.Int("calls_per_client", calls)
          .Number("calls_per_second", qps)
          .Number("server_cpu_ms_per_call", server_cpu_ms)
          .Number("client_cpu_ms_per_call", client_cpu_ms)
          .Number("server_cpu_cores", (*cpu_after - *cpu_before) / run->wall_s)
          .Number("client_cpu_cores", run->client_cpu_s / run->wall_s)
          .Int("store_jobs", sizes.store_jobs)
          .Number("steal_fraction", steal);
      std::string goal;
      if (std::string(kind.name) == "get_job" && clients == 64) {
        const bool met = s.p99 < 5.0;
        row.String("goal", "p99 < 5 ms at 64 clients").Bool("goal_met", met);
        goal = GoalText(met, "p99 < 5 ms");
      }
      report.Add(row, 0,
                 {kind.name, absl::StrCat(clients, clients == 1 ? " client" : " clients"), absl::StrCat(s.samples),
                  Ms(s.p50), Ms(s.p99),
                  absl::StrFormat("%s; %.0f calls/s; CPU a call: server %.3f ms, clients %.3f ms; %.0f%% stolen", kind.what,
                                  qps, server_cpu_ms, client_cpu_ms, 100 * steal),
                  goal});
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// Figure 2: PlanJob, cold and cached.

absl::Status PlanFigures(Report& report, const Sizes& sizes, const std::string& target) {
  std::unique_ptr<v1::TrainingService::Stub> stub = OwnStub(target);
  auto plan = [&stub](uint64_t seed, bool want_cached, double* ms) -> absl::Status {
    grpc::ClientContext context;
    SetDeadline(context, std::chrono::seconds(600));
    v1::PlanJobRequest request;
    *request.mutable_spec() = BenchSpec(seed, 1000, 50);
    v1::PlanJobResponse response;
    const auto start = SteadyClock::now();
    grpc::Status status = stub->PlanJob(&context, request, &response);
    *ms = MillisSince(start);
    if (!status.ok()) return Failed("PlanJob", status);
    if (response.cached() != want_cached) {
      return absl::InternalError(absl::StrCat("PlanJob of seed ", seed, " answered cached=", response.cached(),
                                              ", expected ", want_cached));
    }
    if (response.plan().predicted_peak_bytes() <= 0) return absl::InternalError("PlanJob gave no predicted peak");
    return absl::OkStatus();
  };
  std::fprintf(stderr, "plan_job: %d cold, %d cached\n", sizes.plan_cold, sizes.plan_cached);
  std::vector<double> cold, cached;
  for (int i = 0; i < sizes.plan_cold; ++i) {
    double ms = 0;
    if (absl::Status s = plan(1000 + i, false, &ms); !s.ok()) return s;
    cold.push_back(ms);
  }
  for (int i = 0; i < sizes.plan_cached; ++i) {
    double ms = 0;
    if (absl::Status s = plan(1000, true, &ms); !s.ok()) return s;
    cached.push_back(ms);
  }
  const Summary c = Summarize(cold);
  JsonObject cold_row = report.Begin("plan_job_cold", "clients", 1, c);
  cold_row.String("what", "a spec not planned before: a planning worker process runs");
  report.Add(cold_row, 1,
             {"plan_job_cold", "1 client", absl::StrCat(c.samples), Ms(c.p50), Ms(c.p99),
              "new spec each call: a planning worker runs", ""});
  const Summary h = Summarize(cached);
  const bool met = h.p99 < 20.0;
  JsonObject cached_row = report.Begin("plan_job_cached", "clients", 1, h);
  cached_row.String("what", "the same spec again: answered from the plan cache")
      .String("goal", "p99 < 20 ms")
      .Bool("goal_met", met);
  report.Add(cached_row, 1,
             {"plan_job_cached", "1 client", absl::StrCat(h.samples), Ms(h.p50), Ms(h.p99), "same spec again (cache)",
              GoalText(met, "p99 < 20 ms")});
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// Figure 3: submit to first step.

// Submits `spec` under `request_id`; returns the job's id.
absl::StatusOr<std::string> Submit(v1::TrainingService::Stub& stub, const v1::JobSpec& spec,
                                   const std::string& request_id) {
  grpc::ClientContext context;
  SetDeadline(context, std::chrono::seconds(600));
  v1::SubmitJobRequest request;
  *request.mutable_spec() = spec;
  request.set_client_request_id(request_id);
  v1::SubmitJobResponse submitted;
  grpc::Status status = stub.SubmitJob(&context, request, &submitted);
  if (!status.ok()) return Failed("SubmitJob", status);
  return submitted.job().id();
}

absl::Status Cancel(v1::TrainingService::Stub& stub, const std::string& id) {
  grpc::ClientContext context;
  SetDeadline(context, std::chrono::seconds(60));
  v1::CancelJobRequest cancel;
  cancel.set_job_id(id);
  v1::CancelJobResponse response;
  grpc::Status status = stub.CancelJob(&context, cancel, &response);
  if (!status.ok()) return Failed(absl::StrCat("CancelJob of ", id), status);
  return absl::OkStatus();
}

// Submits `spec`, watches it from the start, and returns the milliseconds from the submit until the
// first step event arrived; then cancels the job and waits for its stream to end.
absl::StatusOr<double> SubmitToFirstStep(v1::TrainingService::Stub& stub, const v1::JobSpec& spec,
                                         const std::string& request_id) {
  const auto start = SteadyClock::now();
  absl::StatusOr<std::string> submitted = Submit(stub, spec, request_id);
  if (!submitted.ok()) return submitted.status();
  const std::string id = *submitted;
  grpc::ClientContext context;
  SetDeadline(context, std::chrono::seconds(600));
  v1::WatchJobRequest request;
  request.set_job_id(id);
  std::unique_ptr<grpc::ClientReader<v1::WatchJobResponse>> reader = stub.WatchJob(&context, request);
  v1::WatchJobResponse response;
  std::optional<double> first_step_ms;
  bool cancelled = false;
  while (reader->Read(&response)) {
    if (!first_step_ms && response.event().has_step()) {
      first_step_ms = MillisSince(start);
      if (absl::Status s = Cancel(stub, id); !s.ok()) return s;
      cancelled = true;
    }
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return Failed(absl::StrCat("WatchJob of ", id), status);
  if (!first_step_ms) {
    return absl::InternalError(absl::StrCat("job ", id, "'s stream ended without a step event (last event: ",
                                            response.event().ShortDebugString(), ")"));
  }
  if (!cancelled) return absl::InternalError("no cancel was sent");
  return *first_step_ms;
}

absl::Status SubmitFigures(Report& report, const Sizes& sizes, const std::string& target, bool fake) {
  std::unique_ptr<v1::TrainingService::Stub> stub = OwnStub(target);
  for (bool cached : {false, true}) {
    std::fprintf(stderr, "submit_to_first_step: %d runs, plan %s\n", sizes.submit_runs, cached ? "cached" : "not cached");
    std::vector<double> times;
    for (int i = 0; i < sizes.submit_runs; ++i) {
      // Seeds 2000+: not planned before; the cached runs reuse the first of them.
      const uint64_t seed = cached ? 2000 : 2000 + static_cast<uint64_t>(i);
      absl::StatusOr<double> ms =
          SubmitToFirstStep(*stub, BenchSpec(seed, 100000, 50), absl::StrCat("service-bench-submit-", cached ? "cached-" : "cold-", i));
      if (!ms.ok()) return ms.status();
      times.push_back(*ms);
    }
    const Summary s = Summarize(times);
    JsonObject row = report.Begin("submit_to_first_step", "clients", 1, s);
    row.Bool("plan_cached", cached)
        .String("what", fake ? "fake worker: its first step comes 50 ms after it starts (fake_step_ms)"
                             : "tiny small_cnn job (16x16 synthetic, batch 32) on the real worker");
    report.Add(row, 1,
               {"submit_to_first_step", "1 client", absl::StrCat(s.samples), Ms(s.p50), Ms(s.p99),
                absl::StrCat(cached ? "plan cached" : "plan not cached (planning worker first)",
                             fake ? "; fake worker, first step 50 ms after start" : "; real worker, tiny job"),
                ""});
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------
// Figure 4: many watchers on one running job. The watchers are streams of gRPC's asynchronous API, one
// completion queue per channel, each drained by one thread: no thread per watcher, and no queue holds
// more than one channel's streams (Debian's gRPC is built with its debug checks, which scan a queue's
// outstanding operations on every completion: 10,000 streams on one queue would cost the client more
// than the server spends sending).

struct WatchShared {
  std::atomic<int64_t> receiving{0};                // watchers that got at least one event
  std::atomic<int64_t> caught_up_through{INT64_MAX};  // a watcher that got this sequence has replayed its backlog
  std::atomic<int64_t> caught_up{0};                  // watchers that have
  std::atomic<int64_t> window_start_ns{INT64_MAX};  // lag is recorded for events received in the window
  std::atomic<int64_t> window_end_ns{INT64_MAX};
  std::atomic<int64_t> done{0};                     // streams ended
  std::atomic<int64_t> errors{0};
  std::mutex mutex;
  std::string first_error;  // guarded by mutex
};

// One completion queue and the thread that drains it; what its streams received. Only its thread
// writes the figures, read after the thread is joined.
struct WatchLane {
  grpc::CompletionQueue cq;
  std::thread thread;
  std::vector<double> lags_ms;
  int64_t events = 0;
  int64_t coalesced = 0;
};

// One WatchJob stream on its lane's queue; its tags are its address with the step in the low bits.
class WatchStream {
 public:
  enum Step : uintptr_t { kStarted = 0, kRead = 1, kFinished = 2 };

  WatchStream(WatchShared& shared, WatchLane& lane, v1::TrainingService::Stub& stub, const std::string& job_id,
              int64_t from_sequence)
      : shared_(shared), lane_(lane) {
    v1::WatchJobRequest request;
    request.set_job_id(job_id);
    request.set_from_sequence(from_sequence);
    reader_ = stub.PrepareAsyncWatchJob(&context_, request, &lane.cq);
    reader_->StartCall(Tag(kStarted));
  }

  static void Proceed(void* tag, bool ok) {
    auto* stream = reinterpret_cast<WatchStream*>(reinterpret_cast<uintptr_t>(tag) & ~uintptr_t{3});
    stream->Proceed(static_cast<Step>(reinterpret_cast<uintptr_t>(tag) & 3), ok);
  }

  void Cancel() { context_.TryCancel(); }

 private:
  void* Tag(Step step) { return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(this) | step); }

  // On the lane's thread; one step at a time.
  void Proceed(Step step, bool ok) {
    switch (step) {
      case kStarted:
        if (!ok) return reader_->Finish(&status_, Tag(kFinished));
        return reader_->Read(&response_, Tag(kRead));
      case kRead:
        if (!ok) return reader_->Finish(&status_, Tag(kFinished));
        Received();
        return reader_->Read(&response_, Tag(kRead));
      case kFinished:
        if (!status_.ok() && status_.error_code() != grpc::StatusCode::CANCELLED && shared_.errors++ == 0) {
          std::lock_guard<std::mutex> lock(shared_.mutex);
          shared_.first_error = absl::StrCat(static_cast<int>(status_.error_code()), ": ", status_.error_message());
        }
        ++shared_.done;
        return;
    }
  }

  void Received() {
    const int64_t now = SystemNanos();
    if (!receiving_) {
      receiving_ = true;
      ++shared_.receiving;
    }
    if (!caught_up_ && response_.event().sequence() >= shared_.caught_up_through.load(std::memory_order_relaxed)) {
      caught_up_ = true;
      ++shared_.caught_up;
    }
    ++lane_.events;
    lane_.coalesced += response_.coalesced();
    const google::protobuf::Timestamp& time = response_.event().time();
    const int64_t at = time.seconds() * 1000000000 + time.nanos();
    if (now >= shared_.window_start_ns.load(std::memory_order_relaxed) &&
        now < shared_.window_end_ns.load(std::memory_order_relaxed)) {
      lane_.lags_ms.push_back(static_cast<double>(now - at) / 1e6);
    }
  }

  WatchShared& shared_;
  WatchLane& lane_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientAsyncReader<v1::WatchJobResponse>> reader_;
  v1::WatchJobResponse response_;
  grpc::Status status_;
  bool receiving_ = false;
  bool caught_up_ = false;
};

absl::StatusOr<v1::Job> GetJob(v1::TrainingService::Stub& stub, const std::string& id) {
  grpc::ClientContext context;
  SetDeadline(context, std::chrono::seconds(60));
  v1::GetJobRequest request;
  request.set_job_id(id);
  v1::GetJobResponse response;
  grpc::Status status = stub.GetJob(&context, request, &response);
  if (!status.ok()) return Failed("GetJob", status);
  return response.job();
}

absl::Status WatchFigure(Report& report, const Sizes& sizes, const ServerProcess& server, const std::string& job_id,
                         int watchers, bool fake) {
  std::unique_ptr<v1::TrainingService::Stub> control = OwnStub(server.target());
  absl::StatusOr<v1::Job> job = GetJob(*control, job_id);
  if (!job.ok()) return job.status();
  if (job->state() != v1::RUNNING) return absl::InternalError(absl::StrCat("the watched job is ", v1::JobState_Name(job->state())));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // let the server settle after the last figure
  absl::StatusOr<int64_t> rss_before = server.Rss();
  if (!rss_before.ok()) return rss_before.status();
  job = GetJob(*control, job_id);
  if (!job.ok()) return job.status();

  const int channels = (watchers + kWatchersPerChannel - 1) / kWatchersPerChannel;
  std::fprintf(stderr, "watch_job: %d watchers on %d channels\n", watchers, channels);
  std::vector<std::unique_ptr<v1::TrainingService::Stub>> stubs;
  for (int c = 0; c < channels; ++c) stubs.push_back(OwnStub(server.target()));
  WatchShared shared;
  std::vector<std::unique_ptr<WatchLane>> lanes;
  for (int c = 0; c < channels; ++c) {
    lanes.push_back(std::make_unique<WatchLane>());
    WatchLane* lane = lanes.back().get();
    lane->thread = std::thread([lane] {
      void* tag = nullptr;
      bool ok = false;
      while (lane->cq.Next(&tag, &ok)) WatchStream::Proceed(tag, ok);
    });
  }
  std::vector<std::unique_ptr<WatchStream>> streams;
  streams.reserve(watchers);
  const auto connect_start = SteadyClock::now();
  // Live events only: from the sequence after the newest.
  for (int w = 0; w < watchers; ++w) {
    streams.push_back(std::make_unique<WatchStream>(shared, *lanes[w % channels], *stubs[w % channels], job_id,
                                                    job->last_sequence() + 1));
  }
  const auto connect_deadline = connect_start + std::chrono::seconds(60) + std::chrono::milliseconds(10) * watchers;
  while (shared.receiving.load() < watchers && shared.done.load() == 0 && SteadyClock::now() < connect_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const double connect_s = MillisSince(connect_start) / 1000;
  const int64_t receiving = shared.receiving.load();
  absl::StatusOr<int64_t> rss_connected = server.Rss();

  // Each watcher asked for the events since the bench read the job, seconds before the last one
  // connected: that backlog is replayed whole (never coalesced), so wait until every watcher has had an
  // event published after all connected, then 1 s more; then the measured window: the lag of every event
  // a watcher receives inside it (by receipt time, so a watcher that stays behind still counts).
  const auto catch_up_start = SteadyClock::now();
  absl::StatusOr<v1::Job> connected_job = GetJob(*control, job_id);
  if (!connected_job.ok()) return connected_job.status();
  shared.caught_up_through = connected_job->last_sequence() + 1;
  const auto catch_up_deadline = catch_up_start + std::chrono::seconds(120);
  while (shared.caught_up.load() < receiving && shared.done.load() == 0 && SteadyClock::now() < catch_up_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const double catch_up_s = MillisSince(catch_up_start) / 1000;
  if (shared.caught_up.load() < receiving) {
    return absl::DeadlineExceededError(absl::StrCat(receiving - shared.caught_up.load(), " of ", receiving,
                                                    " watchers did not replay their backlog within 120 s"));
  }
  std::this_thread::sleep_for(std::chrono::seconds(1));
  absl::StatusOr<v1::Job> at_start = GetJob(*control, job_id);
  absl::StatusOr<double> server_cpu_start = server.CpuSeconds();
  const auto threads_start = server.ThreadCpuSeconds();
  const double client_cpu_start = OwnCpuSeconds();
  const MachineTicks window_ticks = ReadMachineTicks();
  const auto window_start = SteadyClock::now();
  shared.window_start_ns = SystemNanos();
  std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(sizes.watch_window_s * 1000)));
  shared.window_end_ns = SystemNanos();
  const double window_s = MillisSince(window_start) / 1000;
  const double steal = StealSince(window_ticks);
  absl::StatusOr<double> server_cpu_end = server.CpuSeconds();
  // The server's busiest thread in the window (one thread near 1.0 is a serial bottleneck).
  std::string busiest_thread;
  double busiest_cpu = 0;
  for (const auto& [tid, end] : server.ThreadCpuSeconds()) {
    auto start = threads_start.find(tid);
    const double used = end.second - (start == threads_start.end() ? 0.0 : start->second.second);
    if (used > busiest_cpu) {
      busiest_cpu = used;
      busiest_thread = absl::StrCat(end.first, " (", tid, ")");
    }
  }
  const double client_cpu = (OwnCpuSeconds() - client_cpu_start) / window_s;
  absl::StatusOr<int64_t> rss_window = server.Rss();
  absl::StatusOr<v1::Job> at_end = GetJob(*control, job_id);

  for (auto& stream : streams) stream->Cancel();
  const auto cancel_deadline = SteadyClock::now() + std::chrono::seconds(120);
  while (shared.done.load() < watchers && SteadyClock::now() < cancel_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (shared.done.load() < watchers) {
    // A stream must outlive its last tag: leave the streams, queues and their threads rather than free
    // them under gRPC.
    for (auto& stream : streams) (void)stream.release();
    for (auto& lane : lanes) lane.release()->thread.detach();
    return absl::DeadlineExceededError("watch streams did not end within 120 s of their cancel");
  }
  std::vector<double> lags_ms;
  int64_t coalesced = 0;
  for (auto& lane : lanes) {
    lane->cq.Shutdown();
    lane->thread.join();
    lags_ms.insert(lags_ms.end(), lane->lags_ms.begin(), lane->lags_ms.end());
    coalesced += lane->coalesced;
  }
  streams.clear();
  const std::string first_error = [&shared] {
    std::lock_guard<std::mutex> lock(shared.mutex);
    return shared.first_error;
  }();
  if (receiving < watchers) {
    return absl::DeadlineExceededError(absl::StrCat("only ", receiving, " of ", watchers, " watchers received an event within ",
                                                    absl::StrFormat("%.1f", connect_s), " s",
                                                    first_error.empty() ? "" : "; first error: ", first_error));
  }
  if (shared.errors > 0) {
    return absl::InternalError(absl::StrCat(shared.errors.load(), " watch streams failed; the first: ", first_error));
  }
  if (!rss_connected.ok()) return rss_connected.status();
  if (!rss_window.ok()) return rss_window.status();
  if (!at_start.ok()) return at_start.status();
  if (!at_end.ok()) return at_end.status();
  if (at_end->state() != v1::RUNNING) return absl::InternalError("the watched job stopped running during the window");
  if (!server_cpu_start.ok()) return server_cpu_start.status();
  if (!server_cpu_end.ok()) return server_cpu_end.status();
  const double server_cpu = (*server_cpu_end - *server_cpu_start) / window_s;

  const Summary s = Summarize(std::move(lags_ms));
  if (s.samples == 0) return absl::InternalError("no event was delivered inside the measured window");
  // The job's event rate from two snapshots (last_sequence at update_time: exact however late GetJob
  // answers under load), and the events published in the window at that rate.
  auto seconds = [](const google::protobuf::Timestamp& t) { return static_cast<double>(t.seconds()) + t.nanos() / 1e9; };
  const double snapshot_s = seconds(at_end->update_time()) - seconds(at_start->update_time());
  const double events_per_second =
      snapshot_s > 0 ? static_cast<double>(at_end->last_sequence() - at_start->last_sequence()) / snapshot_s : 0;
  const int64_t published = std::llround(events_per_second * window_s);
  const int64_t rss_after = std::max(*rss_connected, *rss_window);
  const double per_watcher = static_cast<double>(rss_after - *rss_before) / watchers;
  const double delivered = published > 0 ? static_cast<double>(s.samples) / (static_cast<double>(published) * watchers) : 0;
  // CPU per delivered event on each side, and the cores each would need at this rate to deliver every
  // event to every watcher (events per second x watchers): above the cores there are, watchers fall
  // behind, in the server's queue (it coalesces) or in the transport's buffers (it cannot).
  const double server_us = 1e6 * server_cpu * window_s / static_cast<double>(s.samples);
  const double client_us = 1e6 * client_cpu * window_s / static_cast<double>(s.samples);
  const double demand = events_per_second * watchers;
  JsonObject row = report.Begin("watch_job", "watchers", watchers, s);
  row.String("lag", "receipt time on the client minus the event's time, events received in the window")
      .Int("channels", channels)
      .Number("window_s", sizes.watch_window_s)
      .Int("events_published", published)
      .Number("events_per_second", events_per_second)
      .Number("delivered_fraction", delivered)
      .Int("events_coalesced", coalesced)
      .Number("connect_s", connect_s)
      .Number("catch_up_s", catch_up_s)
      .Number("server_cpu_cores", server_cpu)
      .Number("client_cpu_cores", client_cpu)
      .Number("server_cpu_us_per_event", server_us)
      .Number("client_cpu_us_per_event", client_us)
      .Number("server_cores_to_deliver_all", server_us * demand / 1e6)
      .Number("client_cores_to_receive_all", client_us * demand / 1e6)
      .String("server_busiest_thread", busiest_thread)
      .Number("server_busiest_thread_cores", busiest_cpu / window_s)
      .Int("rss_before_bytes", *rss_before)
      .Int("rss_connected_bytes", *rss_connected)
      .Int("rss_window_bytes", *rss_window)
      .Number("memory_per_watcher_bytes", per_watcher)
      .Number("steal_fraction", steal);
  if (fake) row.Int("fake_step_ms", sizes.watch_step_ms);
  std::string goal;
  if (watchers == 10000) {
    const bool lag_met = s.p99 < 250.0, memory_met = per_watcher < 20000.0;
    row.String("goal", "p99 lag < 250 ms and < 20 KB (20,000 bytes) of server memory per watcher at 10,000 watchers")
        .Bool("goal_met", lag_met && memory_met)
        .Bool("lag_goal_met", lag_met)
        .Bool("memory_goal_met", memory_met);
    goal = absl::StrCat(GoalText(lag_met, "p99 lag < 250 ms"), "; ", GoalText(memory_met, "< 20 KB each"));
  }
  report.Add(row, 0,
             {"watch_job (delivery lag)", absl::StrCat(watchers, " watchers"), absl::StrCat(s.samples), Ms(s.p50),
              Ms(s.p99),
              absl::StrFormat("%.1f KB server RSS per watcher; %d events in %.0f s, %.0f%% delivered (rest coalesced); "
                              "connected in %.1f s, backlogs replayed %.1f s later; CPU cores busy: server %.2f (its busiest thread %.2f), clients %.2f; "
                              "CPU an event delivered: server %.1f us, clients %.1f us (every event to every "
                              "watcher would take %.2f and %.2f cores); %.0f%% stolen",
                              per_watcher / 1000, published, sizes.watch_window_s, 100 * delivered, connect_s, catch_up_s,
                              server_cpu, busiest_cpu / window_s, client_cpu, server_us, client_us,
                              server_us * demand / 1e6, client_us * demand / 1e6, 100 * steal),
              goal});
  return absl::OkStatus();
}

absl::Status WatchFigures(Report& report, const Sizes& sizes, const ServerProcess& server, bool fake) {
  std::unique_ptr<v1::TrainingService::Stub> stub = OwnStub(server.target());
  // A job that runs through both figures: many steps; cancelled at the end.
  absl::StatusOr<std::string> submitted =
      Submit(*stub, BenchSpec(3000, 10000000, sizes.watch_step_ms), "service-bench-watched");
  if (!submitted.ok()) return submitted.status();
  const std::string id = *submitted;
  // Wait for its first step.
  {
    grpc::ClientContext context;
    SetDeadline(context, std::chrono::seconds(600));
    v1::WatchJobRequest request;
    request.set_job_id(id);
    std::unique_ptr<grpc::ClientReader<v1::WatchJobResponse>> reader = stub->WatchJob(&context, request);
    v1::WatchJobResponse response;
    bool stepping = false;
    while (!stepping && reader->Read(&response)) stepping = response.event().has_step();
    context.TryCancel();
    reader->Finish();
    if (!stepping) return absl::InternalError(absl::StrCat("the watched job ", id, " ended before its first step"));
  }
  absl::Status result = absl::OkStatus();
  for (int watchers : sizes.watchers) {
    result = WatchFigure(report, sizes, server, id, watchers, fake);
    if (!result.ok()) break;
  }
  absl::Status cancelled = Cancel(*stub, id);
  return result.ok() ? cancelled : result;
}

// ---------------------------------------------------------------------------------------------------

absl::Status Run(const Options& options) {
  Sizes sizes = SizesFor(options.quick);
  if (!options.watchers.empty()) sizes.watchers = options.watchers;
  const bool fake = FakeWorker(options);
  Report report(options, sizes);
  if (absl::Status s = report.Open(); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<ScratchDir>> dir = ScratchDir::Create(options.data_root);
  if (!dir.ok()) return dir.status();
  HandleStopSignals((*dir)->path());
  std::fprintf(stderr, "xtrain-service-bench: server %s, worker %s%s, data dir %s\n", options.server_bin.c_str(),
               options.worker_bin.c_str(), fake ? " (fake)" : "", (*dir)->path().c_str());
  absl::StatusOr<std::unique_ptr<ServerProcess>> server = ServerProcess::Start(options, (*dir)->path());
  if (!server.ok()) return server.status();
  const std::string target = (*server)->target();

  absl::Status status = [&]() -> absl::Status {
    absl::StatusOr<std::unique_ptr<client::Client>> client = client::Client::Connect(target);
    if (!client.ok()) return client.status();
    std::fprintf(stderr, "filling the store with %d jobs\n", sizes.store_jobs);
    const auto fill_start = SteadyClock::now();
    absl::StatusOr<std::vector<std::string>> ids = FillStore(**client, sizes.store_jobs);
    if (!ids.ok()) return ids.status();
    report.Note(absl::StrFormat("The store: %d jobs submitted and cancelled in %.1f s before the latency figures.",
                                sizes.store_jobs, MillisSince(fill_start) / 1000));
    const std::set<std::string>& figures = options.figures;
    if (absl::Status s = UnaryFigures(report, sizes, **server, *ids, figures); !s.ok()) return s;
    if (figures.count("plan_job")) {
      if (absl::Status s = PlanFigures(report, sizes, target); !s.ok()) return s;
    }
    if (figures.count("submit_to_first_step")) {
      if (absl::Status s = SubmitFigures(report, sizes, target, fake); !s.ok()) return s;
    }
    return figures.count("watch_job") ? WatchFigures(report, sizes, **server, fake) : absl::OkStatus();
  }();
  report.Note("Clients, server and workers share the machine's cores: what the clients spend is CPU the server "
              "does not get. Each row gives both sides' CPU per call or per delivered event (this process for the "
              "clients, /proc for the server). The unary clients are closed loops on gRPC's callback API (each its "
              "own channel, with gRPC's retries off, the next call issued from the previous one's callback: no "
              "thread per client); the watchers are streams of gRPC's asynchronous API, one completion queue and "
              "one thread per 500.");
  report.Note("Stolen: the share of the machine's CPU time the hypervisor gave other guests during the figure "
              "(/proc/stat's steal); a figure with much stolen measured the neighbours too.");
  report.Note("The server paces live steps (--watch-step-rate, default 10,000 a second over all watchers, unless "
              "the rows' server_args say otherwise): at 10,000 watchers each gets the newest step about once a "
              "second, the rest coalesced. The lag is measured once every watcher has replayed the backlog it "
              "asked for (the events since the bench read the job, before the last watcher connected).");
  report.Note("Closed-loop clients wait for one another: at 64 clients a call's latency is about 64 / (calls per "
              "second), so the 64-client rows measure the throughput the server gets out of the cores it shares.");
  report.Note("Lag: the client's receipt time minus the event's `time` (set when the server appends the event, "
              "before the store commits it), for every event received in the window (1 s after the last watcher "
              "got its first event); watchers that fall behind get step events coalesced (`delivered_fraction` "
              "< 1: delivered over published x watchers), and coalesced events have no lag sample.");
  report.Note("Memory per watcher: server VmRSS after the watchers connected (the larger of right after and at the "
              "window's end) minus before, divided by the watchers.");
  report.WriteMarkdown();
  if (!status.ok()) {
    return absl::Status(status.code(), absl::StrCat(status.message(), "\nxtrain-server's log ends:\n", (*server)->LogTail()));
  }
  return absl::OkStatus();
}

}  // namespace

int RunServiceBench(int argc, char** argv) {
  absl::StatusOr<Options> options = ParseOptions(argc, argv);
  if (!options.ok()) {
    std::fprintf(stderr, "xtrain-bench service: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  if (options->help) {
    std::fputs(Usage().c_str(), stdout);
    return 0;
  }
  // As in xtrain-server (server/main.cc): Debian's Abseil keeps a process-wide deadlock graph on every
  // absl::Mutex lock, gRPC's included, which the clients would pay for on every call.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  const absl::Status status = Run(*options);
  // Stopped by a signal: its thread cleans up and exits; this one must not return first.
  while (g_stopping.load()) ::pause();
  if (!status.ok()) {
    std::fprintf(stderr, "xtrain-bench service: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace xtrain::bench
