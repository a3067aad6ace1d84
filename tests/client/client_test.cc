// The C++ client against a fake TrainingService (tests/client/fake_server.h): reconnecting watches,
// resumable downloads, checksummed uploads, retries, the token. The real server: integration tests.
#include "client/client.h"

#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"
#include "server/common/mutex.h"
#include "tests/client/fake_server.h"

namespace xtrain::client {
namespace {
namespace v1 = ::xtrain::v1;
using testing::FakeServer;
using testing::FakeState;
using testing::StateEvent;
using testing::StepEvent;

// Options that retry fast, so the tests take milliseconds, not seconds.
ClientOptions FastOptions() {
  ClientOptions options;
  options.backoff_initial = absl::Milliseconds(20);
  options.backoff_max = absl::Milliseconds(100);
  options.reconnect_timeout = absl::Seconds(10);
  options.timeout = absl::Seconds(10);
  options.plan_timeout = absl::Seconds(10);
  return options;
}

std::unique_ptr<Client> Connected(const FakeServer& server, ClientOptions options = FastOptions()) {
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(server.address(), options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

// A job with a log of `steps` steps that ends in `final`.
void AddJob(FakeState& state, const std::string& id, int steps, v1::JobState final, bool ended = true) {
  ::xtrain::server::MutexLock lock(&state.mutex);
  v1::Job job;
  job.set_id(id);
  job.set_state(final);
  state.jobs[id] = job;
  std::vector<v1::JobEvent>& log = state.logs[id];
  log.push_back(StateEvent(1, v1::JOB_STATE_UNSPECIFIED, v1::QUEUED));
  log.push_back(StateEvent(2, v1::QUEUED, v1::RUNNING));
  for (int step = 1; step <= steps; ++step) log.push_back(StepEvent(static_cast<int64_t>(log.size()) + 1, step, steps, 2.0 / step));
  if (ended) {
    log.push_back(StateEvent(static_cast<int64_t>(log.size()) + 1, v1::RUNNING, final));
    state.ended[id] = true;
  }
}

// A folder under TMPDIR, removed when the test ends however it ends.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "xtrain-client-test-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data()) != nullptr ? pattern : "";
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string RandomBytes(size_t size, uint32_t seed) {
  std::mt19937 random(seed);
  std::string bytes(size, '\0');
  for (char& c : bytes) c = static_cast<char>(random() & 0xff);
  return bytes;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

std::vector<int64_t> Collect(Client& client, const std::string& job_id, int64_t from, absl::Status* status) {
  std::vector<int64_t> sequences;
  *status = client.Watch(job_id, from, [&](const v1::WatchJobResponse& response) {
    sequences.push_back(response.event().sequence());
    return true;
  });
  return sequences;
}

std::vector<int64_t> Range(int64_t first, int64_t last) {
  std::vector<int64_t> values;
  for (int64_t v = first; v <= last; ++v) values.push_back(v);
  return values;
}

TEST(Client, WatchDeliversTheWholeLogAndEndsWithTheJob) {
  auto state = std::make_shared<FakeState>();
  AddJob(*state, "job-1", 5, v1::SUCCEEDED);
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  absl::Status status;
  EXPECT_EQ(Collect(*Connected(*server), "job-1", 0, &status), Range(1, 8));
  EXPECT_TRUE(status.ok()) << status;
}

TEST(Client, WatchReconnectsFromTheLastSequenceSeen) {
  auto state = std::make_shared<FakeState>();
  AddJob(*state, "job-1", 6, v1::SUCCEEDED);
  {
    ::xtrain::server::MutexLock lock(&state->mutex);
    state->watch_breaks[0] = 3;  // the first stream drops after 3 events, the second after 2 more
    state->watch_breaks[1] = 2;
  }
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  absl::Status status;
  EXPECT_EQ(Collect(*Connected(*server), "job-1", 0, &status), Range(1, 9));  // each once, in order
  EXPECT_TRUE(status.ok()) << status;
  ::xtrain::server::MutexLock lock(&state->mutex);
  ASSERT_EQ(state->watch_requests.size(), 3u);
  EXPECT_EQ(state->watch_requests[0].from_sequence(), 0);
  EXPECT_EQ(state->watch_requests[1].from_sequence(), 4);
  EXPECT_EQ(state->watch_requests[2].from_sequence(), 6);
}

TEST(Client, WatchResumesAcrossAServerRestart) {
  auto state = std::make_shared<FakeState>();
  AddJob(*state, "job-1", 3, v1::SUCCEEDED, /*ended=*/false);  // 5 events so far, more to come
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  std::unique_ptr<Client> client = Connected(*server);

  std::vector<int64_t> sequences;
  ::xtrain::server::Notification five_seen;
  absl::Status status;
  std::thread watcher([&] {
    status = client->Watch("job-1", 0, [&](const v1::WatchJobResponse& response) {
      sequences.push_back(response.event().sequence());
      if (sequences.size() == 5) five_seen.Notify();
      return true;
    });
  });
  ASSERT_TRUE(five_seen.WaitForNotificationWithTimeout(absl::Seconds(20)));
  server->Stop();  // open watches end with UNAVAILABLE; nothing listens for a while
  absl::SleepFor(absl::Milliseconds(300));
  {
    ::xtrain::server::MutexLock lock(&state->mutex);
    std::vector<v1::JobEvent>& log = state->logs["job-1"];
    log.push_back(StepEvent(6, 4, 4, 0.4));
    log.push_back(StateEvent(7, v1::RUNNING, v1::SUCCEEDED));
    state->ended["job-1"] = true;
  }
  server = FakeServer::Start(state, port);
  ASSERT_NE(server, nullptr);
  watcher.join();
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(sequences, Range(1, 7));
  ::xtrain::server::MutexLock lock(&state->mutex);
  EXPECT_EQ(state->watch_requests.back().from_sequence(), 6);
}

TEST(Client, WatchGivesUpAfterTheReconnectTimeout) {
  auto state = std::make_shared<FakeState>();
  AddJob(*state, "job-1", 2, v1::SUCCEEDED, /*ended=*/false);
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  ClientOptions options = FastOptions();
  options.reconnect_timeout = absl::Milliseconds(500);
  std::unique_ptr<Client> client = Connected(*server, options);
  ::xtrain::server::Notification started;
  absl::Status status;
  std::thread watcher([&] {
    status = client->Watch("job-1", 0, [&](const v1::WatchJobResponse& response) {
      if (response.event().sequence() == 4) started.Notify();
      return true;
    });
  });
  ASSERT_TRUE(started.WaitForNotificationWithTimeout(absl::Seconds(20)));
  const absl::Time stopped = absl::Now();
  server->Stop();
  watcher.join();
  EXPECT_TRUE(absl::IsUnavailable(status)) << status;
  EXPECT_NE(status.message().find("watch again from sequence 5"), std::string::npos) << status;
  EXPECT_GE(absl::Now() - stopped, absl::Milliseconds(500));
}

TEST(Client, WatchStopsWhenTheCallbackSaysSo) {
  auto state = std::make_shared<FakeState>();
  AddJob(*state, "job-1", 3, v1::SUCCEEDED, /*ended=*/false);  // the stream would stay open
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  int seen = 0;
  const absl::Status status = Connected(*server)->Watch("job-1", 2, [&](const v1::WatchJobResponse& response) {
    EXPECT_EQ(response.event().sequence(), 2 + seen);
    return ++seen < 2;
  });
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(seen, 2);
}

TEST(Client, WatchOfAnUnknownJobIsNotFound) {
  auto state = std::make_shared<FakeState>();
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  absl::Status status;
  EXPECT_TRUE(Collect(*Connected(*server), "job-missing", 0, &status).empty());
  EXPECT_TRUE(absl::IsNotFound(status)) << status;
  EXPECT_NE(status.message().find("job-missing"), std::string::npos);
}

TEST(Client, RetriesIdempotentCallsOnUnavailableButNotCancel) {
  auto state = std::make_shared<FakeState>();
  AddJob(*state, "job-1", 1, v1::RUNNING, /*ended=*/false);
  {
    ::xtrain::server::MutexLock lock(&state->mutex);
    state->jobs["job-1"].set_state(v1::RUNNING);
    state->unavailable["GetJob"] = 2;
    state->unavailable["SubmitJob"] = 1;
    state->unavailable["CancelJob"] = 1;
  }
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> client = Connected(*server);

  absl::StatusOr<v1::Job> job = client->GetJob("job-1");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->id(), "job-1");

  v1::JobSpec spec;
  spec.mutable_model()->set_name("small_cnn");
  absl::StatusOr<v1::SubmitJobResponse> submitted = client->SubmitJob(spec, "request-7");
  ASSERT_TRUE(submitted.ok()) << submitted.status();

  absl::StatusOr<v1::Job> cancelled = client->CancelJob("job-1");
  EXPECT_TRUE(absl::IsUnavailable(cancelled.status())) << cancelled.status();

  ::xtrain::server::MutexLock lock(&state->mutex);
  EXPECT_EQ(state->calls["GetJob"], 3);
  EXPECT_EQ(state->calls["CancelJob"], 1);
  ASSERT_EQ(state->submits.size(), 1u);  // the refused call is not recorded; the retry carries the same id
  EXPECT_EQ(state->calls["SubmitJob"], 2);
  EXPECT_EQ(state->submits[0].client_request_id(), "request-7");
}

TEST(Client, SubmitWithoutARequestIdIsNotRetried) {
  auto state = std::make_shared<FakeState>();
  {
    ::xtrain::server::MutexLock lock(&state->mutex);
    state->unavailable["SubmitJob"] = 1;
  }
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  absl::StatusOr<v1::SubmitJobResponse> submitted = Connected(*server)->SubmitJob(v1::JobSpec(), "");
  EXPECT_TRUE(absl::IsUnavailable(submitted.status())) << submitted.status();
  ::xtrain::server::MutexLock lock(&state->mutex);
  EXPECT_EQ(state->calls["SubmitJob"], 1);
}

TEST(Client, MapsTheServersStatusCodeAndMessage) {
  auto state = std::make_shared<FakeState>();
  {
    ::xtrain::server::MutexLock lock(&state->mutex);
    state->minimum_budget = 1 << 20;
  }
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  v1::JobSpec spec;
  spec.mutable_memory()->set_budget_bytes(1000);
  absl::StatusOr<v1::PlanJobResponse> plan = Connected(*server)->PlanJob(spec);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(plan.status().message().find("the smallest budget that fits is 1048576 bytes"), std::string::npos);

  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::NOT_FOUND, "gone")), absl::NotFoundError("gone"));
  EXPECT_EQ(FromGrpcStatus(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "late")), absl::DeadlineExceededError("late"));
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(Client, UnreachableServerIsUnavailable) {
  // A port nothing listens on: bind one, note it, close it.
  auto state = std::make_shared<FakeState>();
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  const std::string address = server->address();
  server->Stop();
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(address, FastOptions());
  ASSERT_TRUE(client.ok());
  EXPECT_TRUE(absl::IsUnavailable((*client)->GetJob("job-1").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(Client::Connect("", FastOptions()).status()));
}

TEST(Client, SendsTheTokenFromOptionsOrEnvironment) {
  auto state = std::make_shared<FakeState>();
  AddJob(*state, "job-1", 1, v1::SUCCEEDED);
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  ClientOptions options = FastOptions();
  options.token = "from-options";
  ASSERT_TRUE(Connected(*server, options)->GetJob("job-1").ok());
  ::setenv("XTRAIN_TOKEN", "from-environment", 1);
  ASSERT_TRUE(Connected(*server)->GetJob("job-1").ok());
  ::unsetenv("XTRAIN_TOKEN");
  ASSERT_TRUE(Connected(*server)->GetJob("job-1").ok());
  ::xtrain::server::MutexLock lock(&state->mutex);
  ASSERT_EQ(state->authorization.size(), 3u);
  EXPECT_EQ(state->authorization[0], "Bearer from-options");
  EXPECT_EQ(state->authorization[1], "Bearer from-environment");
  EXPECT_EQ(state->authorization[2], "");
}

TEST(Client, UploadSendsSizeChecksumAndMebibyteChunks) {
  auto state = std::make_shared<FakeState>();
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  TempDir dir;
  const std::string content = RandomBytes((5 << 20) / 2, 7);  // 2.5 MiB
  WriteAll(dir.File("weights.pt"), content);
  absl::StatusOr<v1::ArtifactInfo> info = Connected(*server)->Upload(dir.File("weights.pt"));
  ASSERT_TRUE(info.ok()) << info.status();  // the fake checks size and SHA-256 against the content
  EXPECT_EQ(info->id(), "art-uploaded");
  ::xtrain::server::MutexLock lock(&state->mutex);
  ASSERT_TRUE(state->upload_header.has_value());
  EXPECT_EQ(state->upload_header->name(), "weights.pt");
  EXPECT_EQ(state->upload_header->size_bytes(), static_cast<int64_t>(content.size()));
  EXPECT_EQ(state->upload_header->sha256(), testing::Sha256Hex(content));
  EXPECT_EQ(state->upload_chunks, (std::vector<int64_t>{1 << 20, 1 << 20, 1 << 19}));
  EXPECT_EQ(state->upload_content, content);
}

TEST(Client, UploadOfAMissingFileIsNotFound) {
  auto state = std::make_shared<FakeState>();
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  TempDir dir;
  EXPECT_TRUE(absl::IsNotFound(Connected(*server)->Upload(dir.File("missing.pt")).status()));
  ::xtrain::server::MutexLock lock(&state->mutex);
  EXPECT_EQ(state->calls["UploadArtifact"], 0);
}

// A fake holding one artifact of 3.5 MiB, served in 1 MiB chunks; returns its content.
std::string AddArtifact(FakeState& state) {
  const std::string content = RandomBytes((7 << 20) / 2, 11);
  ::xtrain::server::MutexLock lock(&state.mutex);
  state.artifact.set_id("art-1");
  state.artifact.set_name("weights");
  state.artifact.set_size_bytes(static_cast<int64_t>(content.size()));
  state.artifact.set_sha256(testing::Sha256Hex(content));
  state.artifact_content = content;
  return content;
}

TEST(Client, DownloadResumesAfterADroppedStream) {
  auto state = std::make_shared<FakeState>();
  const std::string content = AddArtifact(*state);
  {
    ::xtrain::server::MutexLock lock(&state->mutex);
    state->download_breaks[0] = 1;  // the first stream drops after one chunk
  }
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  TempDir dir;
  absl::StatusOr<v1::ArtifactInfo> info = Connected(*server)->Download("art-1", dir.File("out.pt"));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(ReadAll(dir.File("out.pt")), content);
  EXPECT_FALSE(std::filesystem::exists(dir.File("out.pt.part")));
  ::xtrain::server::MutexLock lock(&state->mutex);
  ASSERT_EQ(state->download_requests.size(), 2u);
  EXPECT_EQ(state->download_requests[0].offset(), 0);
  EXPECT_EQ(state->download_requests[1].offset(), 1 << 20);
}

TEST(Client, DownloadContinuesAPartialFile) {
  auto state = std::make_shared<FakeState>();
  const std::string content = AddArtifact(*state);
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  TempDir dir;
  WriteAll(dir.File("out.pt.part"), content.substr(0, 1000));  // left by an interrupted download
  absl::StatusOr<v1::ArtifactInfo> info = Connected(*server)->Download("art-1", dir.File("out.pt"));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(ReadAll(dir.File("out.pt")), content);
  ::xtrain::server::MutexLock lock(&state->mutex);
  ASSERT_EQ(state->download_requests.size(), 1u);
  EXPECT_EQ(state->download_requests[0].offset(), 1000);
}

TEST(Client, DownloadRefusesAPartialFileThatDoesNotMatch) {
  auto state = std::make_shared<FakeState>();
  const std::string content = AddArtifact(*state);
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  TempDir dir;
  std::string wrong = content.substr(0, 1000);
  wrong[10] = static_cast<char>(wrong[10] ^ 0x5a);
  WriteAll(dir.File("out.pt.part"), wrong);
  absl::StatusOr<v1::ArtifactInfo> info = Connected(*server)->Download("art-1", dir.File("out.pt"));
  EXPECT_EQ(info.status().code(), absl::StatusCode::kDataLoss) << info.status();
  EXPECT_FALSE(std::filesystem::exists(dir.File("out.pt")));
  EXPECT_FALSE(std::filesystem::exists(dir.File("out.pt.part")));  // removed: the next try starts over
  ASSERT_TRUE(Connected(*server)->Download("art-1", dir.File("out.pt")).ok());
  EXPECT_EQ(ReadAll(dir.File("out.pt")), content);
}

TEST(Client, DownloadOfAnUnknownArtifactIsNotFound) {
  auto state = std::make_shared<FakeState>();
  AddArtifact(*state);
  auto server = FakeServer::Start(state);
  ASSERT_NE(server, nullptr);
  TempDir dir;
  EXPECT_TRUE(absl::IsNotFound(Connected(*server)->Download("art-2", dir.File("x")).status()));
  EXPECT_FALSE(std::filesystem::exists(dir.File("x")));
  EXPECT_FALSE(std::filesystem::exists(dir.File("x.part")));
}

}  // namespace
}  // namespace xtrain::client
