#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <grpcpp/channel.h>
#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "xtrain/v1/training_service.grpc.pb.h"
#include "xtrain/v1/training_service.pb.h"

namespace xtrain::client {

// How a Client talks to xtrain-server.
struct ClientOptions {
  // Sent as `authorization: Bearer <token>` on every call; empty: XTRAIN_TOKEN, if set.
  std::string token;
  // TLS: the CA certificates (PEM) the server's certificate must chain to; with a client certificate
  // and key (PEM) for a server that requires them. Any of them set (here or as XTRAIN_TLS_CA,
  // XTRAIN_TLS_CERT, XTRAIN_TLS_KEY) or `tls` turns TLS on; no CA file: the system's roots.
  bool tls = false;
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  // Deadline of GetJob, ListJobs and CancelJob.
  absl::Duration timeout = absl::Seconds(60);
  // Deadline of PlanJob and SubmitJob, which wait for a planning worker.
  absl::Duration plan_timeout = absl::Minutes(10);
  // Idempotent calls (PlanJob, SubmitJob with its request id, GetJob, ListJobs) are retried on
  // UNAVAILABLE this many times in all.
  int unary_attempts = 3;
  // Watch and Download reconnect on UNAVAILABLE with a backoff from `backoff_initial` doubling up to
  // `backoff_max`, and give up when no connection has worked for `reconnect_timeout`.
  absl::Duration backoff_initial = absl::Milliseconds(100);
  absl::Duration backoff_max = absl::Seconds(2);
  absl::Duration reconnect_timeout = absl::Minutes(2);
  // Upload's chunk size.
  int64_t chunk_bytes = int64_t{1} << 20;
};

// The one place a grpc::Status becomes an absl::Status (same canonical code, same message).
absl::Status FromGrpcStatus(const grpc::Status& status);

// A client of xtrain.v1.TrainingService (DESIGN.md §3). One method per RPC, errors as values; the
// streams add what a caller would otherwise write each time: Watch reconnects from the last event
// seen, Upload checksums and chunks a file, Download resumes a partial file and verifies it.
// Thread-safe: calls may run concurrently.
class Client {
 public:
  // A client of the server at `target` (HOST:PORT). The connection is made on the first call, so a
  // client may be created before its server is up; InvalidArgument for an empty target.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& target, ClientOptions options = {});

  absl::StatusOr<xtrain::v1::PlanJobResponse> PlanJob(const xtrain::v1::JobSpec& spec);
  // A repeat with the same `client_request_id` returns the first call's job (response.existing()).
  absl::StatusOr<xtrain::v1::SubmitJobResponse> SubmitJob(const xtrain::v1::JobSpec& spec,
                                                          const std::string& client_request_id);
  absl::StatusOr<xtrain::v1::Job> GetJob(const std::string& job_id);
  absl::StatusOr<xtrain::v1::ListJobsResponse> ListJobs(const xtrain::v1::ListJobsRequest& request);
  absl::StatusOr<xtrain::v1::Job> CancelJob(const std::string& job_id);

  // Receives one WatchJob response; returns false to stop watching.
  using WatchCallback = std::function<bool(const xtrain::v1::WatchJobResponse&)>;
  // Streams the job's events from `from_sequence` (0: the whole log) to `on_event`, reconnecting on
  // UNAVAILABLE from the last sequence seen + 1, so the callback sees each event once and in order.
  // OK after the job's last event or when `on_event` returns false; Unavailable once reconnecting has
  // failed for reconnect_timeout; other errors as the server gave them.
  absl::Status Watch(const std::string& job_id, int64_t from_sequence, const WatchCallback& on_event);

  // Uploads a file (initial weights for finetuning) under `name` (empty: the file's base name):
  // SHA-256 and size first, then the content in chunk_bytes chunks.
  absl::StatusOr<xtrain::v1::ArtifactInfo> Upload(const std::string& path, const std::string& name = "");
  // Downloads an artifact to `path`. The bytes go to `path`.part first, resuming from its size when
  // one is left from an interrupted download (also across reconnects); the file is renamed to `path`
  // once its size and SHA-256 match the artifact's. DataLoss when they do not.
  absl::StatusOr<xtrain::v1::ArtifactInfo> Download(const std::string& artifact_id, const std::string& path);

  const ClientOptions& options() const { return options_; }

 private:
  Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options);
  // A context with the token and, when `timeout` is finite, a deadline.
  void Prepare(grpc::ClientContext& context, absl::Duration timeout) const;
  // Runs a unary call, retrying UNAVAILABLE when `idempotent`.
  template <typename Request, typename Response, typename Method>
  absl::StatusOr<Response> Unary(Method method, const Request& request, absl::Duration timeout, bool idempotent);

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<xtrain::v1::TrainingService::Stub> stub_;
  const ClientOptions options_;
};

}  // namespace xtrain::client
