#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "xtrain/v1/training_service.grpc.pb.h"

namespace xtrain::client::testing {

// What the fake holds and what it saw; tests set and read it under `mutex`.
struct FakeState {
  absl::Mutex mutex;
  // Jobs by id (GetJob, CancelJob) and their event logs (WatchJob). SubmitJob adds job-1, job-2, ...
  // in the state their prepared log ends in (QUEUED without one).
  std::map<std::string, xtrain::v1::Job> jobs ABSL_GUARDED_BY(mutex);
  std::map<std::string, std::vector<xtrain::v1::JobEvent>> logs ABSL_GUARDED_BY(mutex);
  // A job's log is complete (WatchJob finishes OK after its last event) once listed here.
  std::map<std::string, bool> ended ABSL_GUARDED_BY(mutex);
  // WatchJob: the n-th call (from 0) ends with UNAVAILABLE after sending this many events.
  std::map<int, int> watch_breaks ABSL_GUARDED_BY(mutex);
  // Calls to answer UNAVAILABLE before answering, by method name ("GetJob").
  std::map<std::string, int> unavailable ABSL_GUARDED_BY(mutex);
  // PlanJob refuses budgets below this with RESOURCE_EXHAUSTED.
  int64_t minimum_budget ABSL_GUARDED_BY(mutex) = 0;
  // DownloadArtifact: one artifact served in chunks; the n-th call ends with UNAVAILABLE after this
  // many chunks.
  xtrain::v1::ArtifactInfo artifact ABSL_GUARDED_BY(mutex);
  std::string artifact_content ABSL_GUARDED_BY(mutex);
  int64_t download_chunk ABSL_GUARDED_BY(mutex) = 1 << 20;
  std::map<int, int> download_breaks ABSL_GUARDED_BY(mutex);
  // Shutdown: open watches end with UNAVAILABLE, as xtrain-server's do.
  bool shutting_down ABSL_GUARDED_BY(mutex) = false;

  // Seen.
  std::vector<std::string> authorization ABSL_GUARDED_BY(mutex);  // per call, "" when absent
  std::map<std::string, int> calls ABSL_GUARDED_BY(mutex);
  std::vector<xtrain::v1::WatchJobRequest> watch_requests ABSL_GUARDED_BY(mutex);
  std::vector<xtrain::v1::DownloadArtifactRequest> download_requests ABSL_GUARDED_BY(mutex);
  std::vector<xtrain::v1::SubmitJobRequest> submits ABSL_GUARDED_BY(mutex);
  std::vector<xtrain::v1::PlanJobRequest> plans ABSL_GUARDED_BY(mutex);
  std::optional<xtrain::v1::UploadArtifactRequest::Header> upload_header ABSL_GUARDED_BY(mutex);
  std::vector<int64_t> upload_chunks ABSL_GUARDED_BY(mutex);
  std::string upload_content ABSL_GUARDED_BY(mutex);
};

// An in-process TrainingService on 127.0.0.1 standing in for xtrain-server where a test needs to
// control what the server does (drop a stream, refuse a call). The API is ours, so this is a fake at
// our own seam; the integration tests drive the real server.
class FakeServer {
 public:
  // Serves `state` on `port` (0: a free port).
  static std::unique_ptr<FakeServer> Start(std::shared_ptr<FakeState> state, int port = 0);
  ~FakeServer();

  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  // Ends open watches with UNAVAILABLE, then stops serving.
  void Stop();

 private:
  class Service;
  std::shared_ptr<FakeState> state_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

// An event of `sequence` that changes the state to `to`.
xtrain::v1::JobEvent StateEvent(int64_t sequence, xtrain::v1::JobState from, xtrain::v1::JobState to,
                                const std::string& reason = "");
// SHA-256 of `bytes`, lower-case hex (computed here, independently of the client's).
std::string Sha256Hex(const std::string& bytes);

// A step event.
xtrain::v1::JobEvent StepEvent(int64_t sequence, int64_t step, int64_t total_steps, double loss);

}  // namespace xtrain::client::testing
