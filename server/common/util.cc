#include "server/common/util.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/random.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace xtrain::server {
namespace fs = std::filesystem;

std::string HumanBytes(int64_t bytes) {
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  const double magnitude = static_cast<double>(bytes < 0 ? -bytes : bytes);
  if (magnitude < 1024) return absl::StrCat(bytes, " B");
  double value = static_cast<double>(bytes) / 1024;
  int unit = 0;
  while (unit < 3 && (value >= 1024 || value <= -1024)) {
    value /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.2f %s", value, units[unit]);
}

std::string NewId(absl::string_view prefix) {
  uint64_t value = 0;
  // getrandom never returns fewer than 8 bytes from the urandom pool once it is initialised.
  while (getrandom(&value, sizeof(value), 0) != sizeof(value)) {
  }
  return absl::StrFormat("%s%016x", prefix, value);
}

google::protobuf::Timestamp NowTimestamp() {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  const int64_t nanos = std::chrono::duration_cast<std::chrono::nanoseconds>(now).count();
  google::protobuf::Timestamp t;
  t.set_seconds(nanos / 1000000000);
  t.set_nanos(static_cast<int32_t>(nanos % 1000000000));
  return t;
}

double TimestampSeconds(const google::protobuf::Timestamp& t) {
  return static_cast<double>(t.seconds()) + static_cast<double>(t.nanos()) * 1e-9;
}

absl::StatusOr<std::string> ResolveUnderRoots(const std::vector<std::string>& roots, const std::string& path,
                                              absl::string_view field) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is empty; give a path"));
  if (roots.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " names a file but the server has no data roots; start it with --data-root"));
  }
  std::error_code error;
  const bool absolute = fs::path(path).is_absolute();
  const std::string normal = fs::path(path).lexically_normal().string();
  bool exists_somewhere = false;
  // A path that names nothing is NotFound when it would lie inside a root: a relative one, or an
  // absolute one under a root's real path (what the scheduler hands a worker, whose data may have
  // gone since the job was submitted).
  bool inside_if_it_existed = !absolute;
  for (const std::string& root : roots) {
    const fs::path real_root = fs::weakly_canonical(root, error);
    if (error) continue;
    const std::string root_text = real_root.string();
    if (absl::StartsWith(normal, absl::StrCat(root_text, "/"))) inside_if_it_existed = true;
    const fs::path candidate = absolute ? fs::path(path) : real_root / path;
    if (!fs::exists(candidate, error)) continue;
    exists_somewhere = true;
    const fs::path real = fs::canonical(candidate, error);
    if (error) continue;
    const std::string real_text = real.string();
    if (real_text == root_text || absl::StartsWith(real_text, absl::StrCat(root_text, "/"))) return real_text;
  }
  if (exists_somewhere || !inside_if_it_existed || absl::StrContains(path, "..")) {
    return absl::InvalidArgumentError(absl::StrCat(field, " '", path,
                                                   "' is outside the server's data roots; use a path inside one "
                                                   "of them (relative paths are taken from a root)"));
  }
  return absl::NotFoundError(absl::StrCat(field, " '", path, "' does not exist under any data root"));
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view content) {
  const std::string temporary = absl::StrCat(path, ".tmp.", getpid());
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot create ", temporary, ": ", std::strerror(errno)));
  size_t written = 0;
  while (written < content.size()) {
    const ssize_t n = ::write(fd, content.data() + written, content.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int saved = errno;
      ::close(fd);
      ::unlink(temporary.c_str());
      return absl::UnavailableError(absl::StrCat("cannot write ", temporary, ": ", std::strerror(saved)));
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(temporary.c_str());
    return absl::UnavailableError(absl::StrCat("cannot flush ", temporary, ": ", std::strerror(errno)));
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    const int saved = errno;
    ::unlink(temporary.c_str());
    return absl::UnavailableError(absl::StrCat("cannot rename ", temporary, " to ", path, ": ", std::strerror(saved)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

absl::Status MakeDirs(const std::string& path) {
  std::error_code error;
  fs::create_directories(path, error);
  if (error) return absl::UnavailableError(absl::StrCat("cannot create folder ", path, ": ", error.message()));
  return absl::OkStatus();
}

absl::Status RemoveAll(const std::string& path) {
  std::error_code error;
  fs::remove_all(path, error);
  if (error) return absl::UnavailableError(absl::StrCat("cannot remove ", path, ": ", error.message()));
  return absl::OkStatus();
}

namespace {

class Sha256 {
 public:
  Sha256() : context_(EVP_MD_CTX_new()) { EVP_DigestInit_ex(context_, EVP_sha256(), nullptr); }
  ~Sha256() { EVP_MD_CTX_free(context_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(const void* data, size_t size) { EVP_DigestUpdate(context_, data, size); }
  std::string Hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    EVP_DigestFinal_ex(context_, digest, &size);
    std::string hex;
    for (unsigned int i = 0; i < size; ++i) absl::StrAppendFormat(&hex, "%02x", digest[i]);
    return hex;
  }

 private:
  EVP_MD_CTX* context_;
};

}  // namespace

std::string Sha256Hex(absl::string_view bytes) {
  Sha256 hash;
  hash.Update(bytes.data(), bytes.size());
  return hash.Hex();
}

absl::StatusOr<std::string> Sha256File(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  Sha256 hash;
  char buffer[1 << 16];
  while (in) {
    in.read(buffer, sizeof(buffer));
    hash.Update(buffer, static_cast<size_t>(in.gcount()));
  }
  return hash.Hex();
}

void AppendLengthDelimited(std::string* out, int field, absl::string_view bytes) {
  auto varint = [out](uint64_t value) {
    while (value >= 0x80) {
      out->push_back(static_cast<char>(value | 0x80));
      value >>= 7;
    }
    out->push_back(static_cast<char>(value));
  };
  varint((static_cast<uint64_t>(field) << 3) | 2);  // wire type 2: length-delimited
  varint(bytes.size());
  out->append(bytes.data(), bytes.size());
}

}  // namespace xtrain::server
