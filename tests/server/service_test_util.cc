#include "tests/server/service_test_util.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include <grpcpp/support/client_interceptor.h>
#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "server/common/util.h"

namespace xtrain::server::testing {
namespace v1 = ::xtrain::v1;
namespace fs = std::filesystem;

TempDir::TempDir() {
  std::string pattern = (fs::temp_directory_path() / "xtrain-test-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code error;
  fs::remove_all(path_, error);
}

std::string WorkerPath() {
  if (const char* env = std::getenv("XTRAIN_TEST_WORKER"); env != nullptr && *env) return env;
  return XTRAIN_WORKER_PATH;
}

std::string ServerPath() {
  if (const char* env = std::getenv("XTRAIN_TEST_SERVER"); env != nullptr && *env) return env;
  return XTRAIN_SERVER_PATH;
}

namespace {

// Adds `authorization: Bearer <token>` to every call of the channel it is built into.
class BearerInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit BearerInterceptor(std::string value) : value_(std::move(value)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", value_});
    }
    methods->Proceed();
  }

 private:
  std::string value_;
};
class BearerFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerFactory(std::string value) : value_(std::move(value)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(grpc::experimental::ClientRpcInfo*) override {
    return new BearerInterceptor(value_);
  }

 private:
  std::string value_;
};

}  // namespace

bool OverTls() {
  const char* env = std::getenv("XTRAIN_TEST_TLS");
  return env != nullptr && std::string(env) == "1";
}

const SuiteTls& Tls() {
  // Made on first use, removed when the process exits.
  static const struct Made {
    TempDir dir;
    SuiteTls tls;
    Made() {
      const std::string d = dir.path();
      const std::string script = absl::StrCat(
          "set -e\ncd '", d, "'\n",
          "key='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'\n",
          "openssl req -x509 $key -keyout ca.key -out ca.pem -days 2 -subj /CN=xtrain-suite-ca\n",
          "openssl req $key -keyout server.key -out server.csr -subj /CN=localhost\n",
          "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > server.ext\n",
          "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 ",
          "-extfile server.ext\n");
      {
        std::ofstream out(d + "/make.sh");
        out << script;
      }
      const int rc = std::system(absl::StrCat("sh '", d, "/make.sh' > '", d, "/make.log' 2>&1").c_str());
      if (rc != 0) {
        std::ifstream log(d + "/make.log");
        ADD_FAILURE() << "openssl could not make the suite's certificates: " << log.rdbuf();
      }
      tls = SuiteTls{d + "/ca.pem", d + "/server.pem", d + "/server.key", d + "/tokens.txt"};
      // The one token is the default tenant's, as a user: the suites' jobs are that tenant's either way.
      WriteTokensFile(tls.tokens, {{{std::string(SuiteTls::kToken), "local", "user"}}});
    }
  } made;
  return made.tls;
}

std::shared_ptr<grpc::Channel> ChannelWith(int port, const std::string& authorization, grpc::ChannelArguments args) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (OverTls()) {
    grpc::SslCredentialsOptions ssl;
    std::ifstream in(Tls().ca);
    ssl.pem_root_certs.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    credentials = grpc::SslCredentials(ssl);
  }
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> factories;
  if (!authorization.empty()) factories.push_back(std::make_unique<BearerFactory>(authorization));
  return grpc::experimental::CreateCustomChannelWithInterceptors(absl::StrCat("127.0.0.1:", port), credentials,
                                                                 args, std::move(factories));
}

std::shared_ptr<grpc::Channel> ChannelFor(int port) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  return ChannelWith(port, OverTls() ? absl::StrCat("Bearer ", SuiteTls::kToken) : "", args);
}

std::string CheckpointFaultPreloadPath() { return XTRAIN_CHECKPOINT_FAULT_PRELOAD; }

ScopedEnv::ScopedEnv(const std::string& name, const std::string& value) : name_(name) {
  if (const char* old = std::getenv(name.c_str()); old != nullptr) old_ = old;
  ::setenv(name.c_str(), value.c_str(), 1);
}

ScopedEnv::~ScopedEnv() {
  if (old_) {
    ::setenv(name_.c_str(), old_->c_str(), 1);
  } else {
    ::unsetenv(name_.c_str());
  }
}

int CheckKeptCheckpoints(const std::string& data_dir) {
  std::string command = absl::StrCat(WorkerPath(), " --check-checkpoints");
  int listed = 0;
  std::error_code error;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(data_dir, error)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("checkpoint-", 0) == 0 && entry.path().extension() == ".pt") {
      absl::StrAppend(&command, " '", entry.path().string(), "'");
      ++listed;
    }
  }
  if (listed == 0) return 0;
  FILE* pipe = ::popen(absl::StrCat(command, " 2>&1").c_str(), "r");
  if (pipe == nullptr) {
    ADD_FAILURE() << "cannot run " << command;
    return 0;
  }
  int loaded = 0;
  char line[4096];
  while (std::fgets(line, sizeof(line), pipe) != nullptr) {
    const std::string text(line);
    if (text.find(": OK step ") != std::string::npos) {
      ++loaded;
    } else if (text.find("NOT_FOUND") == std::string::npos) {
      ADD_FAILURE() << "a kept checkpoint does not load: " << text;
    }
  }
  ::pclose(pipe);
  return loaded;
}


std::unique_ptr<v1::TrainingService::Stub> StubFor(int port) {
  return v1::TrainingService::NewStub(ChannelFor(port));
}

std::unique_ptr<TestServer> TestServer::Start(ServerOptions options) {
  auto test = std::make_unique<TestServer>();
  test->data_root = absl::StrCat(test->dir.path(), "/data");
  fs::create_directories(test->data_root);
  options.listen = "127.0.0.1:0";
  if (options.metrics_port == ServerOptions().metrics_port) options.metrics_port = 0;  // tests run side by side
  if (options.data_dir == "xtrain-data") options.data_dir = absl::StrCat(test->dir.path(), "/server");
  options.data_roots = {test->data_root};
  if (options.worker_path.empty()) options.worker_path = WorkerPath();
  if (options.threads_per_job == 0) options.threads_per_job = 1;
  if (OverTls() && options.tls_cert_file.empty()) {
    options.tls_cert_file = Tls().cert;
    options.tls_key_file = Tls().key;
  }
  if (OverTls() && options.tokens_file.empty()) options.tokens_file = Tls().tokens;
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(options);
  if (!server.ok()) {
    ADD_FAILURE() << "the server did not start: " << server.status();
    return nullptr;
  }
  test->server = *std::move(server);
  test->stub = StubFor(test->server->port());
  return test;
}

ServerProcess::ServerProcess(const std::string& data_dir, const std::string& data_root, std::vector<std::string> flags,
                             const std::string& stderr_path) {
  // <data_dir>.port unless the flags name one (replicas sharing a data dir).
  std::string port_file = absl::StrCat(data_dir, ".port");
  for (size_t i = 0; i + 1 < flags.size(); ++i) {
    if (flags[i] == "--port-file") port_file = flags[i + 1];
  }
  std::error_code error;
  fs::remove(port_file, error);
  std::vector<std::string> args = {ServerPath(), "--listen", "127.0.0.1:0", "--data-dir", data_dir,
                                   "--data-root", data_root, "--worker", WorkerPath(), "--port-file", port_file,
                                   "--threads-per-job", "1", "--log-level", "warn", "--metrics-port", "0"};
  args.insert(args.end(), flags.begin(), flags.end());
  const auto has = [&](const char* flag) { return std::find(flags.begin(), flags.end(), flag) != flags.end(); };
  if (OverTls() && !has("--tls-cert")) args.insert(args.end(), {"--tls-cert", Tls().cert, "--tls-key", Tls().key});
  if (OverTls() && !has("--tokens")) args.insert(args.end(), {"--tokens", Tls().tokens});
  pid_ = fork();
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // a crashed test leaves no server behind (ctest waits on its pipes)
    if (!stderr_path.empty()) {
      const int fd = open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0 || dup2(fd, STDERR_FILENO) < 0) _exit(126);
    }
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(port_file);
    std::string text;
    if (in && std::getline(in, text) && absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &port_) && port_ > 0) break;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      ADD_FAILURE() << "xtrain-server exited at start (status " << status << ")";
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (port_ <= 0) {
    ADD_FAILURE() << "xtrain-server did not write its port within 60 s";
    return;
  }
  stub_ = StubFor(port_);
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) Stop(SIGKILL);
}

int ServerProcess::Stop(int signal, std::chrono::seconds timeout) {
  if (pid_ <= 0) return -1;
  kill(pid_, signal);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  while (waitpid(pid_, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ADD_FAILURE() << "xtrain-server did not end within " << timeout.count() << " s of signal " << signal;
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  pid_ = -1;
  return status;
}

v1::JobSpec TinyJob(int64_t max_steps, int64_t epochs) {
  v1::JobSpec spec;
  spec.set_display_name("tiny");
  spec.mutable_model()->set_name("small_cnn");
  spec.mutable_model()->set_width(4);
  v1::DatasetSpec& data = *spec.mutable_dataset();
  data.set_kind(v1::DatasetSpec::SYNTHETIC);
  data.set_synthetic_examples(256);
  data.set_synthetic_size(16);
  data.set_synthetic_classes(4);
  v1::TrainingSpec& training = *spec.mutable_training();
  training.set_batch_size(32);
  training.set_epochs(epochs);
  training.set_max_steps(max_steps);
  training.set_optimizer("sgd_momentum");
  training.set_lr(0.05);
  training.set_seed(7);
  training.set_fidelity_interval(-1);
  return spec;
}

std::vector<v1::WatchJobResponse> WatchToEnd(v1::TrainingService::Stub& stub, const std::string& job_id,
                                             int64_t from_sequence, grpc::Status* status, std::chrono::seconds timeout) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  v1::WatchJobRequest request;
  request.set_job_id(job_id);
  request.set_from_sequence(from_sequence);
  std::unique_ptr<grpc::ClientReader<v1::WatchJobResponse>> reader = stub.WatchJob(&context, request);
  std::vector<v1::WatchJobResponse> responses;
  v1::WatchJobResponse response;
  while (reader->Read(&response)) responses.push_back(response);
  *status = reader->Finish();
  return responses;
}

namespace {
bool Ended(const v1::Job& job) {
  return job.state() == v1::SUCCEEDED || job.state() == v1::FAILED || job.state() == v1::CANCELLED;
}
}  // namespace

v1::Job WaitFor(v1::TrainingService::Stub& stub, const std::string& job_id,
                const std::function<bool(const v1::Job&)>& predicate, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  v1::Job job;
  while (std::chrono::steady_clock::now() < deadline) {
    grpc::ClientContext context;
    v1::GetJobRequest request;
    request.set_job_id(job_id);
    v1::GetJobResponse response;
    if (stub.GetJob(&context, request, &response).ok()) {
      job = response.job();
      if (predicate(job)) return job;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ADD_FAILURE() << "job " << job_id << " did not reach the expected state within " << timeout.count()
                << " s; last: " << job.ShortDebugString();
  return job;
}

v1::Job WaitForEnd(v1::TrainingService::Stub& stub, const std::string& job_id, std::chrono::seconds timeout) {
  return WaitFor(stub, job_id, Ended, timeout);
}

std::vector<pid_t> WorkerChildren(pid_t parent_pid) {
  std::vector<pid_t> pids;
  const pid_t self = parent_pid > 0 ? parent_pid : getpid();
  for (const auto& entry : fs::directory_iterator("/proc")) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &pid)) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    // pid (comm) state ppid ...
    const size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    const std::string comm = line.substr(line.find('(') + 1, close - line.find('(') - 1);
    std::istringstream rest(line.substr(close + 2));
    std::string state;
    pid_t parent = 0;
    rest >> state >> parent;
    if (parent == self && comm.rfind("xtrain-worker", 0) == 0 && state != "Z") pids.push_back(pid);
  }
  return pids;
}

grpc::Status TrySubmit(v1::TrainingService::Stub& stub, const v1::JobSpec& spec, v1::SubmitJobResponse* response,
                       const std::string& request_id) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));  // planning included
  v1::SubmitJobRequest request;
  *request.mutable_spec() = spec;
  request.set_client_request_id(request_id);
  v1::SubmitJobResponse ignored;
  return stub.SubmitJob(&context, request, response != nullptr ? response : &ignored);
}

v1::SubmitJobResponse Submit(v1::TrainingService::Stub& stub, const v1::JobSpec& spec, const std::string& request_id) {
  v1::SubmitJobResponse response;
  const grpc::Status status = TrySubmit(stub, spec, &response, request_id);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response;
}

void WriteTokensFile(const std::string& path, const std::vector<std::array<std::string, 3>>& lines) {
  std::ofstream out(path, std::ios::trunc);
  for (const auto& [token, tenant, role] : lines) out << Sha256Hex(token) << " " << tenant << " " << role << "\n";
}

grpc::Status Plan(v1::TrainingService::Stub& stub, const v1::JobSpec& spec, v1::PlanJobResponse* response) {
  grpc::ClientContext context;
  v1::PlanJobRequest request;
  *request.mutable_spec() = spec;
  return stub.PlanJob(&context, request, response);
}

grpc::Status Cancel(v1::TrainingService::Stub& stub, const std::string& id, v1::CancelJobResponse* response) {
  grpc::ClientContext context;
  v1::CancelJobRequest request;
  request.set_job_id(id);
  return stub.CancelJob(&context, request, response);
}

std::string Download(v1::TrainingService::Stub& stub, const std::string& artifact, int64_t offset, grpc::Status* status,
                     v1::ArtifactInfo* info) {
  grpc::ClientContext context;
  v1::DownloadArtifactRequest request;
  request.set_artifact_id(artifact);
  request.set_offset(offset);
  auto reader = stub.DownloadArtifact(&context, request);
  std::string bytes;
  v1::DownloadArtifactResponse response;
  while (reader->Read(&response)) {
    if (response.has_info() && info != nullptr) *info = response.info();
    EXPECT_EQ(response.offset(), offset + static_cast<int64_t>(bytes.size()));
    bytes += response.data();
  }
  *status = reader->Finish();
  return bytes;
}

grpc::Status Upload(v1::TrainingService::Stub& stub, const std::string& content, const std::string& sha,
                    int64_t declared_size, v1::UploadArtifactResponse* response) {
  grpc::ClientContext context;
  auto writer = stub.UploadArtifact(&context, response);
  v1::UploadArtifactRequest header;
  header.mutable_header()->set_name("weights.pt");
  header.mutable_header()->set_size_bytes(declared_size);
  header.mutable_header()->set_sha256(sha);
  writer->Write(header);
  for (size_t offset = 0; offset < content.size(); offset += 4096) {
    v1::UploadArtifactRequest chunk;
    chunk.set_data(content.substr(offset, 4096));
    if (!writer->Write(chunk)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}


// A stub whose calls carry `authorization: <value>` (no header when empty).
std::unique_ptr<v1::TrainingService::Stub> StubWith(int port, const std::string& value) {
  return v1::TrainingService::NewStub(ChannelWith(port, value, grpc::ChannelArguments()));
}

}  // namespace xtrain::server::testing
