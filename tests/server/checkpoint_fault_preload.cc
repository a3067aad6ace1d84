// An LD_PRELOAD library for the full-disk test (service_test.cc): in a process started with
// XTRAIN_FAULT_CHECKPOINT_WRITES_OK=N, the first N checkpoint files it creates (…/checkpoint-<step>.pt.tmp,
// the temporary file a checkpoint is written to before its rename) are written as usual, and every
// write to a later one fails with ENOSPC, as on a full disk. Everything else passes through. Built
// without sanitizers: it is preloaded into the ordinary xtrain-worker.
#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdlib>
#include <cstring>

namespace {

constexpr int kMaxFd = 4096;
std::atomic<bool> failing[kMaxFd];
std::atomic<int> created{0};

bool IsCheckpointTemporary(const char* path) {
  const size_t n = std::strlen(path);
  return std::strstr(path, "/checkpoint-") != nullptr && n > 7 && std::strcmp(path + n - 7, ".pt.tmp") == 0;
}

// Marks `fd` failing when it is a checkpoint file past the allowance.
int Track(int fd, const char* path) {
  if (fd < 0 || fd >= kMaxFd) return fd;
  failing[fd] = false;
  if (!IsCheckpointTemporary(path)) return fd;
  const char* allowed = std::getenv("XTRAIN_FAULT_CHECKPOINT_WRITES_OK");
  failing[fd] = allowed != nullptr && created.fetch_add(1) >= std::atoi(allowed);
  return fd;
}

template <typename F>
F Next(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

mode_t ModeOf(int flags, va_list args) {
  return (flags & (O_CREAT | O_TMPFILE)) != 0 ? static_cast<mode_t>(va_arg(args, int)) : 0;
}

}  // namespace

extern "C" {

int open(const char* path, int flags, ...) {
  va_list args;
  va_start(args, flags);
  const mode_t mode = ModeOf(flags, args);
  va_end(args);
  static const auto real = Next<int (*)(const char*, int, ...)>("open");
  return Track(real(path, flags, mode), path);
}

int open64(const char* path, int flags, ...) {
  va_list args;
  va_start(args, flags);
  const mode_t mode = ModeOf(flags, args);
  va_end(args);
  static const auto real = Next<int (*)(const char*, int, ...)>("open64");
  return Track(real(path, flags, mode), path);
}

int openat(int dir, const char* path, int flags, ...) {
  va_list args;
  va_start(args, flags);
  const mode_t mode = ModeOf(flags, args);
  va_end(args);
  static const auto real = Next<int (*)(int, const char*, int, ...)>("openat");
  return Track(real(dir, path, flags, mode), path);
}

ssize_t write(int fd, const void* data, size_t size) {
  if (fd >= 0 && fd < kMaxFd && failing[fd]) {
    errno = ENOSPC;
    return -1;
  }
  static const auto real = Next<ssize_t (*)(int, const void*, size_t)>("write");
  return real(fd, data, size);
}

}  // extern "C"
