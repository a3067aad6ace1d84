#include "server/api/training_service.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <utility>

#include <openssl/evp.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "server/api/spec_validation.h"
#include "server/api/status.h"
#include "server/common/mutex.h"
#include "server/common/util.h"

namespace xtrain::server {
namespace v1 = ::xtrain::v1;

namespace {

void FinishWith(grpc::ServerUnaryReactor* reactor, const absl::Status& status) { reactor->Finish(ToGrpcStatus(status)); }

bool IsHexSha256(const std::string& text) {
  if (text.size() != 64) return false;
  for (char c : text) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// A raw request's message, or InvalidArgument.
template <typename Message>
absl::StatusOr<Message> Parse(const grpc::ByteBuffer& bytes) {
  Message message;
  grpc::ByteBuffer copy(bytes);  // Deserialize consumes its buffer; the copy shares the slices
  if (!grpc::SerializationTraits<Message>::Deserialize(&copy, &message).ok()) {
    return absl::InvalidArgumentError(absl::StrCat("the ", Message::descriptor()->name(), " does not parse"));
  }
  return message;
}

// `bytes` as a slice that refers to them, keeping them alive until gRPC lets go: no copy.
grpc::Slice SharedSlice(std::shared_ptr<const std::string> bytes) {
  auto* holder = new std::shared_ptr<const std::string>(std::move(bytes));
  return grpc::Slice(const_cast<char*>((*holder)->data()), (*holder)->size(),
                     [](void* held) { delete static_cast<std::shared_ptr<const std::string>*>(held); }, holder);
}

}  // namespace

TrainingServiceImpl::TrainingServiceImpl(Scheduler& scheduler, WatchHub& hub, JobStore& store, const Authenticator& auth,
                                         TrainingServiceOptions options)
    : scheduler_(scheduler), hub_(hub), store_(store), auth_(auth), options_(std::move(options)) {}

absl::StatusOr<Caller> TrainingServiceImpl::CallerOf(grpc::CallbackServerContext* context) const {
  return auth_.Authenticate(*context);
}

absl::Status TrainingServiceImpl::TakeSubmit(const std::string& tenant) {
  const double rate = options_.quota_submits_per_minute;
  if (rate <= 0) return absl::OkStatus();
  const auto now = std::chrono::steady_clock::now();
  MutexLock lock(&quota_mutex_);
  // A token bucket of `rate` submits, refilled at rate a minute: bursts up to a minute's worth.
  auto [it, fresh] = submit_buckets_.try_emplace(tenant, SubmitBucket{rate, now});
  SubmitBucket& bucket = it->second;
  if (!fresh) {
    const double minutes = std::chrono::duration<double>(now - bucket.at).count() / 60;
    bucket.tokens = std::min(rate, bucket.tokens + minutes * rate);
    bucket.at = now;
  }
  if (bucket.tokens < 1) {
    const double wait_s = (1 - bucket.tokens) * 60 / rate;
    return absl::ResourceExhaustedError(absl::StrFormat(
        "tenant '%s' submitted more than %g jobs in a minute, its quota (--quota-submits-per-minute); retry in %.1f s",
        tenant, rate, wait_s));
  }
  bucket.tokens -= 1;
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<void>> TrainingServiceImpl::LeaseWatcher(const std::string& tenant) {
  const int quota = options_.quota_watchers;
  if (quota <= 0) return std::shared_ptr<void>();
  {
    MutexLock lock(&quota_mutex_);
    int& watching = watchers_[tenant];
    if (watching >= quota) {
      return absl::ResourceExhaustedError(absl::StrCat("tenant '", tenant, "' has ", watching,
                                                       " open WatchJob streams, its quota (--quota-watchers); close one "
                                                       "first"));
    }
    ++watching;
  }
  // Released when the stream's reactor is gone.
  return std::shared_ptr<void>(nullptr, [this, tenant](void*) {
    MutexLock lock(&quota_mutex_);
    --watchers_[tenant];
  });
}

grpc::ServerUnaryReactor* TrainingServiceImpl::PlanJob(grpc::CallbackServerContext* context,
                                                       const v1::PlanJobRequest* request, v1::PlanJobResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = CallerOf(context);
  if (!caller.ok()) {
    FinishWith(reactor, caller.status());
    return reactor;
  }
  if (absl::Status s = ValidateJobSpec(request->spec()); !s.ok()) {
    FinishWith(reactor, s);
    return reactor;
  }
  scheduler_.Plan(caller->tenant, request->spec(), [reactor, response](absl::StatusOr<v1::PlanJobResponse> result) {
    if (result.ok()) *response = *std::move(result);
    FinishWith(reactor, result.status());
  });
  return reactor;
}

grpc::ServerUnaryReactor* TrainingServiceImpl::SubmitJob(grpc::CallbackServerContext* context,
                                                         const v1::SubmitJobRequest* request,
                                                         v1::SubmitJobResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = CallerOf(context);
  if (!caller.ok()) {
    FinishWith(reactor, caller.status());
    return reactor;
  }
  if (absl::Status s = ValidateJobSpec(request->spec()); !s.ok()) {
    FinishWith(reactor, s);
    return reactor;
  }
  if (absl::Status s = TakeSubmit(caller->tenant); !s.ok()) {
    FinishWith(reactor, s);
    return reactor;
  }
  if (request->client_request_id().size() > 128) {
    FinishWith(reactor, absl::InvalidArgumentError("client_request_id is longer than 128 characters; shorten it"));
    return reactor;
  }
  scheduler_.Submit(caller->tenant, *request, [reactor, response](absl::StatusOr<v1::SubmitJobResponse> result) {
    if (result.ok()) *response = *std::move(result);
    FinishWith(reactor, result.status());
  });
  return reactor;
}

grpc::ServerUnaryReactor* TrainingServiceImpl::GetJob(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request_bytes, grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = CallerOf(context);
  if (!caller.ok()) {
    FinishWith(reactor, caller.status());
    return reactor;
  }
  absl::StatusOr<v1::GetJobRequest> request = Parse<v1::GetJobRequest>(*request_bytes);
  if (!request.ok()) {
    FinishWith(reactor, request.status());
    return reactor;
  }
  // A GetJobResponse is its job as field 1, the very bytes of a ListJobsResponse `jobs` element.
  static_assert(static_cast<int>(v1::GetJobResponse::kJobFieldNumber) ==
                static_cast<int>(v1::ListJobsResponse::kJobsFieldNumber));
  absl::StatusOr<std::shared_ptr<const std::string>> entry = scheduler_.JobBytes(caller->ReadScope(), request->job_id());
  if (entry.ok()) {
    grpc::Slice slice = SharedSlice(*std::move(entry));
    *response = grpc::ByteBuffer(&slice, 1);
  }
  FinishWith(reactor, entry.status());
  return reactor;
}

grpc::ServerUnaryReactor* TrainingServiceImpl::ListJobs(grpc::CallbackServerContext* context,
                                                        const grpc::ByteBuffer* request_bytes,
                                                        grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = CallerOf(context);
  if (!caller.ok()) {
    FinishWith(reactor, caller.status());
    return reactor;
  }
  absl::StatusOr<v1::ListJobsRequest> request = Parse<v1::ListJobsRequest>(*request_bytes);
  if (!request.ok()) {
    FinishWith(reactor, request.status());
    return reactor;
  }
  absl::StatusOr<Scheduler::ListedJobs> listed = scheduler_.ListJobs(caller->ReadScope(), *request);
  if (listed.ok()) {
    // The entries as they are, one slice each, then the page token: the response's bytes, uncopied.
    std::vector<grpc::Slice> slices;
    slices.reserve(listed->entries.size() + 1);
    for (std::shared_ptr<const std::string>& entry : listed->entries) slices.push_back(SharedSlice(std::move(entry)));
    if (const std::string tail = listed->Tail(); !tail.empty()) slices.emplace_back(tail);
    *response = grpc::ByteBuffer(slices.data(), slices.size());
  }
  FinishWith(reactor, listed.status());
  return reactor;
}

grpc::ServerUnaryReactor* TrainingServiceImpl::CancelJob(grpc::CallbackServerContext* context,
                                                         const v1::CancelJobRequest* request,
                                                         v1::CancelJobResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = CallerOf(context);
  if (!caller.ok()) {
    FinishWith(reactor, caller.status());
    return reactor;
  }
  scheduler_.Cancel(caller->ReadScope(), request->job_id(), [reactor, response](absl::StatusOr<v1::Job> job) {
    if (job.ok()) *response->mutable_job() = *std::move(job);
    FinishWith(reactor, job.status());
  });
  return reactor;
}

namespace {

// A stream that finishes at once with `status`.
template <typename Response>
class FailedWrite : public grpc::ServerWriteReactor<Response> {
 public:
  explicit FailedWrite(const absl::Status& status) { this->Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};
// A client stream refused before its first message.
template <typename Request>
class FailedRead : public grpc::ServerReadReactor<Request> {
 public:
  explicit FailedRead(const absl::Status& status) { this->Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerWriteReactor<grpc::ByteBuffer>* TrainingServiceImpl::WatchJob(grpc::CallbackServerContext* context,
                                                                          const grpc::ByteBuffer* request_bytes) {
  absl::StatusOr<Caller> caller = CallerOf(context);
  if (!caller.ok()) return new FailedWrite<grpc::ByteBuffer>(caller.status());
  absl::StatusOr<v1::WatchJobRequest> parsed = Parse<v1::WatchJobRequest>(*request_bytes);
  if (!parsed.ok()) return new FailedWrite<grpc::ByteBuffer>(parsed.status());
  const v1::WatchJobRequest& request = *parsed;
  absl::StatusOr<std::shared_ptr<const v1::Job>> job = scheduler_.JobSnapshot(caller->ReadScope(), request.job_id());
  if (!job.ok()) return new FailedWrite<grpc::ByteBuffer>(job.status());
  if (request.from_sequence() < 0) {
    return new FailedWrite<grpc::ByteBuffer>(absl::InvalidArgumentError(
        absl::StrCat("from_sequence is ", request.from_sequence(), "; use 0 (the whole log) or a sequence number")));
  }
  absl::StatusOr<std::shared_ptr<void>> lease = LeaseWatcher(caller->tenant);
  if (!lease.ok()) return new FailedWrite<grpc::ByteBuffer>(lease.status());
  return hub_.Watch(request.job_id(), (*job)->tenant(), request.from_sequence(), *std::move(lease));
}

// Streams an artifact's file from an offset, one chunk in flight.
class TrainingServiceImpl::Download : public grpc::ServerWriteReactor<v1::DownloadArtifactResponse> {
 public:
  Download(ArtifactRecord record, const std::string& path, int64_t offset, int64_t chunk)
      : record_(std::move(record)), offset_(offset), chunk_(chunk) {
    in_.open(path, std::ios::binary);
    if (!in_) {
      End(ToGrpcStatus(absl::DataLossError(absl::StrCat("artifact ", record_.info.id(), "'s file is missing"))));
      return;
    }
    in_.seekg(offset_);
    first_ = true;
    Next();
  }
  // gRPC runs the reactions on its own threads (HandOver / TakeOver: mutex.h).
  void OnWriteDone(bool ok) override {
    TakeOver(this);
    if (!ok) return End(grpc::Status::CANCELLED);
    Next();
  }
  void OnDone() override {
    TakeOver(this);
    delete this;
  }

 private:
  void End(const grpc::Status& status) {
    HandOver(this);
    Finish(status);
  }
  void Next() {
    response_.Clear();
    if (first_) *response_.mutable_info() = record_.info;
    std::string data(static_cast<size_t>(chunk_), '\0');
    in_.read(data.data(), chunk_);
    data.resize(static_cast<size_t>(in_.gcount()));
    if (data.empty() && !first_) return End(grpc::Status::OK);
    first_ = false;
    response_.set_offset(offset_);
    offset_ += static_cast<int64_t>(data.size());
    response_.set_data(std::move(data));
    HandOver(this);
    StartWrite(&response_);
  }

  ArtifactRecord record_;
  std::ifstream in_;
  int64_t offset_;
  const int64_t chunk_;
  bool first_ = true;
  v1::DownloadArtifactResponse response_;
};

grpc::ServerWriteReactor<v1::DownloadArtifactResponse>* TrainingServiceImpl::DownloadArtifact(
    grpc::CallbackServerContext* context, const v1::DownloadArtifactRequest* request) {
  absl::StatusOr<Caller> caller = CallerOf(context);
  if (!caller.ok()) return new FailedWrite<v1::DownloadArtifactResponse>(caller.status());
  absl::StatusOr<ArtifactRecord> record = store_.GetArtifact(request->artifact_id());
  // Another tenant's artifact is NOT_FOUND like a missing one: ids tell nothing.
  if (!record.ok() || !caller->Owns(record->tenant)) {
    return new FailedWrite<v1::DownloadArtifactResponse>(
        absl::NotFoundError(absl::StrCat("artifact '", request->artifact_id(), "' does not exist")));
  }
  if (request->offset() < 0 || request->offset() > record->info.size_bytes()) {
    return new FailedWrite<v1::DownloadArtifactResponse>(absl::OutOfRangeError(
        absl::StrCat("offset ", request->offset(), " is outside artifact ", request->artifact_id(), " of ",
                     record->info.size_bytes(), " bytes; resume from 0 to its size")));
  }
  return new Download(*record, absl::StrCat(options_.data_dir, "/", record->path), request->offset(),
                      options_.download_chunk_bytes);
}

// Receives an upload into a temporary file, then checks size and checksum and records it.
class TrainingServiceImpl::Upload : public grpc::ServerReadReactor<v1::UploadArtifactRequest> {
 public:
  Upload(TrainingServiceImpl& service, std::string tenant, v1::UploadArtifactResponse* response)
      : service_(service), tenant_(std::move(tenant)), response_(response), hash_(EVP_MD_CTX_new()) {
    EVP_DigestInit_ex(hash_, EVP_sha256(), nullptr);
    id_ = NewId("art-");
    relative_ = absl::StrCat("artifacts/", id_);
    final_path_ = absl::StrCat(service_.options_.data_dir, "/", relative_);
    temporary_ = absl::StrCat(final_path_, ".part");
    HandOver(this);
    StartRead(&request_);
  }
  // Runs in OnDone, after TakeOver.
  ~Upload() override {
    EVP_MD_CTX_free(hash_);
    if (fd_ >= 0) ::close(fd_);
    if (!kept_) ::unlink(temporary_.c_str());
  }

  // gRPC runs the reactions on its own threads (HandOver / TakeOver: mutex.h).
  void OnReadDone(bool ok) override {
    TakeOver(this);
    if (!ok) return Complete();
    if (absl::Status s = Take(); !s.ok()) return Fail(s);
    HandOver(this);
    StartRead(&request_);
  }
  void OnDone() override {
    TakeOver(this);
    delete this;
  }

 private:
  absl::Status Take() {
    if (!header_) {
      if (!request_.has_header()) {
        return absl::InvalidArgumentError("the first UploadArtifact message must be the header (name, size, sha256)");
      }
      const auto& header = request_.header();
      if (header.size_bytes() <= 0 || header.size_bytes() > service_.options_.max_upload_bytes) {
        return absl::InvalidArgumentError(absl::StrCat("header.size_bytes is ", header.size_bytes(), "; uploads must be 1 to ",
                                                       service_.options_.max_upload_bytes, " bytes"));
      }
      if (!IsHexSha256(absl::AsciiStrToLower(header.sha256()))) {
        return absl::InvalidArgumentError("header.sha256 must be the 64 hex digits of the content's SHA-256");
      }
      if (header.name().size() > 256) return absl::InvalidArgumentError("header.name is longer than 256 characters");
      if (const int64_t quota = service_.options_.quota_artifact_bytes; quota > 0) {
        absl::StatusOr<int64_t> used = service_.store_.TenantArtifactBytes(tenant_);
        if (!used.ok()) return used.status();
        if (*used + header.size_bytes() > quota) {
          return absl::ResourceExhaustedError(absl::StrCat(
              "tenant '", tenant_, "' holds ", HumanBytes(*used), " of artifacts; ", HumanBytes(header.size_bytes()),
              " more would pass its quota of ", HumanBytes(quota), " (--quota-artifact-bytes)"));
        }
      }
      header_ = header;
      if (absl::Status s = MakeDirs(absl::StrCat(service_.options_.data_dir, "/artifacts")); !s.ok()) return s;
      fd_ = ::open(temporary_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      if (fd_ < 0) return absl::UnavailableError(absl::StrCat("cannot store the upload: ", std::strerror(errno)));
      return absl::OkStatus();
    }
    if (!request_.has_data() && request_.has_header()) {
      return absl::InvalidArgumentError("UploadArtifact got a second header; send the header once, then data");
    }
    const std::string& data = request_.data();
    received_ += static_cast<int64_t>(data.size());
    if (received_ > header_->size_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat("the upload is longer than its header's size_bytes (",
                                                     header_->size_bytes(), "); send exactly that many bytes"));
    }
    EVP_DigestUpdate(hash_, data.data(), data.size());
    size_t written = 0;
    while (written < data.size()) {
      const ssize_t n = ::write(fd_, data.data() + written, data.size() - written);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return absl::UnavailableError(absl::StrCat("cannot store the upload: ", std::strerror(errno)));
      written += static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  void Complete() {
    if (!header_) return Fail(absl::InvalidArgumentError("the upload ended before its header; send the header first"));
    if (received_ != header_->size_bytes()) {
      return Fail(absl::InvalidArgumentError(absl::StrCat("the upload ended after ", received_, " of ", header_->size_bytes(),
                                                          " bytes; it was truncated: upload it again")));
    }
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    EVP_DigestFinal_ex(hash_, digest, &size);
    std::string hex;
    for (unsigned int i = 0; i < size; ++i) absl::StrAppendFormat(&hex, "%02x", digest[i]);
    if (hex != absl::AsciiStrToLower(header_->sha256())) {
      return Fail(absl::InvalidArgumentError(absl::StrCat("the upload's SHA-256 is ", hex, " but the header says ",
                                                          header_->sha256(), "; the content was corrupted: upload it again")));
    }
    if (::fsync(fd_) != 0 || ::close(fd_) != 0) {
      fd_ = -1;
      return Fail(absl::UnavailableError(absl::StrCat("cannot store the upload: ", std::strerror(errno))));
    }
    fd_ = -1;
    if (::rename(temporary_.c_str(), final_path_.c_str()) != 0) {
      return Fail(absl::UnavailableError(absl::StrCat("cannot store the upload: ", std::strerror(errno))));
    }
    kept_ = true;
    ArtifactRecord record;
    record.tenant = tenant_;
    record.path = relative_;
    record.info.set_id(id_);
    record.info.set_name(header_->name());
    record.info.set_kind("upload");
    record.info.set_size_bytes(received_);
    record.info.set_sha256(hex);
    *record.info.mutable_create_time() = NowTimestamp();
    if (absl::Status s = service_.store_.PutArtifact(record); !s.ok()) {
      ::unlink(final_path_.c_str());
      return Fail(s);
    }
    *response_->mutable_artifact() = record.info;
    HandOver(this);
    Finish(grpc::Status::OK);
  }

  void Fail(const absl::Status& status) {
    HandOver(this);
    Finish(ToGrpcStatus(status));
  }

  TrainingServiceImpl& service_;
  const std::string tenant_;
  v1::UploadArtifactResponse* response_;
  v1::UploadArtifactRequest request_;
  std::optional<v1::UploadArtifactRequest::Header> header_;
  EVP_MD_CTX* hash_;
  std::string id_, relative_, final_path_, temporary_;
  int fd_ = -1;
  int64_t received_ = 0;
  bool kept_ = false;
};

grpc::ServerReadReactor<v1::UploadArtifactRequest>* TrainingServiceImpl::UploadArtifact(
    grpc::CallbackServerContext* context, v1::UploadArtifactResponse* response) {
  absl::StatusOr<Caller> caller = CallerOf(context);
  if (!caller.ok()) return new FailedRead<v1::UploadArtifactRequest>(caller.status());
  return new Upload(*this, caller->tenant, response);
}

}  // namespace xtrain::server
