#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message_lite.h"

namespace xtrain::server {

// The worker protocol's framing (proto/xtrain/worker/v1/worker.proto): a 4-byte little-endian length,
// then that many bytes of one serialized message. Frames above kMaxFrameBytes are refused.
inline constexpr uint32_t kMaxFrameBytes = 64u << 20;

// `message` as one frame. The caller keeps messages within kMaxFrameBytes (WriteFrame and the
// Supervisor check); a larger one is encoded with its true length, which a reader refuses.
std::string EncodeFrame(const google::protobuf::MessageLite& message);

// Splits a byte stream into frames. Feed it what arrives (any split); Next returns whole frames.
class FrameDecoder {
 public:
  void Feed(absl::string_view bytes);
  // The next whole frame's payload; nullopt until one is complete. InvalidArgument for a length above
  // kMaxFrameBytes (the stream is then unusable: the peer is broken or hostile; every later call
  // returns the same error). It never reserves memory from a length: it holds only what was fed.
  absl::StatusOr<std::optional<std::string>> Next();
  // Bytes held that do not yet form a whole frame.
  size_t pending() const { return buffer_.size() - offset_; }

 private:
  std::string buffer_;
  size_t offset_ = 0;
};

// Parses one payload into `message`; InvalidArgument when it is not one.
absl::Status ParseFrame(absl::string_view payload, google::protobuf::MessageLite& message);

// Blocking frame I/O on a file descriptor (the worker's side of its socket). WriteFrame writes the
// whole frame or fails (EINTR retried; InvalidArgument above kMaxFrameBytes; a closed peer is an
// error, not SIGPIPE, on a socket); ReadFrame returns nullopt at a clean end of stream, DataLoss for a
// stream cut inside a frame, InvalidArgument for a length above kMaxFrameBytes, and grows its buffer
// with the bytes that arrive, not with the length announced.
absl::Status WriteFrame(int fd, const google::protobuf::MessageLite& message);
absl::StatusOr<std::optional<std::string>> ReadFrame(int fd);

}  // namespace xtrain::server
