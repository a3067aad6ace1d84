#pragma once
// The dataset parsers and the checkpoint loader take paths (they are what the worker opens under the
// data roots), so each fuzz input is written to a file of this process's own and parsed from there.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace xtrain::fuzz {

// A folder under the temporary directory, named after the process, removed when the process exits.
inline const std::filesystem::path& FuzzDir() {
  static const std::filesystem::path dir = [] {
    std::filesystem::path d =
        std::filesystem::temp_directory_path() / ("xtrain-fuzz-" + std::to_string(getpid()));
    std::filesystem::create_directories(d);
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(FuzzDir(), ignored);
    });
    return d;
  }();
  return dir;
}

// Writes `size` bytes to FuzzDir()/`name` (parent folders made) and returns its path.
inline std::string WriteFuzzFile(const std::string& name, const uint8_t* data, size_t size) {
  const std::filesystem::path path = FuzzDir() / name;
  std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) std::abort();  // the harness itself failed: not a finding
  return path.string();
}

}  // namespace xtrain::fuzz
