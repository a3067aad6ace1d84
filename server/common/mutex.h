#pragma once

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

#ifdef XTRAIN_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace xtrain::server {

// absl::MutexLock that ThreadSanitizer can see. Debian's Abseil is not built with ThreadSanitizer, so
// TSan cannot tell that one critical section ends before the next begins and reports races between
// them; these annotations tell it. The service's TSan build defines XTRAIN_TSAN (it undefines
// __SANITIZE_THREAD__ so that protobuf's and gRPC's headers keep the layout of the system's
// uninstrumented libraries); elsewhere this is absl::MutexLock. Every service lock goes through it.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(absl::Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) {
    mu_->Lock();
    Acquired();
  }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() {
    Releasing();
    mu_->Unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  // Waits for a signal on `cv`, unlocked meanwhile.
  void Wait(absl::CondVar* cv) {
    Releasing();
    cv->Wait(mu_);
    Acquired();
  }
  // Waits for a signal on `cv` or for `timeout`, unlocked meanwhile; true if it timed out.
  bool WaitWithTimeout(absl::CondVar* cv, absl::Duration timeout) {
    Releasing();
    const bool timed_out = cv->WaitWithTimeout(mu_, timeout);
    Acquired();
    return timed_out;
  }

 private:
  void Acquired() {
#ifdef XTRAIN_TSAN
    __tsan_acquire(mu_);
#endif
  }
  void Releasing() {
#ifdef XTRAIN_TSAN
    __tsan_release(mu_);
#endif
  }

  absl::Mutex* const mu_;
};

// absl::Notification that ThreadSanitizer can see (for the same reason as MutexLock): what the
// notifying thread wrote before Notify happens before what a thread reads after seeing it.
class Notification {
 public:
  void Notify() {
#ifdef XTRAIN_TSAN
    __tsan_release(this);
#endif
    notification_.Notify();
  }
  bool HasBeenNotified() const { return Seen(notification_.HasBeenNotified()); }
  void WaitForNotification() const {
    notification_.WaitForNotification();
    Seen(true);
  }
  bool WaitForNotificationWithTimeout(absl::Duration timeout) const {
    return Seen(notification_.WaitForNotificationWithTimeout(timeout));
  }

 private:
  bool Seen(bool notified) const {
#ifdef XTRAIN_TSAN
    if (notified) __tsan_acquire(const_cast<Notification*>(this));
#endif
    return notified;
  }
  absl::Notification notification_;
};

// A hand-over between threads that happens inside Debian's uninstrumented gRPC, made visible to
// ThreadSanitizer: a reactor starts a write (or its Finish) on one thread and gRPC runs OnWriteDone (or
// OnDone) on another. Call HandOver(reactor) before starting the operation and TakeOver(reactor) first
// thing in its reaction: what the first thread wrote then happens before what the reaction reads.
inline void HandOver(const void* reactor) {
#ifdef XTRAIN_TSAN
  __tsan_release(const_cast<void*>(reactor));
#else
  (void)reactor;
#endif
}
inline void TakeOver(const void* reactor) {
#ifdef XTRAIN_TSAN
  __tsan_acquire(const_cast<void*>(reactor));
#else
  (void)reactor;
#endif
}

}  // namespace xtrain::server
