// Bearer-token authentication and tenant isolation: the tokens file's format, every RPC refusing calls
// without a known token, tenants seeing only their own jobs and artifacts (another's are NOT_FOUND),
// admins seeing all, and reloading the file (Server::ReloadTokens, and SIGHUP to the real binary).
#include <signal.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "server/api/auth.h"
#include "server/common/mutex.h"
#include "server/common/util.h"
#include "tests/server/service_test_util.h"

namespace xtrain::server::testing {
namespace {
namespace v1 = ::xtrain::v1;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------------------------------
// The tokens file.

TEST(TokenTable, FindsEachTokenByItsHashWithItsTenantAndRole) {
  const std::string text = absl::StrCat("# tenants\n", Sha256Hex("alice-token"), " alice user\n\n",
                                        "  ", Sha256Hex("root-token"), "\tops admin   # the operators\n");
  absl::StatusOr<TokenTable> table = TokenTable::Parse(text, "tokens.txt");
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->size(), 2u);
  const Caller* alice = table->Find("alice-token");
  ASSERT_NE(alice, nullptr);
  EXPECT_EQ(alice->tenant, "alice");
  EXPECT_FALSE(alice->admin);
  EXPECT_EQ(alice->ReadScope(), "alice");
  const Caller* root = table->Find("root-token");
  ASSERT_NE(root, nullptr);
  EXPECT_EQ(root->tenant, "ops");
  EXPECT_TRUE(root->admin);
  EXPECT_EQ(root->ReadScope(), "");  // every tenant
  EXPECT_TRUE(root->Owns("alice"));
  EXPECT_FALSE(alice->Owns("bob"));
  EXPECT_EQ(table->Find("alice-token "), nullptr);
  EXPECT_EQ(table->Find(Sha256Hex("alice-token")), nullptr);  // the hash is not the token
  EXPECT_EQ(table->Find(""), nullptr);
}

TEST(TokenTable, UppercaseHashesAreTheSame) {
  std::string upper = Sha256Hex("t");
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  absl::StatusOr<TokenTable> table = TokenTable::Parse(absl::StrCat(upper, " a user\n"), "f");
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_NE(table->Find("t"), nullptr);
}

TEST(TokenTable, MalformedLinesAreRefusedNamingFileAndLine) {
  const std::string good = Sha256Hex("x");
  struct Case {
    std::string text;
    std::string says;
  };
  const Case cases[] = {
      {absl::StrCat(good, " alice\n"), "tokens.txt:1: 2 fields"},
      {absl::StrCat("\n", good, " alice user extra\n"), "tokens.txt:2: 4 fields"},
      {"plaintext-token alice user\n", "is not a SHA-256 in hex"},
      {absl::StrCat(good.substr(1), "g alice user\n"), "is not a SHA-256 in hex"},
      {absl::StrCat(good, " Alice user\n"), "tenant 'Alice' is not 1 to 64 of [a-z0-9_-]"},
      {absl::StrCat(good, " ", std::string(65, 'a'), " user\n"), "is not 1 to 64"},
      {absl::StrCat(good, " alice root\n"), "role 'root' is not user or admin"},
      {absl::StrCat(good, " alice user\n", good, " bob user\n"), "tokens.txt:2: the same token's hash"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<TokenTable> table = TokenTable::Parse(c.text, "tokens.txt");
    ASSERT_FALSE(table.ok()) << c.text;
    EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument) << c.text;
    EXPECT_THAT(std::string(table.status().message()), HasSubstr(c.says)) << c.text;
  }
}

// ---------------------------------------------------------------------------------------------------
// A real server with a tokens file.

// A TestServer with a tokens file in a folder of its own (removed after the server has stopped).
struct AuthServer {
  TempDir dir;
  std::string tokens;
  std::unique_ptr<TestServer> test;
  int port() const { return test->server->port(); }
};

// alice and bob are users, root an admin of tenant ops.
std::unique_ptr<AuthServer> StartWithTokens() {
  auto auth = std::make_unique<AuthServer>();
  ServerOptions options;
  auth->tokens = auth->dir.path() + "/tokens.txt";
  WriteTokensFile(auth->tokens, {{"alice-token", "alice", "user"}, {"bob-token", "bob", "user"}, {"root-token", "ops", "admin"}});
  options.tokens_file = auth->tokens;
  auth->test = TestServer::Start(options);
  if (auth->test == nullptr) return nullptr;
  return auth;
}

// Each RPC once, with as little as it needs: what status it ended with.
std::vector<std::pair<std::string, grpc::Status>> EveryRpc(v1::TrainingService::Stub& stub) {
  std::vector<std::pair<std::string, grpc::Status>> results;
  v1::PlanJobResponse plan;
  results.emplace_back("PlanJob", Plan(stub, TinyJob(1), &plan));
  {
    grpc::ClientContext context;
    v1::SubmitJobRequest request;
    *request.mutable_spec() = TinyJob(1);
    v1::SubmitJobResponse response;
    results.emplace_back("SubmitJob", stub.SubmitJob(&context, request, &response));
  }
  {
    grpc::ClientContext context;
    v1::GetJobRequest request;
    request.set_job_id("job-x");
    v1::GetJobResponse response;
    results.emplace_back("GetJob", stub.GetJob(&context, request, &response));
  }
  {
    grpc::ClientContext context;
    v1::ListJobsResponse response;
    results.emplace_back("ListJobs", stub.ListJobs(&context, v1::ListJobsRequest(), &response));
  }
  v1::CancelJobResponse cancelled;
  results.emplace_back("CancelJob", Cancel(stub, "job-x", &cancelled));
  grpc::Status watched;
  WatchToEnd(stub, "job-x", 0, &watched, std::chrono::seconds(30));
  results.emplace_back("WatchJob", watched);
  grpc::Status downloaded;
  Download(stub, "art-x", 0, &downloaded);
  results.emplace_back("DownloadArtifact", downloaded);
  v1::UploadArtifactResponse uploaded;
  results.emplace_back("UploadArtifact", Upload(stub, "abc", Sha256Hex("abc"), 3, &uploaded));
  return results;
}

TEST(Auth, EveryRpcRefusesACallWithoutAKnownTokenButHealthAnswers) {
  auto auth = StartWithTokens();
  ASSERT_NE(auth, nullptr);
  struct Case {
    std::string header;
    std::string says;
  };
  const Case cases[] = {
      {"", "no bearer token"},
      {"Bearer not-a-token", "not known to this server"},
      {"Basic YWxpY2U6cHc=", "is not 'Bearer <token>'"},
      {"Bearer ", "is not 'Bearer <token>'"},
      {absl::StrCat("Bearer ", Sha256Hex("alice-token")), "not known to this server"},  // the hash is no token
  };
  for (const Case& c : cases) {
    auto stub = StubWith(auth->port(), c.header);
    for (const auto& [rpc, status] : EveryRpc(*stub)) {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << rpc << " with '" << c.header << "'";
      EXPECT_THAT(status.error_message(), HasSubstr(c.says)) << rpc;
    }
  }
  // The health check stays open (Kubernetes probes carry no token).
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", auth->port()), grpc::InsecureChannelCredentials());
  grpc::GenericStub generic(channel);
  grpc::ClientContext context;
  Notification done;
  grpc::Status health;
  grpc::Slice empty;
  grpc::ByteBuffer request(&empty, 1), reply;
  generic.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &reply,
                    [&](grpc::Status s) {
                      health = std::move(s);
                      done.Notify();
                    });
  done.WaitForNotification();
  EXPECT_TRUE(health.ok()) << health.error_message();
}

TEST(Auth, TenantsSeeOnlyTheirOwnJobsAndArtifactsAndAdminsSeeAll) {
  auto auth = StartWithTokens();
  ASSERT_NE(auth, nullptr);
  auto alice = StubWith(auth->port(), "Bearer alice-token");
  auto bob = StubWith(auth->port(), "Bearer bob-token");
  auto root = StubWith(auth->port(), "bearer root-token");  // the scheme is case-insensitive

  const v1::SubmitJobResponse submitted = Submit(*alice, TinyJob(2));
  const std::string id = submitted.job().id();
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(submitted.job().tenant(), "alice");
  const v1::Job done = WaitForEnd(*alice, id);
  EXPECT_EQ(done.state(), v1::SUCCEEDED);
  ASSERT_FALSE(done.weights_artifact_id().empty());

  // bob: alice's job and its weights do not exist for him, with the same words as a missing one.
  {
    grpc::ClientContext context;
    v1::GetJobRequest request;
    request.set_job_id(id);
    v1::GetJobResponse response;
    const grpc::Status status = bob->GetJob(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(status.error_message(), absl::StrCat("job '", id, "' does not exist"));
  }
  v1::CancelJobResponse cancelled;
  EXPECT_EQ(Cancel(*bob, id, &cancelled).error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::Status watched;
  WatchToEnd(*bob, id, 0, &watched, std::chrono::seconds(30));
  EXPECT_EQ(watched.error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::Status downloaded;
  EXPECT_TRUE(Download(*bob, done.weights_artifact_id(), 0, &downloaded).empty());
  EXPECT_EQ(downloaded.error_code(), grpc::StatusCode::NOT_FOUND);
  {
    // Nor can he finetune from alice's weights.
    grpc::ClientContext context;
    v1::SubmitJobRequest request;
    *request.mutable_spec() = TinyJob(1);
    request.mutable_spec()->mutable_model()->set_init_artifact_id(done.weights_artifact_id());
    v1::SubmitJobResponse response;
    const grpc::Status status = bob->SubmitJob(&context, request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND) << status.error_message();
  }
  const v1::SubmitJobResponse bobs = Submit(*bob, TinyJob(1));
  WaitForEnd(*bob, bobs.job().id());
  auto list = [](v1::TrainingService::Stub& stub) {
    grpc::ClientContext context;
    v1::ListJobsResponse response;
    EXPECT_TRUE(stub.ListJobs(&context, v1::ListJobsRequest(), &response).ok());
    std::vector<std::string> ids;
    for (const v1::Job& job : response.jobs()) ids.push_back(job.id());
    return ids;
  };
  EXPECT_THAT(list(*bob), ::testing::ElementsAre(bobs.job().id()));
  EXPECT_THAT(list(*alice), ::testing::ElementsAre(id));

  // root (admin of ops) sees and reads both tenants'.
  EXPECT_THAT(list(*root), ::testing::UnorderedElementsAre(id, bobs.job().id()));
  EXPECT_EQ(WaitForEnd(*root, id).tenant(), "alice");
  grpc::Status by_root;
  EXPECT_FALSE(Download(*root, done.weights_artifact_id(), 0, &by_root).empty());
  EXPECT_TRUE(by_root.ok()) << by_root.error_message();
  // What an admin submits is its own tenant's.
  EXPECT_EQ(Submit(*root, TinyJob(1)).job().tenant(), "ops");
}

TEST(Auth, ReloadSwapsTheTokensAndABadFileKeepsTheOldOnes) {
  auto auth = StartWithTokens();
  ASSERT_NE(auth, nullptr);
  auto list_status = [&](const std::string& token) {
    auto stub = StubWith(auth->port(), absl::StrCat("Bearer ", token));
    grpc::ClientContext context;
    v1::ListJobsResponse response;
    return stub->ListJobs(&context, v1::ListJobsRequest(), &response).error_code();
  };
  EXPECT_EQ(list_status("alice-token"), grpc::StatusCode::OK);
  EXPECT_EQ(list_status("carol-token"), grpc::StatusCode::UNAUTHENTICATED);
  WriteTokensFile(auth->tokens, {{"carol-token", "carol", "user"}});
  absl::StatusOr<size_t> reloaded = auth->test->server->ReloadTokens();
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_EQ(*reloaded, 1u);
  EXPECT_EQ(list_status("carol-token"), grpc::StatusCode::OK);
  EXPECT_EQ(list_status("alice-token"), grpc::StatusCode::UNAUTHENTICATED);  // revoked
  {
    std::ofstream out(auth->tokens, std::ios::trunc);
    out << "carol-token carol user\n";  // a plaintext token: refused, the old table stays
  }
  reloaded = auth->test->server->ReloadTokens();
  ASSERT_FALSE(reloaded.ok());
  EXPECT_THAT(std::string(reloaded.status().message()), HasSubstr(":1: 'carol-token' is not a SHA-256"));
  EXPECT_EQ(list_status("carol-token"), grpc::StatusCode::OK);
}

TEST(Auth, AMalformedTokensFileStopsTheServerAtStartSayingWhere) {
  TempDir dir;
  const std::string path = dir.path() + "/tokens.txt";
  {
    std::ofstream out(path);
    out << Sha256Hex("a") << " alice superuser\n";
  }
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.data_dir = dir.path() + "/data";
  options.tokens_file = path;
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("tokens.txt:1: role 'superuser' is not user or admin"));
  options.tokens_file = dir.path() + "/missing.txt";
  server = Server::Start(options);
  ASSERT_FALSE(server.ok());
  EXPECT_THAT(std::string(server.status().message()), HasSubstr("the tokens file"));
}

TEST(Tls, SettingsThatCannotWorkStopTheServerAtStartSayingWhich) {
  TempDir dir;
  const std::string not_pem = dir.path() + "/not.pem";
  {
    std::ofstream out(not_pem);
    out << "just text\n";
  }
  struct Case {
    std::string cert, key, client_ca;
    std::string says;
  };
  const Case cases[] = {
      {not_pem, "", "", "TLS needs both --tls-cert and --tls-key"},
      {"", not_pem, "", "TLS needs both --tls-cert and --tls-key"},
      {"", "", not_pem, "--tls-client-ca needs --tls-cert and --tls-key"},
      {not_pem, not_pem, "", "--tls-cert: " + not_pem + " is not PEM"},
      {dir.path() + "/missing.pem", not_pem, "", "--tls-cert: "},
  };
  for (const Case& c : cases) {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.data_dir = dir.path() + "/data";
    options.tls_cert_file = c.cert;
    options.tls_key_file = c.key;
    options.tls_client_ca_file = c.client_ca;
    absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(options);
    ASSERT_FALSE(server.ok()) << c.says;
    EXPECT_THAT(std::string(server.status().message()), HasSubstr(c.says));
  }
}

// The real binary rereads its tokens file on SIGHUP and keeps serving.
TEST(Auth, SighupReloadsTheTokensOfTheRunningBinary) {
  TempDir dir;
  const std::string tokens = dir.path() + "/tokens.txt";
  WriteTokensFile(tokens, {{"alice-token", "alice", "user"}});
  ServerProcess server(dir.path() + "/data", dir.path() + "/root", {"--tokens", tokens});
  ASSERT_TRUE(server.serving());
  auto status_of = [&](const std::string& token) {
    auto stub = StubWith(server.port(), absl::StrCat("Bearer ", token));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ListJobsResponse response;
    return stub->ListJobs(&context, v1::ListJobsRequest(), &response).error_code();
  };
  EXPECT_EQ(status_of("alice-token"), grpc::StatusCode::OK);
  EXPECT_EQ(status_of("dave-token"), grpc::StatusCode::UNAUTHENTICATED);
  WriteTokensFile(tokens, {{"alice-token", "alice", "user"}, {"dave-token", "dave", "admin"}});
  ASSERT_EQ(::kill(server.pid(), SIGHUP), 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (status_of("dave-token") != grpc::StatusCode::OK && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(status_of("dave-token"), grpc::StatusCode::OK);
  EXPECT_EQ(status_of("alice-token"), grpc::StatusCode::OK);
  EXPECT_EQ(server.Stop(SIGTERM), 0);
}

}  // namespace
}  // namespace xtrain::server::testing
