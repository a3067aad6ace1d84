#pragma once
// A check of a LibTorch archive file (a zip of stored entries) before LibTorch reads it.
#include <string>

#include "absl/status/status.h"

namespace xtrain::core {

// OK when `path` is a zip archive whose central directory and local headers are consistent and
// every entry (stored, or deflated as LibTorch writes its code/ entries) has contents of the
// recorded size and CRC-32. LibTorch 1.13 reads archives with miniz's CRC checks compiled out, and
// some damaged contents crash its TorchScript parser instead of raising an error (found by
// fuzz_checkpoint), so a damaged file must be caught here. InvalidArgument when the file is not
// such an archive, DataLoss when an entry's contents do not match or run past the end of the file;
// messages name the file.
absl::Status VerifyArchive(const std::string& path);

}  // namespace xtrain::core
