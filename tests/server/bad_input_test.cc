// The bad-input corpus (issue 11): over a hundred requests a user could get wrong, against one real server
// with a tokens file. Each must end with its expected code and a message that names what to change; after
// the whole corpus the server still serves and the store holds exactly what it held before: the jobs read
// back unchanged, no refused request stored a job, the artifact downloads whole.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "server/common/util.h"
#include "tests/server/service_test_util.h"

namespace xtrain::server::testing {
namespace {
namespace v1 = ::xtrain::v1;
namespace fs = std::filesystem;
using ::testing::HasSubstr;

struct Case {
  std::string name;
  std::function<grpc::Status()> call;
  grpc::StatusCode code;
  std::string says;  // a part of the message
};

grpc::Status GetJobStatus(v1::TrainingService::Stub& stub, const std::string& id) {
  grpc::ClientContext context;
  v1::GetJobRequest request;
  request.set_job_id(id);
  v1::GetJobResponse response;
  return stub.GetJob(&context, request, &response);
}

grpc::Status ListStatus(v1::TrainingService::Stub& stub, int page_size, const std::string& token) {
  grpc::ClientContext context;
  v1::ListJobsRequest request;
  request.set_page_size(page_size);
  request.set_page_token(token);
  v1::ListJobsResponse response;
  return stub.ListJobs(&context, request, &response);
}

// Every job `stub` may list, all pages.
std::vector<v1::Job> ListAll(v1::TrainingService::Stub& stub) {
  std::vector<v1::Job> jobs;
  std::string token;
  do {
    grpc::ClientContext context;
    v1::ListJobsRequest request;
    request.set_page_size(2);
    request.set_page_token(token);
    v1::ListJobsResponse response;
    const grpc::Status status = stub.ListJobs(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    if (!status.ok()) break;
    jobs.insert(jobs.end(), response.jobs().begin(), response.jobs().end());
    token = response.next_page_token();
  } while (!token.empty());
  return jobs;
}

// A spec changed by `change`, submitted.
std::function<grpc::Status()> Submitting(v1::TrainingService::Stub& stub, std::function<void(v1::JobSpec&)> change) {
  return [&stub, change] {
    v1::JobSpec spec = TinyJob(2);
    change(spec);
    return TrySubmit(stub, spec);
  };
}

TEST(BadInput, EveryRequestGetsItsCodeAndASentenceAndTheStoreIsIntact) {
  TempDir dir;
  const std::string tokens = dir.path() + "/tokens.txt";
  WriteTokensFile(tokens, {{"acme-token", "acme", "user"}, {"rival-token", "rival", "user"}});
  ServerOptions options;
  options.tokens_file = tokens;
  auto test = TestServer::Start(options);
  ASSERT_NE(test, nullptr);
  const int port = test->server->port();
  auto acme = StubWith(port, "Bearer acme-token");
  auto rival = StubWith(port, "Bearer rival-token");
  auto anonymous = StubWith(port, "");
  auto forged = StubWith(port, "Bearer forged-token");

  // Data a user could point at: a corrupt MNIST folder, a symlink out of the roots, a weights file.
  const std::string root = test->data_root;
  fs::create_directories(root + "/corrupt-mnist");
  for (const char* name : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                           "t10k-labels-idx1-ubyte"}) {
    std::ofstream(root + "/corrupt-mnist/" + name) << "not an IDX file";
  }
  fs::create_symlink(dir.path(), root + "/escape");
  std::ofstream(dir.path() + "/outside.pt") << "weights outside the roots";

  // The state before: a finished job and its weights for each tenant.
  const std::string acme_job = Submit(*acme, TinyJob(2)).job().id();
  const std::string rival_job = Submit(*rival, TinyJob(2)).job().id();
  ASSERT_FALSE(acme_job.empty());
  ASSERT_FALSE(rival_job.empty());
  const v1::Job acme_done = WaitForEnd(*acme, acme_job);
  const v1::Job rival_done = WaitForEnd(*rival, rival_job);
  ASSERT_EQ(acme_done.state(), v1::SUCCEEDED);
  ASSERT_EQ(rival_done.state(), v1::SUCCEEDED);
  grpc::Status downloaded;
  const std::string acme_weights = Download(*acme, acme_done.weights_artifact_id(), 0, &downloaded);
  ASSERT_TRUE(downloaded.ok()) << downloaded.error_message();

  using Code = grpc::StatusCode;
  std::vector<Case> cases;
  auto spec_case = [&](std::string name, std::function<void(v1::JobSpec&)> change, Code code, std::string says) {
    cases.push_back({std::move(name), Submitting(*acme, std::move(change)), code, std::move(says)});
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();

  // Every JobSpec field with a wrong value or type of value.
  spec_case("model.name empty", [](v1::JobSpec& s) { s.mutable_model()->clear_name(); }, Code::INVALID_ARGUMENT,
            "spec.model.name is empty");
  spec_case("model.name unknown", [](v1::JobSpec& s) { s.mutable_model()->set_name("resnet9000"); },
            Code::INVALID_ARGUMENT, "resnet9000");
  spec_case("model.dims 4", [](v1::JobSpec& s) { s.mutable_model()->set_dims(4); }, Code::INVALID_ARGUMENT,
            "spec.model.dims is 4; use 2");
  spec_case("model.width negative", [](v1::JobSpec& s) { s.mutable_model()->set_width(-1); }, Code::INVALID_ARGUMENT,
            "spec.model.width is -1");
  spec_case("model.classes huge", [](v1::JobSpec& s) { s.mutable_model()->set_classes(200000); },
            Code::INVALID_ARGUMENT, "use a value up to 100000");
  spec_case("model.depth negative", [](v1::JobSpec& s) { s.mutable_model()->set_depth(-2); }, Code::INVALID_ARGUMENT,
            "spec.model.depth is -2");
  spec_case("model weights given twice",
            [](v1::JobSpec& s) {
              s.mutable_model()->set_init_artifact_id("art-1");
              s.mutable_model()->set_init_path("w.pt");
            },
            Code::INVALID_ARGUMENT, "both set");
  spec_case("model.freeze empty prefix", [](v1::JobSpec& s) { s.mutable_model()->add_freeze(""); },
            Code::INVALID_ARGUMENT, "empty prefix");
  spec_case("model.init_artifact_id unknown", [](v1::JobSpec& s) { s.mutable_model()->set_init_artifact_id("art-nope"); },
            Code::NOT_FOUND, "is not an artifact of yours");
  spec_case("model.init_artifact_id of another tenant",
            [&](v1::JobSpec& s) { s.mutable_model()->set_init_artifact_id(rival_done.weights_artifact_id()); },
            Code::NOT_FOUND, "is not an artifact of yours");
  spec_case("model.init_path with ..", [](v1::JobSpec& s) { s.mutable_model()->set_init_path("../outside.pt"); },
            Code::INVALID_ARGUMENT, "outside the server's data roots");
  spec_case("model.init_path absolute outside",
            [&](v1::JobSpec& s) { s.mutable_model()->set_init_path(dir.path() + "/outside.pt"); },
            Code::INVALID_ARGUMENT, "outside the server's data roots");
  spec_case("model.init_path through a symlink out",
            [](v1::JobSpec& s) { s.mutable_model()->set_init_path("escape/outside.pt"); }, Code::INVALID_ARGUMENT,
            "outside the server's data roots");
  spec_case("model.init_path missing", [](v1::JobSpec& s) { s.mutable_model()->set_init_path("no-such.pt"); },
            Code::NOT_FOUND, "does not exist under any data root");
  spec_case("dataset.kind unset", [](v1::JobSpec& s) { s.mutable_dataset()->clear_kind(); }, Code::INVALID_ARGUMENT,
            "spec.dataset.kind is not set");
  spec_case("dataset.kind unknown number",
            [](v1::JobSpec& s) { s.mutable_dataset()->set_kind(static_cast<v1::DatasetSpec::Kind>(99)); },
            Code::INVALID_ARGUMENT, "use a known kind");
  auto mnist = [](const std::string& path) {
    return [path](v1::JobSpec& s) {
      s.mutable_dataset()->Clear();
      s.mutable_dataset()->set_kind(v1::DatasetSpec::MNIST);
      s.mutable_dataset()->set_path(path);
    };
  };
  spec_case("dataset.path empty", mnist(""), Code::INVALID_ARGUMENT, "spec.dataset.path is empty");
  spec_case("dataset.path with ..", mnist("../.."), Code::INVALID_ARGUMENT, "outside the server's data roots");
  spec_case("dataset.path absolute outside", mnist("/etc"), Code::INVALID_ARGUMENT, "outside the server's data roots");
  spec_case("dataset.path through a symlink out", mnist("escape"), Code::INVALID_ARGUMENT,
            "outside the server's data roots");
  spec_case("dataset.path missing", mnist("no-such-folder"), Code::NOT_FOUND, "does not exist under any data root");
  spec_case("dataset files malformed", mnist("corrupt-mnist"), Code::INVALID_ARGUMENT, "corrupt-mnist");
  spec_case("dataset.limit negative", [](v1::JobSpec& s) { s.mutable_dataset()->set_limit(-5); },
            Code::INVALID_ARGUMENT, "spec.dataset.limit is -5");
  spec_case("dataset.validation_fraction 1.5", [](v1::JobSpec& s) { s.mutable_dataset()->set_validation_fraction(1.5); },
            Code::INVALID_ARGUMENT, "use a fraction in [0, 1)");
  spec_case("dataset.validation_fraction NaN", [&](v1::JobSpec& s) { s.mutable_dataset()->set_validation_fraction(nan); },
            Code::INVALID_ARGUMENT, "spec.dataset.validation_fraction");
  spec_case("dataset.image_size huge", [](v1::JobSpec& s) { s.mutable_dataset()->set_image_size(5000); },
            Code::INVALID_ARGUMENT, "side up to 4096");
  spec_case("dataset.synthetic_examples negative", [](v1::JobSpec& s) { s.mutable_dataset()->set_synthetic_examples(-1); },
            Code::INVALID_ARGUMENT, "spec.dataset.synthetic_examples");
  spec_case("dataset.synthetic_channels huge", [](v1::JobSpec& s) { s.mutable_dataset()->set_synthetic_channels(2000); },
            Code::INVALID_ARGUMENT, "spec.dataset.synthetic_channels");
  spec_case("dataset.synthetic_size huge", [](v1::JobSpec& s) { s.mutable_dataset()->set_synthetic_size(10000); },
            Code::INVALID_ARGUMENT, "spec.dataset.synthetic_size");
  spec_case("dataset.synthetic_classes negative", [](v1::JobSpec& s) { s.mutable_dataset()->set_synthetic_classes(-3); },
            Code::INVALID_ARGUMENT, "spec.dataset.synthetic_classes");
  spec_case("task.kind unknown", [](v1::JobSpec& s) { s.mutable_task()->set_kind("regression"); },
            Code::INVALID_ARGUMENT, "spec.task.kind is 'regression'");
  spec_case("task.scale 17", [](v1::JobSpec& s) { s.mutable_task()->set_scale(17); }, Code::INVALID_ARGUMENT,
            "spec.task.scale");
  spec_case("task.hole_fraction 1", [](v1::JobSpec& s) { s.mutable_task()->set_hole_fraction(1.0); },
            Code::INVALID_ARGUMENT, "spec.task.hole_fraction");
  spec_case("task.timesteps huge", [](v1::JobSpec& s) { s.mutable_task()->set_timesteps(200000); },
            Code::INVALID_ARGUMENT, "spec.task.timesteps");
  spec_case("training.batch_size negative", [](v1::JobSpec& s) { s.mutable_training()->set_batch_size(-1); },
            Code::INVALID_ARGUMENT, "spec.training.batch_size is -1");
  spec_case("training.batch_size huge", [](v1::JobSpec& s) { s.mutable_training()->set_batch_size(100000); },
            Code::INVALID_ARGUMENT, "use 1 to 65536");
  spec_case("training.epochs huge", [](v1::JobSpec& s) { s.mutable_training()->set_epochs(200000); },
            Code::INVALID_ARGUMENT, "spec.training.epochs");
  spec_case("training.max_steps negative", [](v1::JobSpec& s) { s.mutable_training()->set_max_steps(-1); },
            Code::INVALID_ARGUMENT, "spec.training.max_steps");
  spec_case("training.optimizer unknown", [](v1::JobSpec& s) { s.mutable_training()->set_optimizer("rmsprop"); },
            Code::INVALID_ARGUMENT, "use sgd, sgd_momentum, adam or adamw");
  spec_case("training.lr NaN", [&](v1::JobSpec& s) { s.mutable_training()->set_lr(nan); }, Code::INVALID_ARGUMENT,
            "spec.training.lr");
  spec_case("training.lr negative", [](v1::JobSpec& s) { s.mutable_training()->set_lr(-0.1); },
            Code::INVALID_ARGUMENT, "spec.training.lr");
  spec_case("training.momentum 1", [](v1::JobSpec& s) { s.mutable_training()->set_momentum(1.0); },
            Code::INVALID_ARGUMENT, "spec.training.momentum");
  spec_case("training.weight_decay negative", [](v1::JobSpec& s) { s.mutable_training()->set_weight_decay(-1); },
            Code::INVALID_ARGUMENT, "spec.training.weight_decay");
  spec_case("training.schedule unknown", [](v1::JobSpec& s) { s.mutable_training()->set_schedule("linear"); },
            Code::INVALID_ARGUMENT, "use none, step or cosine");
  spec_case("training.warmup_steps negative", [](v1::JobSpec& s) { s.mutable_training()->set_warmup_steps(-1); },
            Code::INVALID_ARGUMENT, "spec.training.warmup_steps");
  spec_case("training.gamma 2", [](v1::JobSpec& s) { s.mutable_training()->set_gamma(2); }, Code::INVALID_ARGUMENT,
            "spec.training.gamma");
  spec_case("training.clip_grad_norm infinite", [&](v1::JobSpec& s) { s.mutable_training()->set_clip_grad_norm(inf); },
            Code::INVALID_ARGUMENT, "spec.training.clip_grad_norm");
  spec_case("training.dtype float16", [](v1::JobSpec& s) { s.mutable_training()->set_dtype("float16"); },
            Code::INVALID_ARGUMENT, "use float32 or bfloat16");
  spec_case("memory.budget_bytes negative", [](v1::JobSpec& s) { s.mutable_memory()->set_budget_bytes(-1); },
            Code::INVALID_ARGUMENT, "spec.memory.budget_bytes");
  spec_case("memory.device_share 1.5", [](v1::JobSpec& s) { s.mutable_memory()->set_device_share(1.5); },
            Code::INVALID_ARGUMENT, "spec.memory.device_share");
  spec_case("memory budget given twice",
            [](v1::JobSpec& s) {
              s.mutable_memory()->set_budget_bytes(1 << 20);
              s.mutable_memory()->set_device_share(0.5);
            },
            Code::INVALID_ARGUMENT, "give the budget one way");
  spec_case("memory.probes fixed without a count",
            [](v1::JobSpec& s) { s.mutable_memory()->set_probes(v1::MemorySpec::PROBES_FIXED); }, Code::INVALID_ARGUMENT,
            "PROBES_FIXED needs a positive probe count");
  spec_case("memory.fixed_probes without fixed", [](v1::JobSpec& s) { s.mutable_memory()->set_fixed_probes(8); },
            Code::INVALID_ARGUMENT, "set it only with probes: PROBES_FIXED");
  spec_case("memory.fixed_probes huge",
            [](v1::JobSpec& s) {
              s.mutable_memory()->set_probes(v1::MemorySpec::PROBES_FIXED);
              s.mutable_memory()->set_fixed_probes(5000);
            },
            Code::INVALID_ARGUMENT, "use up to 4096");
  spec_case("memory.min_probes above max_probes",
            [](v1::JobSpec& s) {
              s.mutable_memory()->set_min_probes(10);
              s.mutable_memory()->set_max_probes(5);
            },
            Code::INVALID_ARGUMENT, "is above max_probes");
  spec_case("memory.min_fidelity 2", [](v1::JobSpec& s) { s.mutable_memory()->set_min_fidelity(2); },
            Code::INVALID_ARGUMENT, "spec.memory.min_fidelity");
  spec_case("memory.budget_bytes below any plan", [](v1::JobSpec& s) { s.mutable_memory()->set_budget_bytes(1000); },
            Code::RESOURCE_EXHAUSTED, "smallest budget");
  spec_case("checkpoint.keep 500", [](v1::JobSpec& s) { s.mutable_checkpoint()->set_keep(500); },
            Code::INVALID_ARGUMENT, "spec.checkpoint.keep");
  spec_case("checkpoint.every_steps negative", [](v1::JobSpec& s) { s.mutable_checkpoint()->set_every_steps(-1); },
            Code::INVALID_ARGUMENT, "spec.checkpoint.every_steps");
  spec_case("checkpoint.every_seconds infinite", [&](v1::JobSpec& s) { s.mutable_checkpoint()->set_every_seconds(inf); },
            Code::INVALID_ARGUMENT, "spec.checkpoint.every_seconds");
  spec_case("priority 1000", [](v1::JobSpec& s) { s.set_priority(1000); }, Code::INVALID_ARGUMENT,
            "use -100 to 100");
  spec_case("display_name too long", [](v1::JobSpec& s) { s.set_display_name(std::string(300, 'n')); },
            Code::INVALID_ARGUMENT, "spec.display_name is longer than 256");
  spec_case("65 labels",
            [](v1::JobSpec& s) {
              // Built whole, then swapped in (GCC 12 warns falsely about assigning into the map in a loop).
              google::protobuf::Map<std::string, std::string> labels;
              for (int i = 0; i < 65; ++i) labels.insert({absl::StrCat("k", i), std::string(1, 'v')});
              s.mutable_labels()->swap(labels);
            },
            Code::INVALID_ARGUMENT, "more than 64 labels");
  spec_case("label key empty", [](v1::JobSpec& s) { (*s.mutable_labels())[""] = "v"; }, Code::INVALID_ARGUMENT,
            "must be 1 to 63 characters");
  spec_case("label value too long", [](v1::JobSpec& s) { (*s.mutable_labels())["k"] = std::string(300, 'v'); },
            Code::INVALID_ARGUMENT, "longer than 256 characters");
  cases.push_back({"client_request_id too long",
                   [&] { return TrySubmit(*acme, TinyJob(2), nullptr, std::string(200, 'r')); }, Code::INVALID_ARGUMENT,
                   "client_request_id is longer than 128"});
  cases.push_back({"a spec past the message limit",
                   [&] {
                     v1::JobSpec spec = TinyJob(2);
                     spec.set_display_name(std::string(65 << 20, 'x'));
                     return TrySubmit(*acme, spec);
                   },
                   Code::RESOURCE_EXHAUSTED, "larger than max"});
  cases.push_back({"PlanJob of a bad spec",
                   [&] {
                     v1::JobSpec spec = TinyJob(2);
                     spec.mutable_training()->set_batch_size(-4);
                     v1::PlanJobResponse response;
                     return Plan(*acme, spec, &response);
                   },
                   Code::INVALID_ARGUMENT, "spec.training.batch_size is -4"});

  // Reads, cancels, watches and artifacts.
  cases.push_back({"GetJob of an empty id", [&] { return GetJobStatus(*acme, ""); }, Code::NOT_FOUND, "does not exist"});
  cases.push_back({"GetJob unknown", [&] { return GetJobStatus(*acme, "job-nope"); }, Code::NOT_FOUND,
                   "job 'job-nope' does not exist"});
  cases.push_back({"GetJob of another tenant's job", [&] { return GetJobStatus(*acme, rival_job); }, Code::NOT_FOUND,
                   "does not exist"});
  cases.push_back({"ListJobs page_size 5000", [&] { return ListStatus(*acme, 5000, ""); }, Code::INVALID_ARGUMENT,
                   "page_size is 5000; use 1 to 1000"});
  cases.push_back({"ListJobs page_size negative", [&] { return ListStatus(*acme, -1, ""); }, Code::INVALID_ARGUMENT,
                   "page_size is -1"});
  cases.push_back({"ListJobs made-up page token", [&] { return ListStatus(*acme, 10, "abc"); },
                   Code::INVALID_ARGUMENT, "page_token is not one this server gave out"});
  cases.push_back({"CancelJob unknown",
                   [&] {
                     v1::CancelJobResponse response;
                     return Cancel(*acme, "job-nope", &response);
                   },
                   Code::NOT_FOUND, "does not exist"});
  cases.push_back({"CancelJob of a finished job",
                   [&] {
                     v1::CancelJobResponse response;
                     return Cancel(*acme, acme_job, &response);
                   },
                   Code::FAILED_PRECONDITION, "has already ended"});
  cases.push_back({"CancelJob of another tenant's job",
                   [&] {
                     v1::CancelJobResponse response;
                     return Cancel(*acme, rival_job, &response);
                   },
                   Code::NOT_FOUND, "does not exist"});
  auto watch = [&](const std::string& id, int64_t from) {
    return [&, id, from] {
      grpc::Status status;
      WatchToEnd(*acme, id, from, &status, std::chrono::seconds(60));
      return status;
    };
  };
  cases.push_back({"WatchJob unknown", watch("job-nope", 0), Code::NOT_FOUND, "does not exist"});
  cases.push_back({"WatchJob from past the end", watch(acme_job, acme_done.last_sequence() + 5), Code::OUT_OF_RANGE,
                   "is past the end"});
  cases.push_back({"WatchJob from a negative sequence", watch(acme_job, -1), Code::INVALID_ARGUMENT,
                   "from_sequence is -1"});
  cases.push_back({"WatchJob of another tenant's job", watch(rival_job, 0), Code::NOT_FOUND, "does not exist"});
  auto download = [&](const std::string& id, int64_t offset) {
    return [&, id, offset] {
      grpc::Status status;
      Download(*acme, id, offset, &status);
      return status;
    };
  };
  cases.push_back({"Download unknown", download("art-nope", 0), Code::NOT_FOUND, "does not exist"});
  cases.push_back({"Download from a negative offset", download(acme_done.weights_artifact_id(), -1), Code::OUT_OF_RANGE,
                   "resume from 0 to its size"});
  cases.push_back({"Download from past the end",
                   download(acme_done.weights_artifact_id(), static_cast<int64_t>(acme_weights.size()) + 1),
                   Code::OUT_OF_RANGE, "resume from 0 to its size"});
  cases.push_back({"Download of another tenant's artifact", download(rival_done.weights_artifact_id(), 0),
                   Code::NOT_FOUND, "does not exist"});
  const std::string content(10000, 'w');
  auto upload = [&](std::string bytes, std::string sha, int64_t size) {
    return [&, bytes, sha, size] {
      v1::UploadArtifactResponse response;
      return Upload(*acme, bytes, sha, size, &response);
    };
  };
  cases.push_back({"Upload with the wrong checksum", upload(content, Sha256Hex("other"), 10000), Code::INVALID_ARGUMENT,
                   "SHA-256"});
  cases.push_back({"Upload truncated", upload(content.substr(0, 4000), Sha256Hex(content), 10000),
                   Code::INVALID_ARGUMENT, "ended after 4000 of 10000"});
  cases.push_back({"Upload longer than declared", upload(content, Sha256Hex(content), 5000), Code::INVALID_ARGUMENT,
                   "longer than its header's size_bytes"});
  cases.push_back({"Upload past the size limit", upload(content, Sha256Hex(content), int64_t{1} << 40),
                   Code::INVALID_ARGUMENT, "header.size_bytes is"});
  cases.push_back({"Upload with a malformed checksum", upload(content, "not-hex", 10000), Code::INVALID_ARGUMENT,
                   "64 hex digits"});
  cases.push_back({"Upload of nothing", upload("", Sha256Hex(""), 0), Code::INVALID_ARGUMENT, "header.size_bytes is 0"});

  // Every RPC without a token and with a forged one.
  for (auto* stub : {anonymous.get(), forged.get()}) {
    const std::string who = stub == anonymous.get() ? "without a token" : "with a forged token";
    const std::string says = stub == anonymous.get() ? "no bearer token" : "not known to this server";
    cases.push_back({absl::StrCat("PlanJob ", who),
                     [stub] {
                       v1::PlanJobResponse response;
                       return Plan(*stub, TinyJob(1), &response);
                     },
                     Code::UNAUTHENTICATED, says});
    cases.push_back({absl::StrCat("SubmitJob ", who), [stub] { return TrySubmit(*stub, TinyJob(1)); }, Code::UNAUTHENTICATED, says});
    cases.push_back({absl::StrCat("GetJob ", who), [&, stub] { return GetJobStatus(*stub, acme_job); }, Code::UNAUTHENTICATED, says});
    cases.push_back({absl::StrCat("ListJobs ", who), [stub] { return ListStatus(*stub, 10, ""); }, Code::UNAUTHENTICATED, says});
    cases.push_back({absl::StrCat("CancelJob ", who),
                     [&, stub] {
                       v1::CancelJobResponse response;
                       return Cancel(*stub, acme_job, &response);
                     },
                     Code::UNAUTHENTICATED, says});
    cases.push_back({absl::StrCat("WatchJob ", who),
                     [&, stub] {
                       grpc::Status status;
                       WatchToEnd(*stub, acme_job, 0, &status, std::chrono::seconds(60));
                       return status;
                     },
                     Code::UNAUTHENTICATED, says});
    cases.push_back({absl::StrCat("DownloadArtifact ", who),
                     [&, stub] {
                       grpc::Status status;
                       Download(*stub, acme_done.weights_artifact_id(), 0, &status);
                       return status;
                     },
                     Code::UNAUTHENTICATED, says});
    cases.push_back({absl::StrCat("UploadArtifact ", who),
                     [&, stub] {
                       v1::UploadArtifactResponse response;
                       return Upload(*stub, content, Sha256Hex(content), 10000, &response);
                     },
                     Code::UNAUTHENTICATED, says});
  }

  ASSERT_GE(cases.size(), 60u);
  for (const Case& c : cases) {
    const grpc::Status status = c.call();
    EXPECT_EQ(status.error_code(), c.code) << c.name << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr(c.says)) << c.name;
  }
  std::printf("bad-input corpus: %zu requests\n", cases.size());

  // Still serving, and the store as it was: each tenant lists exactly its one job, unchanged; the
  // weights download whole.
  const std::vector<v1::Job> acme_jobs = ListAll(*acme);
  ASSERT_EQ(acme_jobs.size(), 1u);
  EXPECT_EQ(acme_jobs[0].id(), acme_job);
  EXPECT_EQ(acme_jobs[0].state(), v1::SUCCEEDED);
  EXPECT_EQ(acme_jobs[0].last_sequence(), acme_done.last_sequence());
  const std::vector<v1::Job> rival_jobs = ListAll(*rival);
  ASSERT_EQ(rival_jobs.size(), 1u);
  EXPECT_EQ(rival_jobs[0].id(), rival_job);
  EXPECT_EQ(rival_jobs[0].last_sequence(), rival_done.last_sequence());
  grpc::Status again;
  EXPECT_EQ(Download(*acme, acme_done.weights_artifact_id(), 0, &again), acme_weights);
  EXPECT_TRUE(again.ok()) << again.error_message();
  grpc::Status log;
  const std::vector<v1::WatchJobResponse> events = WatchToEnd(*acme, acme_job, 0, &log);
  EXPECT_TRUE(log.ok()) << log.error_message();
  EXPECT_EQ(static_cast<int64_t>(events.size()), acme_done.last_sequence());
  // A good request still works.
  const std::string after = Submit(*acme, TinyJob(2)).job().id();
  EXPECT_EQ(WaitForEnd(*acme, after).state(), v1::SUCCEEDED);
}

}  // namespace
}  // namespace xtrain::server::testing
