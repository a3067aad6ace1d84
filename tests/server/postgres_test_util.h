#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace xtrain::server {

// A PostgreSQL server of the test's own: a cluster made by initdb in a temporary folder, started on a
// free loopback port (trust authentication, user xtrain), stopped and removed with this object. Run as
// root (CI), the server runs as the `postgres` user, which PostgreSQL requires.
class PostgresServer {
 public:
  // FailedPrecondition when PostgreSQL is not installed (scripts/install-deps.sh installs it).
  static absl::StatusOr<std::unique_ptr<PostgresServer>> Start();
  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  // A URL to a new, empty database of that name (letters, digits and _ only).
  absl::StatusOr<std::string> CreateDatabase(const std::string& name);
  // The URL of a database of this server.
  std::string Url(const std::string& database) const;
  int port() const { return port_; }

 private:
  PostgresServer() = default;
  std::string bin_;   // PostgreSQL's bin folder
  std::string dir_;   // the temporary folder: data/ and the socket
  int port_ = 0;
  bool started_ = false;
};

// The process's PostgreSQL server, started at the first call and stopped at exit; null (the status in
// `error`) when it cannot start.
PostgresServer* SharedPostgres(std::string* error = nullptr);

}  // namespace xtrain::server
