#include "server/api/auth.h"

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/common/mutex.h"
#include "server/common/util.h"

namespace xtrain::server {

namespace {

bool IsSha256Hex(absl::string_view text) {
  if (text.size() != 64) return false;
  for (char c : text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c)) && (c < 'a' || c > 'f')) return false;
  }
  return true;
}

bool IsTenantName(absl::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!absl::ascii_islower(static_cast<unsigned char>(c)) && !absl::ascii_isdigit(static_cast<unsigned char>(c)) &&
        c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

}  // namespace

absl::StatusOr<TokenTable> TokenTable::Parse(absl::string_view text, absl::string_view path) {
  TokenTable table;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    if (const size_t hash = line.find('#'); hash != absl::string_view::npos) line = line.substr(0, hash);
    std::vector<absl::string_view> fields = absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (fields.empty()) continue;
    auto refuse = [&](absl::string_view what) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", number, ": ", what, "; a line is '<sha256 hex of the token> <tenant> <user|admin>'"));
    };
    if (fields.size() != 3) return refuse(absl::StrCat(fields.size(), " fields"));
    const std::string hash = absl::AsciiStrToLower(fields[0]);
    if (!IsSha256Hex(hash)) {
      return refuse(absl::StrCat("'", fields[0], "' is not a SHA-256 in hex (64 of 0-9a-f): store the token's hash, "
                                 "printf %s \"$TOKEN\" | sha256sum"));
    }
    if (!IsTenantName(fields[1])) return refuse(absl::StrCat("tenant '", fields[1], "' is not 1 to 64 of [a-z0-9_-]"));
    if (fields[2] != "user" && fields[2] != "admin") return refuse(absl::StrCat("role '", fields[2], "' is not user or admin"));
    if (!table.callers_.emplace(hash, Caller{std::string(fields[1]), fields[2] == "admin"}).second) {
      return refuse("the same token's hash is on an earlier line");
    }
  }
  return table;
}

absl::StatusOr<TokenTable> TokenTable::Load(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) {
    return absl::Status(text.status().code(), absl::StrCat("the tokens file: ", text.status().message()));
  }
  return Parse(*text, path);
}

const Caller* TokenTable::Find(absl::string_view token) const {
  auto it = callers_.find(Sha256Hex(token));
  return it == callers_.end() ? nullptr : &it->second;
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(std::string tokens_path, std::string local_tenant) {
  std::unique_ptr<Authenticator> auth(new Authenticator(std::move(tokens_path), std::move(local_tenant)));
  if (auth->enabled()) {
    absl::StatusOr<size_t> loaded = auth->Reload();
    if (!loaded.ok()) return loaded.status();
  }
  return auth;
}

absl::StatusOr<size_t> Authenticator::Reload() {
  if (!enabled()) return absl::FailedPreconditionError("no tokens file is configured (--tokens FILE)");
  absl::StatusOr<TokenTable> table = TokenTable::Load(path_);
  if (!table.ok()) return table.status();
  const size_t size = table->size();
  auto shared = std::make_shared<const TokenTable>(*std::move(table));
  MutexLock lock(&mutex_);
  table_ = std::move(shared);
  return size;
}

absl::StatusOr<Caller> Authenticator::Authenticate(const grpc::CallbackServerContext& context) const {
  if (!enabled()) return Caller{local_tenant_, /*admin=*/false};
  const auto& metadata = context.client_metadata();
  auto found = metadata.find("authorization");
  if (found == metadata.end()) {
    return absl::UnauthenticatedError(
        "no bearer token: send metadata 'authorization: Bearer <token>' (xtrainctl --token or XTRAIN_TOKEN)");
  }
  const absl::string_view value(found->second.data(), found->second.size());
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::StartsWithIgnoreCase(value, kBearer) || value.size() == kBearer.size()) {
    return absl::UnauthenticatedError("the authorization metadata is not 'Bearer <token>'");
  }
  std::shared_ptr<const TokenTable> table;
  {
    MutexLock lock(&mutex_);
    table = table_;
  }
  const Caller* caller = table->Find(value.substr(kBearer.size()));
  if (caller == nullptr) {
    return absl::UnauthenticatedError("the bearer token is not known to this server; ask its operator for one");
  }
  return *caller;
}

}  // namespace xtrain::server
