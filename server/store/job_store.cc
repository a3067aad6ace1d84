#include "server/store/job_store.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace xtrain::server {
namespace {

absl::Status NotShared(absl::string_view what) {
  return absl::UnimplementedError(
      absl::StrCat(what, " needs a store several servers share (--store-url postgresql://...)"));
}

}  // namespace

absl::Status JobStore::Heartbeat(absl::string_view, double) { return NotShared("a replica lease"); }

absl::StatusOr<std::vector<xtrain::v1::Job>> JobStore::ClaimJobs(absl::string_view, int, absl::string_view) {
  return NotShared("claiming jobs");
}

absl::StatusOr<std::vector<xtrain::v1::Job>> JobStore::RequeueOrphans() { return NotShared("re-queueing a replica's jobs"); }

absl::StatusOr<xtrain::v1::Job> JobStore::ReadJob(absl::string_view) { return NotShared("reading one job"); }

absl::Status JobStore::RequestCancel(absl::string_view) { return NotShared("a cancel for another replica"); }

void JobStore::Listen(std::function<void(const JobChange&)>) {}

absl::StatusOr<std::unique_ptr<JobStore>> OpenJobStore(const std::string& url, const std::string& data_dir) {
  if (url.empty()) return OpenSqliteJobStore(absl::StrCat(data_dir, "/xtrain.db"));
  if (absl::StartsWith(url, "postgresql://") || absl::StartsWith(url, "postgres://")) {
    return OpenPostgresJobStore(url);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--store-url '", url.substr(0, url.find(':')),
                   ":...' is not a store this server knows: give postgresql://user:password@host:5432/database, "
                   "or leave it empty for the SQLite file under --data-dir"));
}

}  // namespace xtrain::server
