#include "server/api/server.h"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>

#include <boost/asio/post.hpp>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "server/api/grpc_metrics.h"
#include "server/common/mutex.h"
#include "server/common/util.h"
#include "spdlog/spdlog.h"

namespace xtrain::server {
namespace {

// Half of the machine's physical memory: the default capacity of the "cpu" device.
int64_t HalfOfMemory() {
  const int64_t pages = sysconf(_SC_PHYS_PAGES);
  const int64_t page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? pages * page / 2 : int64_t{4} << 30;
}

std::string DefaultWorkerPath() {
  std::error_code error;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) return "xtrain-worker";
  for (const auto& candidate : {self.parent_path() / "xtrain-worker", self.parent_path() / "worker" / "xtrain-worker"}) {
    if (std::filesystem::exists(candidate, error)) return candidate.string();
  }
  return (self.parent_path() / "xtrain-worker").string();
}

}  // namespace

Server::Server(ServerOptions options) : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options) {
  std::unique_ptr<Server> server(new Server(std::move(options)));
  if (absl::Status s = server->Initialize(); !s.ok()) return s;
  return server;
}

namespace {

// Insecure credentials, or TLS from the options' PEM files; an error names the file or the missing half.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ListeningCredentials(const ServerOptions& options) {
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key (or neither, for plaintext)");
  }
  if (options.tls_cert_file.empty()) {
    if (!options.tls_client_ca_file.empty()) {
      return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key: client certificates are TLS");
    }
    return grpc::InsecureServerCredentials();
  }
  auto read = [](const std::string& flag, const std::string& path) -> absl::StatusOr<std::string> {
    absl::StatusOr<std::string> pem = ReadFile(path);
    if (!pem.ok()) return absl::Status(pem.status().code(), absl::StrCat(flag, ": ", pem.status().message()));
    if (pem->find("-----BEGIN ") == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " is not PEM (no -----BEGIN line)"));
    }
    return pem;
  };
  grpc::SslServerCredentialsOptions ssl;
  absl::StatusOr<std::string> cert = read("--tls-cert", options.tls_cert_file);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = read("--tls-key", options.tls_key_file);
  if (!key.ok()) return key.status();
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  if (!options.tls_client_ca_file.empty()) {
    absl::StatusOr<std::string> ca = read("--tls-client-ca", options.tls_client_ca_file);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

absl::Status Server::Initialize() {
  if (options_.devices.empty()) {
    const int cores = std::max(1u, std::thread::hardware_concurrency());
    options_.devices.push_back(DeviceState{"cpu", HalfOfMemory(), std::max(1, cores / 2)});
  }
  for (const DeviceState& device : options_.devices) {
    if (device.capacity_bytes <= 0 || device.slots <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("device ", device.name, " needs a positive capacity and slot count"));
    }
  }
  if (options_.worker_path.empty()) options_.worker_path = DefaultWorkerPath();
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = ListeningCredentials(options_);
  if (!credentials.ok()) return credentials.status();
  absl::StatusOr<std::unique_ptr<Authenticator>> auth = Authenticator::Create(options_.tokens_file, "local");
  if (!auth.ok()) return auth.status();
  auth_ = *std::move(auth);
  if (options_.metrics_port < 0 || options_.metrics_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--metrics-port ", options_.metrics_port, " is not a port; use 0 to 65535"));
  }
  metrics_ = std::make_unique<Metrics>();
  metrics_->SetBuildInfo({{"version", XTRAIN_VERSION}, {"grpc_version", grpc::Version()}});
  if (absl::Status s = MakeDirs(options_.data_dir); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<JobStore>> store = OpenJobStore(options_.store_url, options_.data_dir);
  if (!store.ok()) return store.status();
  store_ = *std::move(store);
  if (options_.replica_id.empty()) {
    char host[256] = {};
    options_.replica_id = gethostname(host, sizeof(host) - 1) == 0 && host[0] != '\0' ? host : "xtrain-server";
  }

  SupervisorOptions supervision;
  supervision.worker_path = options_.worker_path;
  // Planning workers share the cores with training workers: OpenMP threads that spin while they wait
  // slow each other down (a model build took twice as long with one core busy), so idle ones sleep.
  // An OMP_WAIT_POLICY in the server's environment wins.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) supervision.worker_env["OMP_WAIT_POLICY"] = "PASSIVE";
  // Workers log at the server's level (their lines below it would be dropped here anyway).
  const spdlog::string_view_t level = spdlog::level::to_string_view(spdlog::get_level());
  supervision.worker_env["XTRAIN_LOG_LEVEL"] = std::string(level.data(), level.size());
  supervisor_ = std::make_unique<Supervisor>(io_, supervision);
  WatchHubOptions watching;
  watching.coalesce_lag = options_.watch_coalesce_events;
  watching.coalesce_age = std::chrono::microseconds(static_cast<int64_t>(options_.watch_coalesce_ms * 1000));
  watching.step_rate = options_.watch_step_rate;
  hub_ = std::make_unique<WatchHub>(*store_, watching);
  WatchHub* watch_hub = hub_.get();
  metrics_->AddCallback("xtrain_watchers", "Open WatchJob streams.", Metrics::Kind::kGauge,
                        [watch_hub] { return static_cast<double>(watch_hub->watchers()); });
  metrics_->AddCallback("xtrain_watch_events_coalesced_total",
                        "Live step events skipped for watchers that were behind (each counted in a response's coalesced).",
                        Metrics::Kind::kCounter, [watch_hub] { return static_cast<double>(watch_hub->events_coalesced()); });
  SchedulerOptions scheduling;
  scheduling.devices = options_.devices;
  scheduling.data_dir = options_.data_dir;
  scheduling.data_roots = options_.data_roots;
  scheduling.max_attempts = options_.max_attempts;
  scheduling.max_concurrent_plans = options_.max_concurrent_plans;
  scheduling.starvation_seconds = options_.starvation_seconds;
  scheduling.default_checkpoint_seconds = options_.default_checkpoint_seconds;
  scheduling.threads_per_job = options_.threads_per_job;
  scheduling.quota_queued_jobs = options_.quota_queued_jobs;
  scheduling.quota_budget_bytes = options_.quota_budget_bytes;
  scheduling.metrics = metrics_.get();
  scheduling.finished_series_seconds = options_.metrics_job_grace_seconds;
  scheduling.replica_id = store_->Shared() ? options_.replica_id : "";
  scheduling.lease_seconds = options_.lease_seconds;
  WatchHub* hub = hub_.get();
  scheduler_ = std::make_unique<Scheduler>(
      io_, *store_, *supervisor_, scheduling,
      [hub](const xtrain::v1::Job& job, const std::vector<xtrain::v1::JobEvent>& events) { hub->Publish(job, events); });
  Scheduler* scheduler = scheduler_.get();
  metrics_->AddCallback("xtrain_plan_cache_hits_total", "Plans answered from the plan cache.", Metrics::Kind::kCounter,
                        [scheduler] { return static_cast<double>(scheduler->stats().plan_cache_hits); });
  metrics_->AddCallback("xtrain_plan_cache_misses_total", "Plans that needed a planning worker.", Metrics::Kind::kCounter,
                        [scheduler] { return static_cast<double>(scheduler->stats().plan_cache_misses); });
  metrics_->AddCallback("xtrain_planning_workers", "Planning workers running.", Metrics::Kind::kGauge,
                        [scheduler] { return static_cast<double>(scheduler->stats().planning); });

  work_ = std::make_unique<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>>(io_.get_executor());
  io_thread_ = std::thread([this] { io_.run(); });
  std::promise<absl::Status> recovered;
  boost::asio::post(io_, [this, &recovered] { recovered.set_value(scheduler_->Recover()); });
  if (absl::Status s = recovered.get_future().get(); !s.ok()) return s;

  TrainingServiceOptions serving;
  serving.data_dir = options_.data_dir;
  serving.max_upload_bytes = options_.max_upload_bytes;
  serving.quota_submits_per_minute = options_.quota_submits_per_minute;
  serving.quota_watchers = options_.quota_watchers;
  serving.quota_artifact_bytes = options_.quota_artifact_bytes;
  service_ = std::make_unique<TrainingServiceImpl>(*scheduler_, *hub_, *store_, *auth_, serving);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options_.listen, *credentials, &port_);
  builder.RegisterService(service_.get());
  builder.SetMaxReceiveMessageSize(64 << 20);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<GrpcMetricsFactory>(*metrics_, GrpcMetricsFactory::ServedMethods()));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  grpc_ = builder.BuildAndStart();
  if (grpc_ == nullptr || port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options_.listen,
                                               "; is the port taken? use --listen HOST:PORT (port 0 picks a free one)"));
  }
  // /metrics on the gRPC address's host (all interfaces when it listens on all), on its own port.
  std::string host = options_.listen.substr(0, options_.listen.rfind(':'));
  if (host == "localhost") host = "127.0.0.1";  // civetweb takes addresses, not names
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
      MetricsEndpoint::Start(absl::StrCat(host.empty() ? "0.0.0.0" : host, ":", options_.metrics_port), *metrics_);
  if (!endpoint.ok()) return endpoint.status();
  metrics_endpoint_ = *std::move(endpoint);
  grpc_->GetHealthCheckService()->SetServingStatus(true);
  spdlog::info("xtrain-server listening on port {} ({}); data dir {}; worker {}", port_, options_.listen, options_.data_dir,
               options_.worker_path);
  if (store_->Shared()) {
    spdlog::info("job store: PostgreSQL, shared by replicas; this one is '{}' (lease {} s)", options_.replica_id,
                 options_.lease_seconds);
  } else {
    spdlog::info("job store: SQLite, {}/xtrain.db", options_.data_dir);
  }
  spdlog::info("metrics on port {} (http://{}:{}/metrics)", metrics_port(), host.empty() ? "0.0.0.0" : host, metrics_port());
  for (const DeviceState& device : options_.devices) {
    spdlog::info("device {}: {} for jobs, {} slot(s)", device.name, HumanBytes(device.capacity_bytes), device.slots);
  }
  if (!options_.tls_cert_file.empty()) {
    spdlog::info("TLS on with certificate {}{}", options_.tls_cert_file,
                 options_.tls_client_ca_file.empty() ? "" : absl::StrCat("; client certificates signed by ",
                                                                           options_.tls_client_ca_file, " required"));
  } else {
    spdlog::info("TLS off: plaintext gRPC (give --tls-cert and --tls-key to turn it on)");
  }
  if (auth_->enabled()) {
    spdlog::info("authentication on: bearer tokens from {} (reloaded on SIGHUP)", auth_->path());
  } else {
    spdlog::info("no tokens file configured: serving a single local tenant without authentication");
  }
  if (!options_.port_file.empty()) {
    if (absl::Status s = WriteFileAtomically(options_.port_file, absl::StrCat(port_, "\n")); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> Server::ReloadTokens() {
  absl::StatusOr<size_t> tokens = auth_->Reload();
  if (tokens.ok()) {
    spdlog::info("tokens reloaded from {}: {} token(s)", auth_->path(), *tokens);
  } else {
    spdlog::error("tokens not reloaded, the previous ones stay in force: {}", std::string(tokens.status().message()));
  }
  return tokens;
}

void Server::Wait() {
  MutexLock lock(&mutex_);
  while (!stopped_) lock.Wait(&stopped_cv_);
}

void Server::Shutdown(double grace_seconds) {
  {
    MutexLock lock(&mutex_);
    if (stopped_) return;
  }
  spdlog::info("shutting down: checkpointing running jobs (grace {} s)", grace_seconds);
  if (grpc_ != nullptr) grpc_->GetHealthCheckService()->SetServingStatus(false);
  if (scheduler_ != nullptr && io_thread_.joinable()) {
    std::promise<void> stopped;
    scheduler_->Shutdown(grace_seconds, [&stopped] { stopped.set_value(); });
    stopped.get_future().wait_for(std::chrono::duration<double>(grace_seconds + 10));
  }
  if (hub_ != nullptr) hub_->Shutdown();
  if (grpc_ != nullptr) grpc_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (io_thread_.joinable()) {
    std::promise<void> killed;
    boost::asio::post(io_, [this, &killed] {
      supervisor_->KillAll();
      killed.set_value();
    });
    killed.get_future().wait();
    work_.reset();
    io_.stop();
    io_thread_.join();
  }
  metrics_endpoint_.reset();
  grpc_.reset();
  service_.reset();
  scheduler_.reset();
  supervisor_.reset();
  hub_.reset();
  store_.reset();
  spdlog::info("xtrain-server stopped");
  MutexLock lock(&mutex_);
  stopped_ = true;
  stopped_cv_.SignalAll();
}

Server::~Server() { Shutdown(0); }

}  // namespace xtrain::server
