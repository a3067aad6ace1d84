#include "core/data/file_bytes.h"

#include <zlib.h>

#include <cerrno>
#include <cstdint>
#include <fstream>
#include <iterator>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace xtrain::core {
namespace {

// Inflates every gzip member of `compressed` (gzip allows several back to back).
absl::StatusOr<std::string> Gunzip(const std::string& path, const std::string& compressed) {
  if (compressed.size() > UINT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": gzip files over 4 GiB are not supported"));
  }
  std::string out;
  z_stream stream{};
  // 15 + 16: a gzip wrapper with the largest window.
  if (inflateInit2(&stream, 15 + 16) != Z_OK) {
    return absl::InternalError(absl::StrCat(path, ": zlib inflateInit2 failed"));
  }
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
  stream.avail_in = static_cast<uInt>(compressed.size());
  char chunk[1 << 16];
  int rc = Z_OK;
  while (true) {
    stream.next_out = reinterpret_cast<Bytef*>(chunk);
    stream.avail_out = sizeof(chunk);
    rc = inflate(&stream, Z_NO_FLUSH);
    out.append(chunk, sizeof(chunk) - stream.avail_out);
    if (rc == Z_STREAM_END) {
      if (stream.avail_in == 0) break;
      inflateReset(&stream);  // another member follows
      continue;
    }
    if (rc != Z_OK) break;
  }
  const char* message = stream.msg;
  inflateEnd(&stream);
  if (rc == Z_STREAM_END) return out;
  if (rc == Z_BUF_ERROR) {
    return absl::DataLossError(absl::StrCat(path, ": gzip stream ends early after ", out.size(),
                                            " decompressed bytes (file truncated?)"));
  }
  return absl::DataLossError(
      absl::StrCat(path, ": corrupt gzip stream (", message ? message : "zlib error", ")"));
}

}  // namespace

bool HasGzipMagic(const std::string& bytes) {
  return bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x1f &&
         static_cast<unsigned char>(bytes[1]) == 0x8b;
}

absl::StatusOr<std::string> ReadFileBytes(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  if (HasGzipMagic(bytes)) return Gunzip(path, bytes);
  return bytes;
}

}  // namespace xtrain::core
