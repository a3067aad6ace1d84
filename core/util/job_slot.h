#pragma once

// One job per process (DESIGN.md §3). A Trainer and a MemoryModel::Build change process-wide state:
// LibTorch's default CPU generator and intra-op thread count, the counting CPU allocator whose
// readings are the job's measured peaks, and the memory-phase observer. Two of them at once in
// one process would corrupt each other's figures, so each claims the process's single job slot
// and a second claim fails. The service runs every job and every planning call in its own
// worker process.

#include <mutex>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace xtrain::core {

// A claim on the process's job slot, released when destroyed. Movable, not copyable.
class JobSlot {
 public:
  // Claims the slot for `holder` (a phrase such as "a Trainer (model small_cnn)"). FailedPrecondition
  // naming the current holder when another claim is alive. A claim made on a thread inside the
  // holder's own Nested scope succeeds and owns nothing (a Trainer's internal MemoryModel::Build).
  static absl::StatusOr<JobSlot> Acquire(const std::string& holder) {
    std::lock_guard<std::mutex> lock(mu_);
    if (held_) {
      if (nested_depth_ > 0) return JobSlot(/*owns=*/false);
      return absl::FailedPreconditionError(absl::StrCat(
          "one job per process: ", holder_, " holds this process's job slot, so ", holder,
          " cannot start beside it (both would share the CPU generator, the thread count and the "
          "memory meter); run each training job and planning call in its own process, or destroy the "
          "first one before starting the next"));
    }
    held_ = true;
    holder_ = holder;
    return JobSlot(/*owns=*/true);
  }

  JobSlot(JobSlot&& other) noexcept : owns_(std::exchange(other.owns_, false)) {}
  JobSlot& operator=(JobSlot&& other) noexcept {
    if (this != &other) {
      Release();
      owns_ = std::exchange(other.owns_, false);
    }
    return *this;
  }
  JobSlot(const JobSlot&) = delete;
  JobSlot& operator=(const JobSlot&) = delete;
  ~JobSlot() { Release(); }

  // Whether this claim holds the slot (false for a nested claim or a moved-from one).
  bool owns() const { return owns_; }

  // While alive, claims made on this thread succeed as nested claims of `slot`'s holder.
  class Nested {
   public:
    explicit Nested(const JobSlot& slot) : active_(slot.owns_) {
      if (active_) ++nested_depth_;
    }
    ~Nested() {
      if (active_) --nested_depth_;
    }
    Nested(const Nested&) = delete;
    Nested& operator=(const Nested&) = delete;

   private:
    bool active_;
  };

 private:
  explicit JobSlot(bool owns) : owns_(owns) {}
  void Release() {
    if (!owns_) return;
    std::lock_guard<std::mutex> lock(mu_);
    held_ = false;
    holder_.clear();
    owns_ = false;
  }

  bool owns_ = false;

  static inline std::mutex mu_;
  static inline bool held_ = false;     // guarded by mu_
  static inline std::string holder_;    // guarded by mu_: who holds the slot, for the message
  // Nested scopes open on this thread (only the holder's thread opens them).
  static inline thread_local int nested_depth_ = 0;
};

}  // namespace xtrain::core
