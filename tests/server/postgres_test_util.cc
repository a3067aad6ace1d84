#include "tests/server/postgres_test_util.h"

#include <glob.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "tests/server/http_client.h"

namespace xtrain::server {
namespace {

namespace fs = std::filesystem;

// The newest installed PostgreSQL's bin folder (Debian: /usr/lib/postgresql/<major>/bin), or "".
std::string PostgresBin() {
  glob_t found{};
  std::vector<std::string> dirs;
  if (glob("/usr/lib/postgresql/*/bin/initdb", 0, nullptr, &found) == 0) {
    for (size_t i = 0; i < found.gl_pathc; ++i) dirs.push_back(fs::path(found.gl_pathv[i]).parent_path().string());
  }
  globfree(&found);
  std::sort(dirs.begin(), dirs.end(), [](const std::string& a, const std::string& b) {
    return std::atoi(fs::path(a).parent_path().filename().c_str()) < std::atoi(fs::path(b).parent_path().filename().c_str());
  });
  return dirs.empty() ? "" : dirs.back();
}

// `command` as the postgres user when this process is root (PostgreSQL refuses to run as root).
std::string AsServerUser(const std::string& command) {
  return geteuid() == 0 ? absl::StrCat("runuser -u postgres -- ", command) : command;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostgresServer>> PostgresServer::Start() {
  auto server = std::unique_ptr<PostgresServer>(new PostgresServer());
  server->bin_ = PostgresBin();
  if (server->bin_.empty()) {
    return absl::FailedPreconditionError(
        "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run scripts/install-deps.sh");
  }
  std::string pattern = (fs::temp_directory_path() / "xtrain-pg-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) return absl::UnavailableError("cannot make a temporary folder");
  server->dir_ = pattern;
  if (geteuid() == 0 && std::system(absl::StrCat("chown postgres: ", server->dir_).c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot give ", server->dir_, " to the postgres user"));
  }
  // initdb's output is redirected by this process's shell; the server's log is written by the server.
  const std::string initdb_log = absl::StrCat(server->dir_, "/initdb.log");
  const std::string log = absl::StrCat(server->dir_, "/data/server.log");
  const std::string initdb = AsServerUser(absl::StrCat(
      server->bin_, "/initdb -D ", server->dir_, "/data -A trust -U xtrain -E UTF8 --no-sync >", initdb_log, " 2>&1"));
  if (std::system(initdb.c_str()) != 0) {
    std::ifstream in(initdb_log);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return absl::UnavailableError(absl::StrCat("initdb failed: ", text.substr(text.size() > 800 ? text.size() - 800 : 0)));
  }
  // A port taken between FreePort and the start is retried with another.
  for (int attempt = 0; attempt < 5 && !server->started_; ++attempt) {
    server->port_ = testing::FreePort();
    const std::string start = AsServerUser(absl::StrCat(
        server->bin_, "/pg_ctl -D ", server->dir_, "/data -l ", log, " -w -t 60 -o '-k ", server->dir_, " -p ",
        server->port_, " -c listen_addresses=127.0.0.1 -F -c max_connections=200' start >/dev/null 2>&1"));
    server->started_ = std::system(start.c_str()) == 0;
  }
  if (!server->started_) {
    std::ifstream in(log);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return absl::UnavailableError(absl::StrCat("PostgreSQL did not start; its log ends: ",
                                               text.substr(text.size() > 800 ? text.size() - 800 : 0)));
  }
  return server;
}

PostgresServer::~PostgresServer() {
  if (started_) {
    std::system(AsServerUser(absl::StrCat(bin_, "/pg_ctl -D ", dir_, "/data -m immediate -w stop >/dev/null 2>&1"))
                    .c_str());
  }
  if (!dir_.empty()) {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
}

std::string PostgresServer::Url(const std::string& database) const {
  return absl::StrCat("postgresql://xtrain@127.0.0.1:", port_, "/", database);
}

absl::StatusOr<std::string> PostgresServer::CreateDatabase(const std::string& name) {
  try {
    pqxx::connection connection(Url("postgres"));
    pqxx::nontransaction tx(connection);
    tx.exec(absl::StrCat("CREATE DATABASE ", tx.quote_name(name)));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot create database ", name, ": ", e.what()));
  }
  return Url(name);
}

namespace {
absl::StatusOr<std::unique_ptr<PostgresServer>>* shared_server = nullptr;
}  // namespace

PostgresServer* SharedPostgres(std::string* error) {
  if (shared_server == nullptr) {
    shared_server = new absl::StatusOr<std::unique_ptr<PostgresServer>>(PostgresServer::Start());
    // Stopped at exit, also after a failed test (a crash leaves it: its folder names it).
    std::atexit([] {
      delete shared_server;
      shared_server = nullptr;
    });
  }
  if (!shared_server->ok()) {
    if (error != nullptr) *error = std::string(shared_server->status().message());
    return nullptr;
  }
  return shared_server->value().get();
}

}  // namespace xtrain::server
