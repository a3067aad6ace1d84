#include "server/protocol/frame.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace xtrain::server {
namespace {

constexpr size_t kHeaderBytes = 4;
// ReadFrame grows its buffer by at most this much per read, so memory follows the bytes that arrive,
// not the length a peer claims.
constexpr size_t kReadChunkBytes = 1u << 20;
// The decoder drops consumed bytes once they are this many and at least half its buffer.
constexpr size_t kCompactBytes = 64u << 10;

void PutLength(uint32_t length, char* out) {
  for (size_t i = 0; i < kHeaderBytes; ++i) out[i] = static_cast<char>((length >> (8 * i)) & 0xff);
}

uint32_t GetLength(const char* in) {
  uint32_t length = 0;
  for (size_t i = 0; i < kHeaderBytes; ++i) length |= uint32_t{static_cast<unsigned char>(in[i])} << (8 * i);
  return length;
}

absl::Status OversizeError(uint64_t length) {
  return absl::InvalidArgumentError(
      absl::StrCat("frame length ", length, " is above the ", kMaxFrameBytes, "-byte limit"));
}

// Writes all of `data`; send with MSG_NOSIGNAL on a socket (a closed peer is an error, not SIGPIPE),
// write on anything else.
absl::Status WriteAll(int fd, const char* data, size_t size) {
  bool socket = true;
  while (size > 0) {
    ssize_t n = socket ? ::send(fd, data, size, MSG_NOSIGNAL) : ::write(fd, data, size);
    if (n < 0 && socket && errno == ENOTSOCK) {
      socket = false;
      continue;
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "writing a frame");
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// Reads up to `size` bytes, stopping early only at end of stream; returns how many arrived.
absl::StatusOr<size_t> ReadUpTo(int fd, char* data, size_t size) {
  size_t got = 0;
  while (got < size) {
    ssize_t n = ::read(fd, data + got, size - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "reading a frame");
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  return got;
}

}  // namespace

std::string EncodeFrame(const google::protobuf::MessageLite& message) {
  const size_t size = message.ByteSizeLong();
  std::string frame(kHeaderBytes + size, '\0');
  PutLength(static_cast<uint32_t>(size), frame.data());
  message.SerializeWithCachedSizesToArray(reinterpret_cast<uint8_t*>(frame.data() + kHeaderBytes));
  return frame;
}

void FrameDecoder::Feed(absl::string_view bytes) {
  if (offset_ >= kCompactBytes && offset_ * 2 >= buffer_.size()) {
    buffer_.erase(0, offset_);
    offset_ = 0;
  }
  buffer_.append(bytes.data(), bytes.size());
}

absl::StatusOr<std::optional<std::string>> FrameDecoder::Next() {
  if (pending() < kHeaderBytes) return std::nullopt;
  const uint32_t length = GetLength(buffer_.data() + offset_);
  if (length > kMaxFrameBytes) return OversizeError(length);
  if (pending() - kHeaderBytes < length) return std::nullopt;
  std::string payload = buffer_.substr(offset_ + kHeaderBytes, length);
  offset_ += kHeaderBytes + length;
  if (offset_ == buffer_.size()) {
    buffer_.clear();
    offset_ = 0;
  }
  return payload;
}

absl::Status ParseFrame(absl::string_view payload, google::protobuf::MessageLite& message) {
  if (payload.size() > kMaxFrameBytes) return OversizeError(payload.size());
  if (!message.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
    return absl::InvalidArgumentError(
        absl::StrCat("a ", payload.size(), "-byte frame is not a valid ", message.GetTypeName()));
  }
  return absl::OkStatus();
}

absl::Status WriteFrame(int fd, const google::protobuf::MessageLite& message) {
  const size_t size = message.ByteSizeLong();
  if (size > kMaxFrameBytes) return OversizeError(size);
  const std::string frame = EncodeFrame(message);
  return WriteAll(fd, frame.data(), frame.size());
}

absl::StatusOr<std::optional<std::string>> ReadFrame(int fd) {
  char header[kHeaderBytes];
  absl::StatusOr<size_t> got = ReadUpTo(fd, header, kHeaderBytes);
  if (!got.ok()) return got.status();
  if (*got == 0) return std::nullopt;
  if (*got < kHeaderBytes) {
    return absl::DataLossError(absl::StrCat("the stream ended inside a frame's length (", *got, " of ",
                                            kHeaderBytes, " bytes)"));
  }
  const uint32_t length = GetLength(header);
  if (length > kMaxFrameBytes) return OversizeError(length);
  std::string payload;
  while (payload.size() < length) {
    const size_t before = payload.size();
    const size_t chunk = std::min<size_t>(length - before, kReadChunkBytes);
    payload.resize(before + chunk);
    got = ReadUpTo(fd, payload.data() + before, chunk);
    if (!got.ok()) return got.status();
    if (*got < chunk) {
      return absl::DataLossError(absl::StrCat("the stream ended inside a frame (", before + *got, " of ",
                                              length, " bytes)"));
    }
  }
  return payload;
}

}  // namespace xtrain::server
