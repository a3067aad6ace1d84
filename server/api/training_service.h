#pragma once

#include <cstdint>
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

  Scheduler& scheduler_;
  WatchHub& hub_;
  JobStore& store_;
  const Authenticator& auth_;
  const TrainingServiceOptions options_;
};

}  // namespace xtrain::server
