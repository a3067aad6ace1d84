#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/api/training_service.h"
#include "server/api/watch_hub.h"
#include "server/metrics/metrics.h"
#include "server/scheduler/scheduler.h"
#include "server/store/job_store.h"
#include "server/supervisor/supervisor.h"

namespace xtrain::server {

// Everything xtrain-server is configured with (flags, YAML, XTRAIN_* variables: server_config.h).
struct ServerOptions {
  std::string listen = "127.0.0.1:50051";   // HOST:PORT; port 0 picks a free port (logged, port())
  std::string data_dir = "xtrain-data";      // the SQLite store, checkpoints, weights, uploads
  // The job store: empty, the SQLite file under data_dir; a postgresql:// URL, the database several
  // replicas share (data_dir then on a volume they all mount).
  std::string store_url;
  std::string replica_id;                    // this replica's name; empty: the host name
  double lease_seconds = 10;                 // a replica silent this long is taken for dead
  std::vector<std::string> data_roots = {"/usr/share/datasets"};  // where dataset and weight paths may point
  std::vector<DeviceState> devices;          // empty: one "cpu" device (half the machine's memory, 1 slot)
  std::string worker_path;                   // xtrain-worker; empty: next to this executable
  double grace_seconds = 25;                 // SIGTERM: checkpoint and stop within this (Kubernetes: 30)
  int max_attempts = 3;
  int max_concurrent_plans = 2;
  double starvation_seconds = 600;
  double default_checkpoint_seconds = 180;
  int threads_per_job = 0;
  int64_t max_upload_bytes = int64_t{2} << 30;
  std::string port_file;                     // if set, the bound port is written here once serving
  // Prometheus /metrics on the --listen host at this port; 0 picks a free port (logged, metrics_port()).
  int metrics_port = 9464;
  // A stopped job's per-job metric series (labelled job_id) stay this long (a last scrape sees its end),
  // then go.
  double metrics_job_grace_seconds = 120;
  int watch_coalesce_events = 16;            // WatchHubOptions::coalesce_lag
  double watch_coalesce_ms = 50;             // WatchHubOptions::coalesce_age; 0: off
  // WatchHubOptions::step_rate; 0: no limit. The default kept the fan-out to half a core of the 2-core
  // machine it was measured on, with 10,000 watchers each getting a step a second (docs/service.md).
  double watch_step_rate = 10000;
  // Bearer tokens of the tenants (TokenTable's format); empty: no authentication, one local tenant.
  std::string tokens_file;
  // TLS: the server's certificate chain and key (PEM), both or neither; with `tls_client_ca` too, a
  // client must present a certificate that CA signed.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  // Per-tenant quotas, 0: no limit (SchedulerOptions and TrainingServiceOptions say what each counts).
  int quota_queued_jobs = 0;
  int64_t quota_budget_bytes = 0;
  double quota_submits_per_minute = 0;
  int quota_watchers = 0;
  int64_t quota_artifact_bytes = 0;
};

// One xtrain-server: the store, the supervisor and scheduler on their own Asio thread, the watch hub and
// the gRPC service with health checking and reflection. Start() returns once it serves; Shutdown()
// stops admitting, checkpoints running jobs, ends streams and stops (DESIGN.md §3).
class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerOptions options);
  ~Server();  // Shutdown(0) if still serving
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int port() const { return port_; }
  // The port /metrics is served on.
  int metrics_port() const { return metrics_endpoint_ != nullptr ? metrics_endpoint_->port() : 0; }
  // Blocks until Shutdown has finished.
  void Wait();
  // Graceful stop within grace_seconds: running jobs checkpoint and go back to the queue.
  void Shutdown(double grace_seconds);

  // Rereads the tokens file (SIGHUP); on an error the previous tokens stay in force.
  absl::StatusOr<size_t> ReloadTokens();

  Scheduler& scheduler() { return *scheduler_; }
  Metrics& metrics() { return *metrics_; }
  WatchHub& hub() { return *hub_; }
  const ServerOptions& options() const { return options_; }

 private:
  explicit Server(ServerOptions options);
  absl::Status Initialize();

  ServerOptions options_;
  int port_ = 0;
  boost::asio::io_context io_;
  std::unique_ptr<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;
  std::thread io_thread_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<MetricsEndpoint> metrics_endpoint_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<Supervisor> supervisor_;
  std::unique_ptr<WatchHub> hub_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<TrainingServiceImpl> service_;
  std::unique_ptr<grpc::Server> grpc_;
  absl::Mutex mutex_;
  bool stopped_ ABSL_GUARDED_BY(mutex_) = false;
  absl::CondVar stopped_cv_;
};

}  // namespace xtrain::server
