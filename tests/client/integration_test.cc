// The clients against the real xtrain-server: started as a child process on port 0 (--port-file), with
// a fresh data dir and data root in a temporary folder, driven through xtrainctl (a subprocess) and the
// C++ Client. Tiny synthetic jobs, so each test runs in seconds.
#include <sys/prctl.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "client/client.h"
#include "server/common/mutex.h"
#include "tests/server/watch_contract.h"

namespace xtrain::client {
namespace {
namespace v1 = ::xtrain::v1;
namespace fs = std::filesystem;
using ::xtrain::server::testing::FollowsWatchContract;

// A temporary folder, removed with its content when the test ends, passed or failed.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "xtrain-client-it-XXXXXX").string();
    if (::mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) fs::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// xtrain-server as a child process with its store under `dir`.
class ServerProcess {
 public:
  // `port` 0: a free port, read back from --port-file. `flags` go after the defaults.
  ServerProcess(const std::string& dir, int port = 0, const std::vector<std::string>& flags = {}) {
    const std::string port_file = dir + "/port";
    std::error_code ignored;
    fs::remove(port_file, ignored);
    fs::create_directories(dir + "/data", ignored);
    std::vector<std::string> args = {XTRAIN_SERVER_PATH, "--listen", absl::StrCat("127.0.0.1:", port),
                                     "--port-file", port_file, "--data-dir", dir + "/store", "--data-root",
                                     dir + "/data", "--worker", XTRAIN_WORKER_PATH, "--threads-per-job", "1",
                                     "--log-level", "warn", "--metrics-port", "0"};
    args.insert(args.end(), flags.begin(), flags.end());
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // a crashed test leaves no server behind (ctest waits on its pipes)
      std::vector<char*> argv;
      for (std::string& arg : args) argv.push_back(arg.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (absl::Now() < deadline) {
      if (absl::SimpleAtoi(absl::StripAsciiWhitespace(ReadFile(port_file)), &port_) && port_ > 0) return;
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        ADD_FAILURE() << "xtrain-server exited at start with status " << status;
        return;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    ADD_FAILURE() << "xtrain-server wrote no port within 60 s";
  }
  ~ServerProcess() { Stop(SIGKILL); }

  int port() const { return port_; }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  void Stop(int signal) {
    if (pid_ <= 0) return;
    ::kill(pid_, signal);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
};

struct CtlResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs the build's xtrainctl with `args` and waits for it.
CtlResult Ctl(const std::string& dir, std::vector<std::string> args) {
  args.insert(args.begin(), XTRAINCTL_PATH);
  const std::string out_path = dir + "/ctl.out", err_path = dir + "/ctl.err";
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    const int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(out, STDOUT_FILENO);
    ::dup2(err, STDERR_FILENO);
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  CtlResult result;
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.out = ReadFile(out_path);
  result.err = ReadFile(err_path);
  return result;
}

std::string Tiny() { return std::string(XTRAIN_SOURCE_DIR) + "/examples/jobs/tiny-synthetic.yaml"; }

// small_cnn (width 4) on 256 generated 16x16 images of 4 classes, batch 32.
v1::JobSpec TinySpec(int64_t max_steps) {
  v1::JobSpec spec;
  spec.set_display_name("client-it");
  spec.mutable_model()->set_name("small_cnn");
  spec.mutable_model()->set_width(4);
  v1::DatasetSpec& data = *spec.mutable_dataset();
  data.set_kind(v1::DatasetSpec::SYNTHETIC);
  data.set_synthetic_examples(256);
  data.set_synthetic_size(16);
  data.set_synthetic_classes(4);
  spec.mutable_training()->set_batch_size(32);
  spec.mutable_training()->set_epochs(1000);
  spec.mutable_training()->set_max_steps(max_steps);
  spec.mutable_training()->set_seed(7);
  spec.mutable_training()->set_fidelity_interval(-1);
  return spec;
}

std::unique_ptr<Client> ClientOf(const ServerProcess& server) {
  ClientOptions options;
  options.backoff_max = absl::Milliseconds(500);
  options.reconnect_timeout = absl::Seconds(90);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(server.address(), options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

std::vector<v1::JobEvent> WatchAll(Client& client, const std::string& job_id, absl::Status* status) {
  std::vector<v1::JobEvent> events;
  *status = client.Watch(job_id, 0, [&](const v1::WatchJobResponse& response) {
    events.push_back(response.event());
    return true;
  });
  return events;
}

// A CA; a server certificate for 127.0.0.1 and localhost and a client certificate, both signed by it;
// an unrelated CA; and a tokens file with the token "it-token" for tenant it: made under `dir` with the
// openssl command (EC P-256 keys, valid 2 days).
struct Credentials {
  std::string ca, server_cert, server_key, client_cert, client_key, other_ca, tokens;
};
Credentials MakeCredentials(const std::string& dir) {
  const std::string script = dir + "/make-credentials.sh";
  {
    std::ofstream out(script);
    out << "set -e\ncd '" << dir << "'\n"
        << "key='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'\n"
        << "openssl req -x509 $key -keyout ca.key -out ca.pem -days 2 -subj /CN=xtrain-test-ca\n"
        << "openssl req -x509 $key -keyout other.key -out other.pem -days 2 -subj /CN=other-ca\n"
        << "openssl req $key -keyout server.key -out server.csr -subj /CN=localhost\n"
        << "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > server.ext\n"
        << "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 "
           "-extfile server.ext\n"
        << "openssl req $key -keyout client.key -out client.csr -subj /CN=xtrain-test-client\n"
        << "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2\n"
        << "printf '%s it user\\n' \"$(printf %s it-token | openssl dgst -sha256 -r | cut -d' ' -f1)\" > tokens.txt\n";
  }
  EXPECT_EQ(std::system(absl::StrCat("sh '", script, "' > '", dir, "/make-credentials.log' 2>&1").c_str()), 0)
      << ReadFile(dir + "/make-credentials.log");
  return Credentials{dir + "/ca.pem",     dir + "/server.pem", dir + "/server.key", dir + "/client.pem",
                     dir + "/client.key", dir + "/other.pem",  dir + "/tokens.txt"};
}

// How xtrainctl reaches the server in the end-to-end test: plaintext, or TLS with a bearer token, or
// TLS with a client certificate (mutual TLS) and a token.
enum class Transport { kPlaintext, kTlsWithToken, kMutualTlsWithToken };

class XtrainctlOver : public ::testing::TestWithParam<Transport> {};

INSTANTIATE_TEST_SUITE_P(Transports, XtrainctlOver,
                         ::testing::Values(Transport::kPlaintext, Transport::kTlsWithToken, Transport::kMutualTlsWithToken),
                         [](const ::testing::TestParamInfo<Transport>& info) {
                           switch (info.param) {
                             case Transport::kPlaintext: return std::string("Plaintext");
                             case Transport::kTlsWithToken: return std::string("TlsWithToken");
                             case Transport::kMutualTlsWithToken: return std::string("MutualTlsWithToken");
                           }
                           return std::string("Unknown");
                         });

TEST_P(XtrainctlOver, PlanSubmitWatchGetListDownloadAgainstTheServer) {
  TempDir dir;
  std::vector<std::string> server_flags, client_flags;
  if (GetParam() != Transport::kPlaintext) {
    const Credentials c = MakeCredentials(dir.path());
    server_flags = {"--tls-cert", c.server_cert, "--tls-key", c.server_key, "--tokens", c.tokens};
    client_flags = {"--tls-ca", c.ca, "--token", "it-token"};
    if (GetParam() == Transport::kMutualTlsWithToken) {
      server_flags.insert(server_flags.end(), {"--tls-client-ca", c.ca});
      client_flags.insert(client_flags.end(), {"--tls-cert", c.client_cert, "--tls-key", c.client_key});
    }
  }
  ServerProcess server(dir.path(), 0, server_flags);
  ASSERT_GT(server.port(), 0);
  const std::string at = server.address();
  // Every xtrainctl call below goes through the transport under test.
  auto Ctl = [&client_flags](const std::string& in, std::vector<std::string> args) {
    args.insert(args.end(), client_flags.begin(), client_flags.end());
    return ::xtrain::client::Ctl(in, std::move(args));
  };

  CtlResult plan = Ctl(dir.path(), {"plan", Tiny(), "--server", at});
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  EXPECT_TRUE(absl::StrContains(plan.out, "Plan for batch 32")) << plan.out;
  EXPECT_TRUE(absl::StrContains(plan.out, "features.0")) << plan.out;  // the per-layer table

  CtlResult submit = Ctl(dir.path(), {"submit", Tiny(), "--max-steps", "4", "--label", "run=it", "--watch",
                                      "--server", at});
  ASSERT_EQ(submit.exit_code, 0) << submit.out << submit.err;
  const std::string job_id = submit.out.substr(0, submit.out.find(' '));
  EXPECT_TRUE(absl::StartsWith(job_id, "job-")) << submit.out;
  EXPECT_TRUE(absl::StrContains(submit.out, "RUNNING -> SUCCEEDED")) << submit.out;  // one line per event
  EXPECT_TRUE(absl::StrContains(submit.out, absl::StrCat(job_id, " SUCCEEDED after 4 steps"))) << submit.out;

  CtlResult get = Ctl(dir.path(), {"get", job_id, "-o", "json", "--server", at});
  ASSERT_EQ(get.exit_code, 0) << get.err;
  v1::Job job;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(get.out, &job).ok()) << get.out;
  EXPECT_EQ(job.state(), v1::SUCCEEDED);
  EXPECT_EQ(job.progress().step(), 4);
  EXPECT_EQ(job.spec().labels().at("run"), "it");
  EXPECT_GT(job.progress().measured_peak_bytes(), 0);

  CtlResult human = Ctl(dir.path(), {"get", job_id, "--server", at});
  ASSERT_EQ(human.exit_code, 0) << human.err;
  EXPECT_TRUE(absl::StrContains(human.out, "SUCCEEDED")) << human.out;

  CtlResult list = Ctl(dir.path(), {"list", "--label", "run=it", "--state", "succeeded", "--server", at});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_TRUE(absl::StrContains(list.out, job_id)) << list.out;

  CtlResult watch = Ctl(dir.path(), {"watch", job_id, "-o", "json", "--server", at});
  ASSERT_EQ(watch.exit_code, 0) << watch.err;
  const std::vector<std::string> lines = absl::StrSplit(watch.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(static_cast<int64_t>(lines.size()), job.last_sequence()) << watch.out;
  std::vector<v1::WatchJobResponse> responses(lines.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(lines[i], &responses[i]).ok()) << lines[i];
  }
  EXPECT_TRUE(FollowsWatchContract(responses, 0, job.last_sequence()));  // an ended job's log: all backlog

  const std::string weights = dir.path() + "/weights.pt";
  CtlResult download = Ctl(dir.path(), {"download", "--job", job_id, "--to", weights, "--server", at});
  ASSERT_EQ(download.exit_code, 0) << download.err;
  EXPECT_GT(fs::file_size(weights), 0u);
  EXPECT_FALSE(fs::exists(weights + ".part"));
}

// A server with TLS that requires client certificates refuses every client that cannot complete the
// handshake; a client refuses TLS files that cannot work before any call.
TEST(Tls, RefusesPlaintextUntrustedAndCertificatelessClients) {
  TempDir dir;
  const Credentials c = MakeCredentials(dir.path());
  ServerProcess server(dir.path(), 0,
                       {"--tls-cert", c.server_cert, "--tls-key", c.server_key, "--tls-client-ca", c.ca});
  ASSERT_GT(server.port(), 0);
  auto list = [&](ClientOptions options) -> absl::Status {
    options.unary_attempts = 1;
    options.timeout = absl::Seconds(20);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(server.address(), options);
    if (!client.ok()) return client.status();
    return (*client)->ListJobs(v1::ListJobsRequest()).status();
  };
  const ClientOptions plaintext;
  EXPECT_EQ(list(plaintext).code(), absl::StatusCode::kUnavailable);
  ClientOptions untrusted;  // a certificate the server accepts, but the server's is not trusted
  untrusted.tls_ca_file = c.other_ca;
  untrusted.tls_cert_file = c.client_cert;
  untrusted.tls_key_file = c.client_key;
  EXPECT_EQ(list(untrusted).code(), absl::StatusCode::kUnavailable);
  ClientOptions without_certificate;
  without_certificate.tls_ca_file = c.ca;
  EXPECT_EQ(list(without_certificate).code(), absl::StatusCode::kUnavailable);
  ClientOptions good = without_certificate;
  good.tls_cert_file = c.client_cert;
  good.tls_key_file = c.client_key;
  const absl::Status ok = list(good);
  EXPECT_TRUE(ok.ok()) << ok;

  ClientOptions missing;
  missing.tls_ca_file = dir.path() + "/no-such.pem";
  const absl::Status not_found = list(missing);
  EXPECT_EQ(not_found.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(not_found.message(), "--tls-ca")) << not_found;
  ClientOptions half = without_certificate;
  half.tls_cert_file = c.client_cert;  // no key
  EXPECT_EQ(list(half).code(), absl::StatusCode::kInvalidArgument);
  ClientOptions not_pem;
  not_pem.tls_ca_file = c.tokens;
  EXPECT_EQ(list(not_pem).code(), absl::StatusCode::kInvalidArgument);

  // xtrainctl speaking plaintext to it: exit code 6, unavailable.
  const CtlResult ctl = Ctl(dir.path(), {"list", "--server", server.address()});
  EXPECT_EQ(ctl.exit_code, 6) << ctl.err;
}

TEST(Xtrainctl, ExitCodesFromTheServer) {
  TempDir dir;
  ServerProcess server(dir.path());
  ASSERT_GT(server.port(), 0);
  const std::string at = server.address();

  CtlResult missing = Ctl(dir.path(), {"get", "job-0000000000000000", "--server", at});
  EXPECT_EQ(missing.exit_code, 3) << missing.err;

  CtlResult refused = Ctl(dir.path(), {"plan", Tiny(), "--budget", "4KiB", "--server", at});
  EXPECT_EQ(refused.exit_code, 5) << refused.out << refused.err;
  EXPECT_TRUE(absl::StrContains(refused.err, "budget")) << refused.err;

  CtlResult invalid = Ctl(dir.path(), {"submit", Tiny(), "--set", "training.momentum=1.5", "--server", at});
  EXPECT_EQ(invalid.exit_code, 4) << invalid.err;
  EXPECT_TRUE(absl::StrContains(invalid.err, "training.momentum")) << invalid.err;

  CtlResult usage = Ctl(dir.path(), {"submit", Tiny(), "--budget", "lots", "--server", at});
  EXPECT_EQ(usage.exit_code, 2) << usage.err;

  // A job that runs long enough to be cancelled while it trains.
  std::unique_ptr<Client> client = ClientOf(server);
  absl::StatusOr<v1::SubmitJobResponse> submitted = client->SubmitJob(TinySpec(100000), "cancel-me");
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  const std::string job_id = submitted->job().id();
  absl::Status status = client->Watch(job_id, 0, [](const v1::WatchJobResponse& response) {
    return !response.event().has_step();  // until it trains
  });
  ASSERT_TRUE(status.ok()) << status;
  CtlResult cancel = Ctl(dir.path(), {"cancel", job_id, "--server", at});
  EXPECT_EQ(cancel.exit_code, 0) << cancel.err;
  CtlResult watch = Ctl(dir.path(), {"watch", job_id, "--server", at});
  EXPECT_EQ(watch.exit_code, 1) << watch.out << watch.err;  // the job was cancelled
  EXPECT_TRUE(absl::StrContains(watch.out, absl::StrCat(job_id, " CANCELLED"))) << watch.out;
  CtlResult again = Ctl(dir.path(), {"cancel", job_id, "--server", at});
  EXPECT_EQ(again.exit_code, 7) << again.err;  // FAILED_PRECONDITION: it has ended

  server.Stop(SIGKILL);
  CtlResult down = Ctl(dir.path(), {"get", job_id, "--server", at, "--timeout", "10"});
  EXPECT_EQ(down.exit_code, 6) << down.err;
}

TEST(Client, SubmitIsIdempotentAndPlanIsCached) {
  TempDir dir;
  ServerProcess server(dir.path());
  ASSERT_GT(server.port(), 0);
  std::unique_ptr<Client> client = ClientOf(server);

  absl::StatusOr<v1::PlanJobResponse> first = client->PlanJob(TinySpec(2));
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<v1::PlanJobResponse> second = client->PlanJob(TinySpec(2));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->cached());
  EXPECT_EQ(second->plan().predicted_peak_bytes(), first->plan().predicted_peak_bytes());

  absl::StatusOr<v1::SubmitJobResponse> a = client->SubmitJob(TinySpec(2), "same-request");
  absl::StatusOr<v1::SubmitJobResponse> b = client->SubmitJob(TinySpec(2), "same-request");
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  EXPECT_EQ(a->job().id(), b->job().id());
  EXPECT_FALSE(a->existing());
  EXPECT_TRUE(b->existing());
  absl::Status status;
  const std::vector<v1::JobEvent> events = WatchAll(*client, a->job().id(), &status);
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().state().to_state(), v1::SUCCEEDED);
}

TEST(Client, WatchIsUnbrokenAcrossAServerKilledAndRestarted) {
  TempDir dir;
  auto server = std::make_unique<ServerProcess>(dir.path());
  ASSERT_GT(server->port(), 0);
  const int port = server->port();
  std::unique_ptr<Client> client = ClientOf(*server);

  v1::JobSpec spec = TinySpec(40);
  spec.mutable_checkpoint()->set_every_steps(5);
  absl::StatusOr<v1::SubmitJobResponse> submitted = client->SubmitJob(spec, "survives-a-restart");
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  const std::string job_id = submitted->job().id();

  absl::Mutex mutex;
  std::vector<v1::WatchJobResponse> responses;
  ::xtrain::server::Notification training;
  absl::Status status;
  std::thread watcher([&] {
    status = client->Watch(job_id, 0, [&](const v1::WatchJobResponse& response) {
      ::xtrain::server::MutexLock lock(&mutex);
      responses.push_back(response);
      if (response.event().has_step() && response.event().step().step() >= 8 && !training.HasBeenNotified()) {
        training.Notify();
      }
      return true;
    });
  });
  ASSERT_TRUE(training.WaitForNotificationWithTimeout(absl::Seconds(120)));
  server->Stop(SIGKILL);
  absl::SleepFor(absl::Milliseconds(500));
  server = std::make_unique<ServerProcess>(dir.path(), port);  // the same store, the same address
  ASSERT_EQ(server->port(), port);
  watcher.join();
  ASSERT_TRUE(status.ok()) << status;

  ::xtrain::server::MutexLock lock(&mutex);
  ASSERT_FALSE(responses.empty());
  // Watched live: steps it fell behind on may be coalesced, and counted; no repeat, no unreported gap,
  // across the restart too. (Where the client reconnected is its own affair, so the restarted server's
  // backlog being replayed whole is Service.ServerKilledMidJobResumesWithAnUnbrokenLog's to check.)
  EXPECT_TRUE(FollowsWatchContract(responses, 0, submitted->job().last_sequence()));
  const v1::JobEvent& last = responses.back().event();
  EXPECT_EQ(last.state().to_state(), v1::SUCCEEDED) << last.DebugString();
  absl::StatusOr<v1::Job> job = client->GetJob(job_id);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), v1::SUCCEEDED);
  EXPECT_EQ(job->last_sequence(), last.sequence());
}

TEST(Client, UploadFinetuneFromItDownload) {
  TempDir dir;
  ServerProcess server(dir.path());
  ASSERT_GT(server.port(), 0);
  std::unique_ptr<Client> client = ClientOf(server);

  // Weights to start from: a short job's.
  absl::StatusOr<v1::SubmitJobResponse> base = client->SubmitJob(TinySpec(2), "base");
  ASSERT_TRUE(base.ok()) << base.status();
  absl::Status status;
  WatchAll(*client, base->job().id(), &status);
  ASSERT_TRUE(status.ok()) << status;
  absl::StatusOr<v1::Job> trained = client->GetJob(base->job().id());
  ASSERT_TRUE(trained.ok() && trained->state() == v1::SUCCEEDED) << trained.status();
  const std::string base_weights = dir.path() + "/base.pt";
  absl::StatusOr<v1::ArtifactInfo> downloaded = client->Download(trained->weights_artifact_id(), base_weights);
  ASSERT_TRUE(downloaded.ok()) << downloaded.status();
  EXPECT_EQ(static_cast<int64_t>(fs::file_size(base_weights)), downloaded->size_bytes());

  absl::StatusOr<v1::ArtifactInfo> uploaded = client->Upload(base_weights, "base weights");
  ASSERT_TRUE(uploaded.ok()) << uploaded.status();
  EXPECT_EQ(uploaded->sha256(), downloaded->sha256());
  EXPECT_EQ(uploaded->kind(), "upload");

  v1::JobSpec finetune = TinySpec(2);
  finetune.mutable_model()->set_init_artifact_id(uploaded->id());
  finetune.mutable_model()->add_freeze("features.0");
  absl::StatusOr<v1::SubmitJobResponse> tuned = client->SubmitJob(finetune, "finetune");
  ASSERT_TRUE(tuned.ok()) << tuned.status();
  const std::vector<v1::JobEvent> events = WatchAll(*client, tuned->job().id(), &status);
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().state().to_state(), v1::SUCCEEDED) << events.back().DebugString();
  absl::StatusOr<v1::Job> job = client->GetJob(tuned->job().id());
  ASSERT_TRUE(job.ok()) << job.status();
  const std::string tuned_weights = dir.path() + "/tuned.pt";
  ASSERT_TRUE(client->Download(job->weights_artifact_id(), tuned_weights).ok());
  EXPECT_GT(fs::file_size(tuned_weights), 0u);
}

}  // namespace
}  // namespace xtrain::client
