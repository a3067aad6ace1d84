#include "core/train/archive_check.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace xtrain::core {
namespace {

constexpr uint32_t kLocalHeader = 0x04034b50;
constexpr uint32_t kCentralHeader = 0x02014b50;
constexpr uint32_t kEndOfDirectory = 0x06054b50;
constexpr uint32_t kZip64Locator = 0x07064b50;
constexpr uint32_t kZip64End = 0x06064b50;
constexpr uint64_t kMaxEntries = 1 << 20;  // far above any model's tensor count

uint64_t Le(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// The file, read with pread; every read is bounds-checked against its size.
class File {
 public:
  explicit File(const std::string& path) : path_(path), fd_(open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ >= 0) {
      const off_t end = lseek(fd_, 0, SEEK_END);
      size_ = end < 0 ? 0 : static_cast<uint64_t>(end);
    }
  }
  ~File() {
    if (fd_ >= 0) close(fd_);
  }
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  bool is_open() const { return fd_ >= 0; }
  uint64_t size() const { return size_; }

  // `length` bytes at `offset` into `out`; false when they are not all in the file.
  bool Read(uint64_t offset, uint64_t length, std::vector<unsigned char>& out) const {
    if (offset > size_ || length > size_ - offset) return false;
    out.resize(length);
    uint64_t done = 0;
    while (done < length) {
      const ssize_t n = pread(fd_, out.data() + done, length - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      done += static_cast<uint64_t>(n);
    }
    return true;
  }

  // The CRC-32 and length of an entry's contents: `length` bytes at `offset`, stored as they are or
  // deflated (`deflated`), read in pieces. False when they run past the end or do not inflate.
  bool Crc(uint64_t offset, uint64_t length, bool deflated, uint32_t* crc, uint64_t* contents) const {
    if (offset > size_ || length > size_ - offset) return false;
    uLong value = crc32(0L, Z_NULL, 0);
    *contents = 0;
    z_stream z{};
    if (deflated && inflateInit2(&z, -MAX_WBITS) != Z_OK) return false;  // raw deflate, as zip stores it
    std::vector<unsigned char> piece, out(deflated ? 1 << 16 : 0);
    bool ok = true;
    for (uint64_t done = 0; ok && done < length;) {
      const uint64_t n = std::min<uint64_t>(length - done, 1 << 20);
      if (!Read(offset + done, n, piece)) {
        ok = false;
        break;
      }
      done += n;
      if (!deflated) {
        value = crc32(value, piece.data(), static_cast<uInt>(n));
        *contents += n;
        continue;
      }
      z.next_in = piece.data();
      z.avail_in = static_cast<uInt>(n);
      while (z.avail_in > 0) {
        z.next_out = out.data();
        z.avail_out = static_cast<uInt>(out.size());
        const int r = inflate(&z, Z_NO_FLUSH);
        const uint64_t produced = out.size() - z.avail_out;
        value = crc32(value, out.data(), static_cast<uInt>(produced));
        *contents += produced;
        if (r == Z_STREAM_END) break;
        if (r != Z_OK) {
          ok = false;
          break;
        }
      }
    }
    if (deflated) inflateEnd(&z);
    *crc = static_cast<uint32_t>(value);
    return ok;
  }

 private:
  std::string path_;
  int fd_;
  uint64_t size_ = 0;
};

struct Directory {
  uint64_t entries = 0;
  uint64_t offset = 0;
  uint64_t size = 0;
};

}  // namespace

absl::Status VerifyArchive(const std::string& path) {
  const File file(path);
  if (!file.is_open()) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  auto not_archive = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a LibTorch archive: ", why));
  };
  // The end-of-central-directory record: 22 bytes and a comment of up to 65535 bytes, at the end.
  const uint64_t tail_size = std::min<uint64_t>(file.size(), 22 + 65535);
  std::vector<unsigned char> tail;
  if (tail_size < 22 || !file.Read(file.size() - tail_size, tail_size, tail)) {
    return not_archive("too short for a zip archive");
  }
  int64_t end = -1;
  for (int64_t i = static_cast<int64_t>(tail_size) - 22; i >= 0; --i) {
    if (Le(&tail[i], 4) == kEndOfDirectory) {
      end = i;
      break;
    }
  }
  if (end < 0) return not_archive("no zip end-of-directory record");
  const uint64_t end_offset = file.size() - tail_size + static_cast<uint64_t>(end);
  Directory dir{Le(&tail[end + 10], 2), Le(&tail[end + 16], 4), Le(&tail[end + 12], 4)};
  if (dir.entries == 0xFFFF || dir.offset == 0xFFFFFFFF || dir.size == 0xFFFFFFFF) {
    // ZIP64: a locator right before the record points at the 64-bit end record.
    std::vector<unsigned char> locator, end64;
    if (end_offset < 20 || !file.Read(end_offset - 20, 20, locator) || Le(&locator[0], 4) != kZip64Locator ||
        !file.Read(Le(&locator[8], 8), 56, end64) || Le(&end64[0], 4) != kZip64End) {
      return not_archive("a damaged ZIP64 end record");
    }
    dir = {Le(&end64[32], 8), Le(&end64[48], 8), Le(&end64[40], 8)};
  }
  if (dir.entries == 0 || dir.entries > kMaxEntries) return not_archive(absl::StrCat(dir.entries, " entries"));
  std::vector<unsigned char> central;
  if (!file.Read(dir.offset, dir.size, central)) return not_archive("its directory runs past the end");

  std::vector<unsigned char> local;
  uint64_t at = 0;
  for (uint64_t e = 0; e < dir.entries; ++e) {
    if (at + 46 > central.size() || Le(&central[at], 4) != kCentralHeader) {
      return not_archive(absl::StrCat("directory entry ", e, " is damaged"));
    }
    const unsigned char* h = &central[at];
    const uint64_t method = Le(h + 10, 2), crc = Le(h + 16, 4);
    uint64_t compressed = Le(h + 20, 4), uncompressed = Le(h + 24, 4), offset = Le(h + 42, 4);
    const uint64_t name_length = Le(h + 28, 2), extra_length = Le(h + 30, 2), comment_length = Le(h + 32, 2);
    if (at + 46 + name_length + extra_length + comment_length > central.size()) {
      return not_archive(absl::StrCat("directory entry ", e, " runs past the directory"));
    }
    const std::string name(reinterpret_cast<const char*>(h + 46), name_length);
    // ZIP64 extra field (id 1): the 64-bit values of those fields that read 0xFFFFFFFF, in order.
    for (uint64_t x = 0; x + 4 <= extra_length;) {
      const unsigned char* f = h + 46 + name_length + x;
      const uint64_t id = Le(f, 2), length = Le(f + 2, 2);
      if (x + 4 + length > extra_length) break;
      if (id == 1) {
        uint64_t k = 4;
        for (uint64_t* field : {&uncompressed, &compressed, &offset}) {
          if (*field != 0xFFFFFFFF) continue;
          if (k + 8 > 4 + length) return not_archive(absl::StrCat("entry ", name, " has a short ZIP64 field"));
          *field = Le(f + k, 8);
          k += 8;
        }
      }
      x += 4 + length;
    }
    if (method != 0 && method != 8) {
      return not_archive(absl::StrCat("entry ", name, " is compressed with method ", method,
                                      "; zip archives of LibTorch are stored or deflated"));
    }
    if (!file.Read(offset, 30, local) || Le(&local[0], 4) != kLocalHeader) {
      return not_archive(absl::StrCat("entry ", name, " has no local header at offset ", offset));
    }
    const uint64_t data = offset + 30 + Le(&local[26], 2) + Le(&local[28], 2);
    uint32_t actual = 0;
    uint64_t contents = 0;
    if (!file.Crc(data, compressed, method == 8, &actual, &contents)) {
      return absl::DataLossError(
          absl::StrCat(path, ": entry ", name, " runs past the end of the file or does not inflate"));
    }
    if (actual != crc || contents != uncompressed) {
      return absl::DataLossError(
          absl::StrCat(path, ": entry ", name, " is damaged (its CRC-32 does not match its bytes)"));
    }
    at += 46 + name_length + extra_length + comment_length;
  }
  return absl::OkStatus();
}

}  // namespace xtrain::core
