#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "server/api/auth.h"
#include "server/api/watch_hub.h"
#include "server/scheduler/scheduler.h"
#include "server/store/job_store.h"
#include "xtrain/v1/training_service.grpc.pb.h"

namespace xtrain::server {

struct TrainingServiceOptions {
  std::string data_dir;                       // artifacts live in <data_dir>/artifacts/
  int64_t max_upload_bytes = int64_t{2} << 30;  // UploadArtifact refuses larger uploads
  int64_t download_chunk_bytes = 1 << 20;     // DownloadArtifact message size
  // Per-tenant quotas (0: no limit): SubmitJob calls a minute (a bucket that refills at that rate),
  // open WatchJob streams, and bytes of artifacts held (checked at an upload's header).
  double quota_submits_per_minute = 0;
  int quota_watchers = 0;
  int64_t quota_artifact_bytes = 0;
};

// xtrain.v1.TrainingService on gRPC's callback API (STYLE.md): handlers validate, read or hand the
// request to the scheduler, and never block on training; every reactor finishes exactly once. WatchJob,
// GetJob and ListJobs are raw methods (serialized messages): watchers share each event's bytes
// (WatchHub), and GetJob and ListJobs send each job's bytes as its snapshot holds them, neither copied
// nor serialized per call (Scheduler::JobBytes).
class TrainingServiceImpl final
    : public xtrain::v1::TrainingService::WithRawCallbackMethod_GetJob<
          xtrain::v1::TrainingService::WithRawCallbackMethod_ListJobs<xtrain::v1::TrainingService::WithRawCallbackMethod_WatchJob<
              xtrain::v1::TrainingService::CallbackService>>> {
 public:
  // Every call is authenticated by `auth` first (UNAUTHENTICATED before anything else is looked at); a
  // caller reads and touches its tenant's jobs and artifacts only (another's are NOT_FOUND), an admin all.
  TrainingServiceImpl(Scheduler& scheduler, WatchHub& hub, JobStore& store, const Authenticator& auth,
                      TrainingServiceOptions options);

  grpc::ServerUnaryReactor* PlanJob(grpc::CallbackServerContext* context, const xtrain::v1::PlanJobRequest* request,
                                    xtrain::v1::PlanJobResponse* response) override;
  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* context, const xtrain::v1::SubmitJobRequest* request,
                                      xtrain::v1::SubmitJobResponse* response) override;
  // `request` is a serialized GetJobRequest; `response` gets a serialized GetJobResponse.
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  // `request` is a serialized ListJobsRequest; `response` gets a serialized ListJobsResponse.
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context, const xtrain::v1::CancelJobRequest* request,
                                      xtrain::v1::CancelJobResponse* response) override;
  // Streams serialized WatchJobResponses; `request` is a serialized WatchJobRequest.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* WatchJob(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerWriteReactor<xtrain::v1::DownloadArtifactResponse>* DownloadArtifact(
      grpc::CallbackServerContext* context, const xtrain::v1::DownloadArtifactRequest* request) override;
  grpc::ServerReadReactor<xtrain::v1::UploadArtifactRequest>* UploadArtifact(
      grpc::CallbackServerContext* context, xtrain::v1::UploadArtifactResponse* response) override;

 private:
  class Download;
  class Upload;
  // Who is calling, or UNAUTHENTICATED.
  absl::StatusOr<Caller> CallerOf(grpc::CallbackServerContext* context) const;
  // One submit from `tenant`'s bucket, or ResourceExhausted saying when to retry.
  absl::Status TakeSubmit(const std::string& tenant);
  // A hold on one of `tenant`'s watcher places until the returned lease is released (by the stream's
  // reactor), or ResourceExhausted at its quota.
  absl::StatusOr<std::shared_ptr<void>> LeaseWatcher(const std::string& tenant);

  Scheduler& scheduler_;
  WatchHub& hub_;
  JobStore& store_;
  const Authenticator& auth_;
  const TrainingServiceOptions options_;
  struct SubmitBucket {
    double tokens;
    std::chrono::steady_clock::time_point at;
  };
  absl::Mutex quota_mutex_;
  std::map<std::string, SubmitBucket> submit_buckets_ ABSL_GUARDED_BY(quota_mutex_);
  std::map<std::string, int> watchers_ ABSL_GUARDED_BY(quota_mutex_);
};

}  // namespace xtrain::server
