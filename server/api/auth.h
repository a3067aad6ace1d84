#pragma once

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace xtrain::server {

// Who is calling: a tenant, and whether it may see and touch every tenant's jobs and artifacts.
struct Caller {
  std::string tenant;
  bool admin = false;

  // The tenant whose jobs and artifacts it reads: its own, or "" (all of them) for an admin.
  std::string ReadScope() const { return admin ? std::string() : tenant; }
  // Whether it may read or touch what belongs to `owner`.
  bool Owns(absl::string_view owner) const { return admin || owner == tenant; }
};

// A tokens file: one token a line, as `<sha256 hex of the token> <tenant> <user|admin>`; blank lines and
// `#` comments are skipped. The file holds hashes only, so reading it gives no one a token
// (`printf %s "$TOKEN" | sha256sum` makes a line's first field). Tenants are 1 to 64 of [a-z0-9_-].
class TokenTable {
 public:
  // The table in `text`; InvalidArgument naming `path` and the line for anything malformed.
  static absl::StatusOr<TokenTable> Parse(absl::string_view text, absl::string_view path);
  static absl::StatusOr<TokenTable> Load(const std::string& path);

  // The caller a presented bearer token stands for; nullptr when it is not in the table.
  const Caller* Find(absl::string_view token) const;
  size_t size() const { return callers_.size(); }

 private:
  absl::flat_hash_map<std::string, Caller> callers_;  // by the token's SHA-256, hex
};

// The server's authentication: off without a tokens file (every caller is the user `local_tenant`, so
// jobs that other tenants left in the store stay hidden), else each call's `authorization: Bearer
// <token>` metadata must be in the file.
// Reload (SIGHUP) swaps the table only when the new file parses: a bad edit keeps the old one.
class Authenticator {
 public:
  // Loads `tokens_path` if not empty (an error stops the server at start).
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(std::string tokens_path, std::string local_tenant);

  bool enabled() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  // The caller of a call, or UNAUTHENTICATED with a sentence that says what to send.
  absl::StatusOr<Caller> Authenticate(const grpc::CallbackServerContext& context) const;
  // Rereads the tokens file; the number of tokens now in force.
  absl::StatusOr<size_t> Reload();

 private:
  Authenticator(std::string path, std::string local_tenant) : path_(std::move(path)), local_tenant_(std::move(local_tenant)) {}

  const std::string path_;
  const std::string local_tenant_;
  mutable absl::Mutex mutex_;
  std::shared_ptr<const TokenTable> table_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace xtrain::server
