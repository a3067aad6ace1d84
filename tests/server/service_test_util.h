#pragma once

#include <sys/types.h>

#include <array>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "server/api/server.h"
#include "xtrain/v1/training_service.grpc.pb.h"

namespace xtrain::server::testing {

// A fresh temporary folder, removed with everything in it when this goes out of scope (also when a
// test fails).
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The binaries under test: the build's own (compile definitions), or XTRAIN_TEST_WORKER /
// XTRAIN_TEST_SERVER from the environment (a sanitizer tree without LibTorch uses another tree's worker).
std::string WorkerPath();
std::string ServerPath();
// tests/server/checkpoint_fault_preload.cc, built as a library to LD_PRELOAD into workers.
std::string CheckpointFaultPreloadPath();

// Sets an environment variable (which the workers a server starts inherit) for its lifetime, then
// restores it. Set before the server starts, on the test's thread.
class ScopedEnv {
 public:
  ScopedEnv(const std::string& name, const std::string& value);
  ~ScopedEnv();
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// Every checkpoint file (checkpoint-*.pt) under `data_dir` loads as a resuming worker reads it
// (`xtrain-worker --check-checkpoints`: every entry's CRC-32, then the training state); each that
// does not is a test failure. A file deleted between the listing and the check (a job's keep policy)
// is not counted. Returns how many loaded.
int CheckKeptCheckpoints(const std::string& data_dir);

// XTRAIN_TEST_TLS=1 (ctest runs the service suite a second time so): every server these helpers start
// serves TLS with a certificate for 127.0.0.1 made by openssl, and authenticates by a tokens file whose
// one token is the default tenant's ("local", user), unless the test gives its own TLS files or tokens;
// every channel they make trusts that CA, and StubFor's calls carry that token.
bool OverTls();
struct SuiteTls {
  static constexpr const char* kToken = "suite-token";
  std::string ca, cert, key, tokens;  // PEM files and the tokens file, made once per process
};
const SuiteTls& Tls();

// A channel to 127.0.0.1:port (TLS under OverTls()) whose calls carry `authorization: <value>` (none
// when empty).
std::shared_ptr<grpc::Channel> ChannelWith(int port, const std::string& authorization, grpc::ChannelArguments args);
// ChannelWith the suite's token under OverTls(), and a 64 MiB receive limit.
std::shared_ptr<grpc::Channel> ChannelFor(int port);

// A stub on 127.0.0.1:port (ChannelFor).
std::unique_ptr<xtrain::v1::TrainingService::Stub> StubFor(int port);

// A real xtrain-server in this process, on port 0, with its own data dir (and data root) that go
// away with it.
struct TestServer {
  TempDir dir;
  std::string data_root;                 // <dir>/data: the server's only data root
  std::unique_ptr<Server> server;
  std::unique_ptr<xtrain::v1::TrainingService::Stub> stub;

  // `options` with listen, data_dir, data_roots and worker_path filled in where empty, and the metrics
  // port 0 (a free one) where it is the default.
  static std::unique_ptr<TestServer> Start(ServerOptions options = {});
};

// xtrain-server as a child process (the SIGKILL tests), on port 0 with --port-file.
class ServerProcess {
 public:
  // Starts it with `data_dir`, `data_root` and extra flags (a flag given again wins over the defaults);
  // waits until it serves (or fails the test). Its stderr goes to `stderr_path` when given.
  ServerProcess(const std::string& data_dir, const std::string& data_root, std::vector<std::string> flags = {},
                const std::string& stderr_path = "");
  ~ServerProcess();  // SIGKILL if still running
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  bool serving() const { return port_ > 0; }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  xtrain::v1::TrainingService::Stub& stub() { return *stub_; }
  // Sends `signal` and waits for the process to end; returns its wait status.
  int Stop(int signal, std::chrono::seconds timeout = std::chrono::seconds(60));

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::unique_ptr<xtrain::v1::TrainingService::Stub> stub_;
};

// A tiny job: small_cnn (width 4) on 256 synthetic 16x16 images of 4 classes, batch 32, SGD.
xtrain::v1::JobSpec TinyJob(int64_t max_steps, int64_t epochs = 1);

// Every response of a job's stream from `from_sequence` until the server ends it (`coalesced` as sent, for
// FollowsWatchContract); `status` gets how it ended.
std::vector<xtrain::v1::WatchJobResponse> WatchToEnd(xtrain::v1::TrainingService::Stub& stub,
                                                     const std::string& job_id, int64_t from_sequence,
                                                     grpc::Status* status,
                                                     std::chrono::seconds timeout = std::chrono::seconds(300));

// Polls GetJob until the job is in a terminal state (or the timeout passes); returns the last read.
xtrain::v1::Job WaitForEnd(xtrain::v1::TrainingService::Stub& stub, const std::string& job_id,
                           std::chrono::seconds timeout = std::chrono::seconds(300));
// Polls until `predicate(job)` holds; the last job read.
xtrain::v1::Job WaitFor(xtrain::v1::TrainingService::Stub& stub, const std::string& job_id,
                        const std::function<bool(const xtrain::v1::Job&)>& predicate,
                        std::chrono::seconds timeout = std::chrono::seconds(300));

// Submits `spec` under `request_id` (300 s deadline, planning included): how the call ended, the answer
// in `response` when given.
grpc::Status TrySubmit(xtrain::v1::TrainingService::Stub& stub, const xtrain::v1::JobSpec& spec,
                       xtrain::v1::SubmitJobResponse* response = nullptr, const std::string& request_id = "");
// A tokens file at `path` (server/api/auth.h's format): one {token, tenant, role} a line, the token
// stored as its SHA-256.
void WriteTokensFile(const std::string& path, const std::vector<std::array<std::string, 3>>& lines);

// One call each on `stub` (no deadline but Submit's); Submit expects success (TrySubmit).
xtrain::v1::SubmitJobResponse Submit(xtrain::v1::TrainingService::Stub& stub, const xtrain::v1::JobSpec& spec,
                                     const std::string& request_id = "");
grpc::Status Plan(xtrain::v1::TrainingService::Stub& stub, const xtrain::v1::JobSpec& spec,
                  xtrain::v1::PlanJobResponse* response);
grpc::Status Cancel(xtrain::v1::TrainingService::Stub& stub, const std::string& id,
                    xtrain::v1::CancelJobResponse* response);
// An artifact's bytes from `offset` (checking each chunk's offset); `status` gets how the stream ended.
std::string Download(xtrain::v1::TrainingService::Stub& stub, const std::string& artifact, int64_t offset,
                     grpc::Status* status, xtrain::v1::ArtifactInfo* info = nullptr);
// Uploads `content` as weights.pt with the header's `sha` and `declared_size`, in 4 KiB chunks.
grpc::Status Upload(xtrain::v1::TrainingService::Stub& stub, const std::string& content, const std::string& sha,
                    int64_t declared_size, xtrain::v1::UploadArtifactResponse* response);

// A stub on 127.0.0.1:port whose every call carries `authorization: <value>` (none when empty).
std::unique_ptr<xtrain::v1::TrainingService::Stub> StubWith(int port, const std::string& value);

// Process ids of the xtrain-worker children of `parent_pid` (default: this process, whose in-process
// server's workers they are).
std::vector<pid_t> WorkerChildren(pid_t parent_pid = 0);

}  // namespace xtrain::server::testing
