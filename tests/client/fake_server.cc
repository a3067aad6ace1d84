#include "tests/client/fake_server.h"

#include <algorithm>

#include <openssl/evp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "server/common/mutex.h"

namespace xtrain::client::testing {
namespace v1 = ::xtrain::v1;

std::string Sha256Hex(const std::string& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &size, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned int i = 0; i < size; ++i) absl::StrAppendFormat(&hex, "%02x", digest[i]);
  return hex;
}

namespace {

bool Terminal(v1::JobState state) { return state == v1::SUCCEEDED || state == v1::FAILED || state == v1::CANCELLED; }

}  // namespace

class FakeServer::Service : public v1::TrainingService::Service {
 public:
  explicit Service(std::shared_ptr<FakeState> state) : state_(std::move(state)) {}

  grpc::Status PlanJob(grpc::ServerContext* context, const v1::PlanJobRequest* request,
                       v1::PlanJobResponse* response) override {
    ::xtrain::server::MutexLock lock(&state_->mutex);
    if (std::optional<grpc::Status> s = Enter(context, "PlanJob")) return *s;
    state_->plans.push_back(*request);
    const int64_t budget = request->spec().memory().budget_bytes();
    if (budget > 0 && budget < state_->minimum_budget) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          absl::StrCat("no plan fits the budget of ", budget, " bytes; the smallest budget that fits is ",
                                       state_->minimum_budget, " bytes"));
    }
    v1::Plan& plan = *response->mutable_plan();
    plan.set_batch_size(request->spec().training().batch_size());
    plan.set_budget_bytes(budget);
    plan.set_predicted_peak_bytes(budget / 2);
    plan.set_exact_peak_bytes(budget);
    v1::LayerPlan& layer = *plan.add_layers();
    layer.set_path("features.0");
    layer.set_kind(v1::LayerPlan::XCONV);
    layer.set_probes(8);
    return grpc::Status::OK;
  }

  grpc::Status SubmitJob(grpc::ServerContext* context, const v1::SubmitJobRequest* request,
                         v1::SubmitJobResponse* response) override {
    ::xtrain::server::MutexLock lock(&state_->mutex);
    if (std::optional<grpc::Status> s = Enter(context, "SubmitJob")) return *s;
    state_->submits.push_back(*request);
    for (const auto& [id, job] : state_->jobs) {
      if (!request->client_request_id().empty() && job.client_request_id() == request->client_request_id()) {
        *response->mutable_job() = job;
        response->set_existing(true);
        return grpc::Status::OK;
      }
    }
    v1::Job job;
    job.set_id(absl::StrCat("job-", state_->jobs.size() + 1));
    *job.mutable_spec() = request->spec();
    job.set_state(v1::QUEUED);
    // A job whose log a test prepared takes the state that log ends in.
    for (const v1::JobEvent& event : state_->logs[job.id()]) {
      if (event.has_state()) job.set_state(event.state().to_state());
    }
    job.set_queue_position(job.state() == v1::QUEUED ? 1 : 0);
    job.set_client_request_id(request->client_request_id());
    state_->jobs[job.id()] = job;
    *response->mutable_job() = job;
    return grpc::Status::OK;
  }

  grpc::Status GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request, v1::GetJobResponse* response) override {
    ::xtrain::server::MutexLock lock(&state_->mutex);
    if (std::optional<grpc::Status> s = Enter(context, "GetJob")) return *s;
    auto it = state_->jobs.find(request->job_id());
    if (it == state_->jobs.end()) return NotFound(request->job_id());
    *response->mutable_job() = it->second;
    return grpc::Status::OK;
  }

  grpc::Status ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override {
    ::xtrain::server::MutexLock lock(&state_->mutex);
    if (std::optional<grpc::Status> s = Enter(context, "ListJobs")) return *s;
    std::vector<v1::Job> matching;
    for (const auto& [id, job] : state_->jobs) {
      if (request->states_size() > 0 &&
          std::find(request->states().begin(), request->states().end(), job.state()) == request->states().end()) {
        continue;
      }
      bool labels = true;
      for (const auto& [key, value] : request->labels()) {
        auto found = job.spec().labels().find(key);
        labels = labels && found != job.spec().labels().end() && found->second == value;
      }
      if (labels) matching.push_back(job);
    }
    size_t start = 0;
    if (!request->page_token().empty()) start = std::stoul(request->page_token());
    const size_t size = request->page_size() > 0 ? static_cast<size_t>(request->page_size()) : 50;
    for (size_t i = start; i < matching.size() && i < start + size; ++i) *response->add_jobs() = matching[i];
    if (start + size < matching.size()) response->set_next_page_token(std::to_string(start + size));
    return grpc::Status::OK;
  }

  grpc::Status CancelJob(grpc::ServerContext* context, const v1::CancelJobRequest* request,
                         v1::CancelJobResponse* response) override {
    ::xtrain::server::MutexLock lock(&state_->mutex);
    if (std::optional<grpc::Status> s = Enter(context, "CancelJob")) return *s;
    auto it = state_->jobs.find(request->job_id());
    if (it == state_->jobs.end()) return NotFound(request->job_id());
    if (Terminal(it->second.state())) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, absl::StrCat("job ", request->job_id(), " has already ended"));
    }
    it->second.set_state(v1::CANCELLED);
    *response->mutable_job() = it->second;
    return grpc::Status::OK;
  }

  grpc::Status WatchJob(grpc::ServerContext* context, const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::WatchJobResponse>* writer) override {
    int call = 0;
    {
      ::xtrain::server::MutexLock lock(&state_->mutex);
      call = state_->calls["WatchJob"];
      if (std::optional<grpc::Status> s = Enter(context, "WatchJob")) return *s;
      state_->watch_requests.push_back(*request);
      if (state_->jobs.count(request->job_id()) == 0) return NotFound(request->job_id());
    }
    int64_t next = std::max<int64_t>(1, request->from_sequence());
    int sent = 0;
    while (true) {
      v1::WatchJobResponse response;
      {
        ::xtrain::server::MutexLock lock(&state_->mutex);
        if (state_->shutting_down) {
          return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              absl::StrCat("the server is shutting down; reconnect with from_sequence = ", next));
        }
        if (context->IsCancelled()) return grpc::Status::CANCELLED;
        auto limit = state_->watch_breaks.find(call);
        if (limit != state_->watch_breaks.end() && sent >= limit->second) {
          return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the stream was dropped");
        }
        const std::vector<v1::JobEvent>& log = state_->logs[request->job_id()];
        if (next <= static_cast<int64_t>(log.size())) {
          *response.mutable_event() = log[static_cast<size_t>(next - 1)];
        } else if (state_->ended[request->job_id()]) {
          return grpc::Status::OK;
        }
      }
      if (!response.has_event()) {
        absl::SleepFor(absl::Milliseconds(5));  // wait for the test to append events
        continue;
      }
      if (!writer->Write(response)) return grpc::Status::CANCELLED;
      ++sent;
      ++next;
    }
  }

  grpc::Status DownloadArtifact(grpc::ServerContext* context, const v1::DownloadArtifactRequest* request,
                                grpc::ServerWriter<v1::DownloadArtifactResponse>* writer) override {
    int call = 0;
    v1::ArtifactInfo info;
    std::string content;
    int64_t chunk = 0;
    int breaks_after = -1;
    {
      ::xtrain::server::MutexLock lock(&state_->mutex);
      call = state_->calls["DownloadArtifact"];
      if (std::optional<grpc::Status> s = Enter(context, "DownloadArtifact")) return *s;
      state_->download_requests.push_back(*request);
      if (request->artifact_id() != state_->artifact.id()) {
        return grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat("artifact '", request->artifact_id(), "' does not exist"));
      }
      info = state_->artifact;
      content = state_->artifact_content;
      chunk = state_->download_chunk;
      if (auto it = state_->download_breaks.find(call); it != state_->download_breaks.end()) breaks_after = it->second;
    }
    int64_t offset = request->offset();
    if (offset < 0 || offset > static_cast<int64_t>(content.size())) {
      return grpc::Status(grpc::StatusCode::OUT_OF_RANGE, absl::StrCat("offset ", offset, " is outside the artifact"));
    }
    bool first = true;
    for (int chunks = 0;; ++chunks) {
      if (breaks_after >= 0 && chunks >= breaks_after) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the stream was dropped");
      std::string data = content.substr(static_cast<size_t>(offset), static_cast<size_t>(chunk));
      if (data.empty() && !first) return grpc::Status::OK;
      v1::DownloadArtifactResponse response;
      if (first) *response.mutable_info() = info;
      first = false;
      response.set_offset(offset);
      offset += static_cast<int64_t>(data.size());
      response.set_data(std::move(data));
      if (!writer->Write(response)) return grpc::Status::CANCELLED;
    }
  }

  grpc::Status UploadArtifact(grpc::ServerContext* context, grpc::ServerReader<v1::UploadArtifactRequest>* reader,
                              v1::UploadArtifactResponse* response) override {
    {
      ::xtrain::server::MutexLock lock(&state_->mutex);
      if (std::optional<grpc::Status> s = Enter(context, "UploadArtifact")) return *s;
      state_->upload_header.reset();
      state_->upload_chunks.clear();
      state_->upload_content.clear();
    }
    v1::UploadArtifactRequest request;
    std::optional<v1::UploadArtifactRequest::Header> header;
    std::string content;
    std::vector<int64_t> chunks;
    while (reader->Read(&request)) {
      if (!header) {
        if (!request.has_header()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the header comes first");
        header = request.header();
        continue;
      }
      chunks.push_back(static_cast<int64_t>(request.data().size()));
      content += request.data();
    }
    ::xtrain::server::MutexLock lock(&state_->mutex);
    state_->upload_header = header;
    state_->upload_chunks = chunks;
    state_->upload_content = content;
    if (!header) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no header");
    if (static_cast<int64_t>(content.size()) != header->size_bytes() || Sha256Hex(content) != header->sha256()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the content does not match its header");
    }
    v1::ArtifactInfo& info = *response->mutable_artifact();
    info.set_id("art-uploaded");
    info.set_name(header->name());
    info.set_kind("upload");
    info.set_size_bytes(header->size_bytes());
    info.set_sha256(header->sha256());
    return grpc::Status::OK;
  }

 private:
  // Records a call; a status when the call is to fail as configured.
  std::optional<grpc::Status> Enter(grpc::ServerContext* context, const std::string& method)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mutex) {
    ++state_->calls[method];
    auto it = context->client_metadata().find("authorization");
    state_->authorization.push_back(it == context->client_metadata().end() ? std::string()
                                                                            : std::string(it->second.data(), it->second.size()));
    int& failures = state_->unavailable[method];
    if (failures > 0) {
      --failures;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, absl::StrCat(method, " is unavailable for now"));
    }
    return std::nullopt;
  }

  static grpc::Status NotFound(const std::string& job_id) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat("job '", job_id, "' does not exist"));
  }

  std::shared_ptr<FakeState> state_;
};

std::unique_ptr<FakeServer> FakeServer::Start(std::shared_ptr<FakeState> state, int port) {
  auto server = std::unique_ptr<FakeServer>(new FakeServer());
  {
    ::xtrain::server::MutexLock lock(&state->mutex);
    state->shutting_down = false;
  }
  server->state_ = state;
  server->service_ = std::make_unique<Service>(state);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat("127.0.0.1:", port), grpc::InsecureServerCredentials(), &server->port_);
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) return nullptr;
  return server;
}

FakeServer::~FakeServer() { Stop(); }

void FakeServer::Stop() {
  if (server_ == nullptr) return;
  {
    ::xtrain::server::MutexLock lock(&state_->mutex);
    state_->shutting_down = true;
  }
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server_->Wait();
  server_.reset();
}

v1::JobEvent StateEvent(int64_t sequence, v1::JobState from, v1::JobState to, const std::string& reason) {
  v1::JobEvent event;
  event.set_sequence(sequence);
  event.mutable_state()->set_from_state(from);
  event.mutable_state()->set_to_state(to);
  event.mutable_state()->set_reason(reason);
  return event;
}

v1::JobEvent StepEvent(int64_t sequence, int64_t step, int64_t total_steps, double loss) {
  v1::JobEvent event;
  event.set_sequence(sequence);
  v1::StepMetrics& s = *event.mutable_step();
  s.set_step(step);
  s.set_total_steps(total_steps);
  s.set_epoch(1);
  s.set_loss(loss);
  s.set_samples_per_second(320);
  s.set_step_seconds(0.1);
  s.set_measured_peak_bytes(int64_t{9} << 20);
  s.set_predicted_peak_bytes(int64_t{10} << 20);
  return event;
}

}  // namespace xtrain::client::testing
