#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/timestamp.pb.h"

namespace xtrain::server {

// "1.20 GiB", "512.00 KiB", "37 B": bytes for people, binary units, two decimals.
std::string HumanBytes(int64_t bytes);

// A random identifier with `prefix` ("job-", "art-"): 16 hex digits from the OS's entropy source.
std::string NewId(absl::string_view prefix);

// The current wall-clock time as a protobuf Timestamp.
google::protobuf::Timestamp NowTimestamp();
// Seconds since the epoch of a Timestamp.
double TimestampSeconds(const google::protobuf::Timestamp& t);

// Resolves `path` (relative to a root, or absolute) to a real path inside one of `roots`, following
// symlinks. InvalidArgument (naming `field`) when it escapes every root; NotFound when it does not exist.
absl::StatusOr<std::string> ResolveUnderRoots(const std::vector<std::string>& roots, const std::string& path,
                                              absl::string_view field);

// Writes `content` to `path` atomically (a temporary file in the same folder, fsync, rename).
absl::Status WriteFileAtomically(const std::string& path, absl::string_view content);
// The whole file; NotFound when it does not exist.
absl::StatusOr<std::string> ReadFile(const std::string& path);
// Creates the folder and its parents (like mkdir -p).
absl::Status MakeDirs(const std::string& path);
// Removes a file or folder tree; a missing path is OK (idempotent).
absl::Status RemoveAll(const std::string& path);

// Appends `bytes` as length-delimited field number `field` of a protobuf message: what one element of
// a repeated message field (or a string field) adds to its parent's serialization. Serialized messages
// concatenate, so a parent can be assembled from its elements' bytes without parsing them.
void AppendLengthDelimited(std::string* out, int field, absl::string_view bytes);

// SHA-256 of a byte string or a file, lower-case hex.
std::string Sha256Hex(absl::string_view bytes);
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace xtrain::server
