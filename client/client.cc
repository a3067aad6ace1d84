#include "client/client.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <thread>
#include <utility>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <openssl/evp.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace xtrain::client {
namespace v1 = ::xtrain::v1;

namespace {

// Waits between reconnection attempts: doubling delays up to a maximum, and a verdict to give up
// once no attempt has worked for the reconnect timeout.
class Reconnector {
 public:
  explicit Reconnector(const ClientOptions& options) : options_(options), delay_(options.backoff_initial) {}

  // Something arrived: the connection works again.
  void Succeeded() {
    failing_since_.reset();
    delay_ = options_.backoff_initial;
  }
  // Sleeps before the next attempt; false when the reconnect timeout has passed.
  bool Wait() {
    const absl::Time now = absl::Now();
    if (!failing_since_) failing_since_ = now;
    const absl::Duration left = *failing_since_ + options_.reconnect_timeout - now;
    if (left <= absl::ZeroDuration()) return false;
    absl::SleepFor(std::min(delay_, left));
    delay_ = std::min(delay_ * 2, options_.backoff_max);
    return true;
  }

 private:
  const ClientOptions& options_;
  absl::Duration delay_;
  std::optional<absl::Time> failing_since_;
};

std::string ErrnoText() { return std::strerror(errno); }

// Writes all of `data` to `fd`.
absl::Status WriteAll(int fd, const std::string& data, const std::string& path) {
  size_t written = 0;
  while (written < data.size()) {
    const ssize_t n = ::write(fd, data.data() + written, data.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return absl::UnavailableError(absl::StrCat("cannot write ", path, ": ", ErrnoText()));
    written += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// A file's size and SHA-256 (lower-case hex).
struct FileDigest {
  int64_t size = 0;
  std::string sha256;
};

absl::StatusOr<FileDigest> DigestFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const std::string reason = ErrnoText();
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, " does not exist"));
    return absl::InvalidArgumentError(absl::StrCat("cannot read ", path, ": ", reason));
  }
  EVP_MD_CTX* hash = EVP_MD_CTX_new();
  EVP_DigestInit_ex(hash, EVP_sha256(), nullptr);
  FileDigest digest;
  std::string buffer(1 << 20, '\0');
  absl::Status status;
  while (true) {
    const ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      status = absl::InvalidArgumentError(absl::StrCat("cannot read ", path, ": ", ErrnoText()));
      break;
    }
    if (n == 0) break;
    EVP_DigestUpdate(hash, buffer.data(), static_cast<size_t>(n));
    digest.size += n;
  }
  unsigned char bytes[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(hash, bytes, &length);
  EVP_MD_CTX_free(hash);
  ::close(fd);
  if (!status.ok()) return status;
  for (unsigned int i = 0; i < length; ++i) absl::StrAppendFormat(&digest.sha256, "%02x", bytes[i]);
  return digest;
}

std::string BaseName(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// The size of `path`, 0 when it does not exist.
absl::StatusOr<int64_t> SizeOf(const std::string& path) {
  struct stat info;
  if (::stat(path.c_str(), &info) != 0) {
    if (errno == ENOENT) return 0;
    return absl::InvalidArgumentError(absl::StrCat("cannot read ", path, ": ", ErrnoText()));
  }
  return static_cast<int64_t>(info.st_size);
}

}  // namespace

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  // gRPC and absl share the canonical codes and their numbers.
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

namespace {

// Plaintext, or TLS from `options` (the PEM files read now: a missing one is an error here, not on the
// first call).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentialsFor(const ClientOptions& options) {
  if (!options.tls && options.tls_ca_file.empty() && options.tls_cert_file.empty() && options.tls_key_file.empty()) {
    return grpc::InsecureChannelCredentials();
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("a client certificate needs both --tls-cert and --tls-key");
  }
  auto read = [](const char* flag, const std::string& path, std::string* pem) -> absl::Status {
    if (path.empty()) return absl::OkStatus();
    std::ifstream in(path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat(flag, ": cannot read ", path));
    pem->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (pem->find("-----BEGIN ") == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " is not PEM (no -----BEGIN line)"));
    }
    return absl::OkStatus();
  };
  grpc::SslCredentialsOptions ssl;
  if (absl::Status s = read("--tls-ca", options.tls_ca_file, &ssl.pem_root_certs); !s.ok()) return s;
  if (absl::Status s = read("--tls-cert", options.tls_cert_file, &ssl.pem_cert_chain); !s.ok()) return s;
  if (absl::Status s = read("--tls-key", options.tls_key_file, &ssl.pem_private_key); !s.ok()) return s;
  return grpc::SslCredentials(ssl);
}

}  // namespace

Client::Client(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : channel_(std::move(channel)), stub_(v1::TrainingService::NewStub(channel_)), options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& target, ClientOptions options) {
  if (target.empty()) {
    return absl::InvalidArgumentError("the server address is empty; give HOST:PORT (--server or XTRAIN_SERVER)");
  }
  if (options.token.empty()) {
    if (const char* token = std::getenv("XTRAIN_TOKEN"); token != nullptr) options.token = token;
  }
  auto from_env = [](std::string& field, const char* name) {
    if (!field.empty()) return;
    if (const char* value = std::getenv(name); value != nullptr) field = value;
  };
  from_env(options.tls_ca_file, "XTRAIN_TLS_CA");
  from_env(options.tls_cert_file, "XTRAIN_TLS_CERT");
  from_env(options.tls_key_file, "XTRAIN_TLS_KEY");
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials = ChannelCredentialsFor(options);
  if (!credentials.ok()) return credentials.status();
  if (options.unary_attempts < 1) options.unary_attempts = 1;
  if (options.chunk_bytes < 1) return absl::InvalidArgumentError("ClientOptions::chunk_bytes must be positive");
  grpc::ChannelArguments args;
  // The channel's own reconnection backoff (120 s at most by default) would keep failing calls fast long
  // after a restarted server is back; cap it at ours.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, static_cast<int>(absl::ToInt64Milliseconds(options.backoff_initial)));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, static_cast<int>(absl::ToInt64Milliseconds(options.backoff_initial)));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, static_cast<int>(absl::ToInt64Milliseconds(options.backoff_max)));
  // A page of jobs with their plans may pass gRPC's 4 MiB default.
  args.SetMaxReceiveMessageSize(64 << 20);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(target, *credentials, args);
  return std::unique_ptr<Client>(new Client(std::move(channel), std::move(options)));
}

void Client::Prepare(grpc::ClientContext& context, absl::Duration timeout) const {
  if (!options_.token.empty()) context.AddMetadata("authorization", absl::StrCat("Bearer ", options_.token));
  if (timeout != absl::InfiniteDuration()) context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

template <typename Request, typename Response, typename Method>
absl::StatusOr<Response> Client::Unary(Method method, const Request& request, absl::Duration timeout,
                                       bool idempotent) {
  absl::Duration delay = options_.backoff_initial;
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext context;
    Prepare(context, timeout);
    Response response;
    const grpc::Status status = ((*stub_).*method)(&context, request, &response);
    if (status.ok()) return response;
    if (!idempotent || status.error_code() != grpc::StatusCode::UNAVAILABLE || attempt >= options_.unary_attempts) {
      return FromGrpcStatus(status);
    }
    absl::SleepFor(delay);
    delay = std::min(delay * 2, options_.backoff_max);
  }
}

absl::StatusOr<v1::PlanJobResponse> Client::PlanJob(const v1::JobSpec& spec) {
  v1::PlanJobRequest request;
  *request.mutable_spec() = spec;
  return Unary<v1::PlanJobRequest, v1::PlanJobResponse>(&v1::TrainingService::Stub::PlanJob, request,
                                                        options_.plan_timeout, true);
}

absl::StatusOr<v1::SubmitJobResponse> Client::SubmitJob(const v1::JobSpec& spec, const std::string& client_request_id) {
  v1::SubmitJobRequest request;
  *request.mutable_spec() = spec;
  request.set_client_request_id(client_request_id);
  // Without a request id a retry could queue the job twice.
  return Unary<v1::SubmitJobRequest, v1::SubmitJobResponse>(&v1::TrainingService::Stub::SubmitJob, request,
                                                            options_.plan_timeout, !client_request_id.empty());
}

absl::StatusOr<v1::Job> Client::GetJob(const std::string& job_id) {
  v1::GetJobRequest request;
  request.set_job_id(job_id);
  absl::StatusOr<v1::GetJobResponse> response = Unary<v1::GetJobRequest, v1::GetJobResponse>(
      &v1::TrainingService::Stub::GetJob, request, options_.timeout, true);
  if (!response.ok()) return response.status();
  return std::move(*response->mutable_job());
}

absl::StatusOr<v1::ListJobsResponse> Client::ListJobs(const v1::ListJobsRequest& request) {
  return Unary<v1::ListJobsRequest, v1::ListJobsResponse>(&v1::TrainingService::Stub::ListJobs, request,
                                                          options_.timeout, true);
}

absl::StatusOr<v1::Job> Client::CancelJob(const std::string& job_id) {
  v1::CancelJobRequest request;
  request.set_job_id(job_id);
  // Not retried: a repeat after a lost answer would report FAILED_PRECONDITION for a job it cancelled.
  absl::StatusOr<v1::CancelJobResponse> response = Unary<v1::CancelJobRequest, v1::CancelJobResponse>(
      &v1::TrainingService::Stub::CancelJob, request, options_.timeout, false);
  if (!response.ok()) return response.status();
  return std::move(*response->mutable_job());
}

absl::Status Client::Watch(const std::string& job_id, int64_t from_sequence, const WatchCallback& on_event) {
  int64_t next = std::max<int64_t>(from_sequence, 0);
  Reconnector reconnector(options_);
  while (true) {
    grpc::ClientContext context;
    Prepare(context, absl::InfiniteDuration());
    v1::WatchJobRequest request;
    request.set_job_id(job_id);
    request.set_from_sequence(next);
    std::unique_ptr<grpc::ClientReader<v1::WatchJobResponse>> reader = stub_->WatchJob(&context, request);
    v1::WatchJobResponse response;
    bool stopped = false;
    while (!stopped && reader->Read(&response)) {
      reconnector.Succeeded();
      const int64_t sequence = response.event().sequence();
      if (sequence < next) continue;  // seen before this reconnect
      next = sequence + 1;
      if (!on_event(response)) {
        stopped = true;
        context.TryCancel();
      }
    }
    if (stopped) {
      while (reader->Read(&response)) {
      }
      reader->Finish();
      return absl::OkStatus();
    }
    const grpc::Status status = reader->Finish();
    if (status.ok()) return absl::OkStatus();
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE) return FromGrpcStatus(status);
    if (!reconnector.Wait()) {
      return absl::UnavailableError(absl::StrCat("watching job ", job_id, ": the server has been unreachable for ",
                                                 absl::FormatDuration(options_.reconnect_timeout), " (",
                                                 status.error_message(), "); watch again from sequence ",
                                                 std::max<int64_t>(next, 1)));
    }
  }
}

absl::StatusOr<v1::ArtifactInfo> Client::Upload(const std::string& path, const std::string& name) {
  absl::StatusOr<FileDigest> digest = DigestFile(path);
  if (!digest.ok()) return digest.status();
  if (digest->size == 0) return absl::InvalidArgumentError(absl::StrCat(path, " is empty; upload a file of weights"));
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::InvalidArgumentError(absl::StrCat("cannot read ", path, ": ", ErrnoText()));

  grpc::ClientContext context;
  Prepare(context, absl::InfiniteDuration());
  v1::UploadArtifactResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::UploadArtifactRequest>> writer = stub_->UploadArtifact(&context, &response);
  v1::UploadArtifactRequest request;
  v1::UploadArtifactRequest::Header* header = request.mutable_header();
  header->set_name(name.empty() ? BaseName(path) : name);
  header->set_size_bytes(digest->size);
  header->set_sha256(digest->sha256);
  absl::Status local;
  // A failed Write means the server has ended the call; Finish says why.
  if (writer->Write(request)) {
    std::string chunk(static_cast<size_t>(options_.chunk_bytes), '\0');
    while (true) {
      const ssize_t n = ::read(fd, chunk.data(), chunk.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        local = absl::InvalidArgumentError(absl::StrCat("cannot read ", path, ": ", ErrnoText()));
        context.TryCancel();
        break;
      }
      if (n == 0) break;
      request.Clear();
      request.set_data(chunk.data(), static_cast<size_t>(n));
      if (!writer->Write(request)) break;
    }
    writer->WritesDone();
  }
  ::close(fd);
  const grpc::Status status = writer->Finish();
  if (!local.ok()) return local;
  if (!status.ok()) return FromGrpcStatus(status);
  return response.artifact();
}

absl::StatusOr<v1::ArtifactInfo> Client::Download(const std::string& artifact_id, const std::string& path) {
  const std::string partial = absl::StrCat(path, ".part");
  Reconnector reconnector(options_);
  std::optional<v1::ArtifactInfo> info;
  while (true) {
    absl::StatusOr<int64_t> offset = SizeOf(partial);
    if (!offset.ok()) return offset.status();
    const int64_t resumed_from = *offset;
    const int fd = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return absl::InvalidArgumentError(absl::StrCat("cannot write ", partial, ": ", ErrnoText()));

    grpc::ClientContext context;
    Prepare(context, absl::InfiniteDuration());
    v1::DownloadArtifactRequest request;
    request.set_artifact_id(artifact_id);
    request.set_offset(*offset);
    std::unique_ptr<grpc::ClientReader<v1::DownloadArtifactResponse>> reader = stub_->DownloadArtifact(&context, request);
    v1::DownloadArtifactResponse response;
    absl::Status local;
    while (local.ok() && reader->Read(&response)) {
      reconnector.Succeeded();
      if (response.has_info()) info = response.info();
      if (response.offset() != *offset) {
        local = absl::DataLossError(absl::StrCat("artifact ", artifact_id, ": the server sent bytes from offset ",
                                                 response.offset(), " where ", *offset, " was expected"));
        break;
      }
      local = WriteAll(fd, response.data(), partial);
      *offset += static_cast<int64_t>(response.data().size());
    }
    if (!local.ok()) {
      context.TryCancel();
      while (reader->Read(&response)) {
      }
    }
    const grpc::Status status = reader->Finish();
    if (local.ok() && ::fsync(fd) != 0) local = absl::UnavailableError(absl::StrCat("cannot write ", partial, ": ", ErrnoText()));
    ::close(fd);
    if (!local.ok()) return local;
    if (status.ok()) break;
    if (status.error_code() == grpc::StatusCode::UNAVAILABLE && reconnector.Wait()) continue;
    if (absl::StatusOr<int64_t> size = SizeOf(partial); size.ok() && *size == 0) ::unlink(partial.c_str());
    absl::Status error = FromGrpcStatus(status);
    if (status.error_code() == grpc::StatusCode::OUT_OF_RANGE && resumed_from > 0) {
      return absl::OutOfRangeError(absl::StrCat(error.message(), "; ", partial,
                                                " is not a part of this artifact: remove it to download from the start"));
    }
    return error;
  }
  if (!info) return absl::DataLossError(absl::StrCat("artifact ", artifact_id, ": the server sent no description"));
  absl::StatusOr<FileDigest> digest = DigestFile(partial);
  if (!digest.ok()) return digest.status();
  if (digest->size != info->size_bytes() || digest->sha256 != absl::AsciiStrToLower(info->sha256())) {
    ::unlink(partial.c_str());
    return absl::DataLossError(absl::StrCat("artifact ", artifact_id, ": the download has ", digest->size,
                                            " bytes with SHA-256 ", digest->sha256, " but the artifact has ",
                                            info->size_bytes(), " bytes with SHA-256 ", info->sha256(),
                                            "; the partial file was removed: download it again"));
  }
  if (::rename(partial.c_str(), path.c_str()) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot rename ", partial, " to ", path, ": ", ErrnoText()));
  }
  return *info;
}

}  // namespace xtrain::client
