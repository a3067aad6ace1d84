#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace xtrain::core {

// The contents of `path`, decompressed when the file starts with the gzip magic (1f 8b).
// NotFound (or another errno-derived code) when the file cannot be opened; DataLoss when a gzip
// stream is corrupt or cut short. Messages name the file.
absl::StatusOr<std::string> ReadFileBytes(const std::string& path);

// True when `bytes` starts with the gzip magic.
bool HasGzipMagic(const std::string& bytes);

}  // namespace xtrain::core
