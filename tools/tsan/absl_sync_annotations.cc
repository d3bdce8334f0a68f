// ThreadSanitizer builds only (ERRAND_SANITIZE=thread): makes abseil's
// Mutex visible to TSan.
//
// Debian's libabsl_synchronization is not built with -fsanitize=thread, so
// TSan never sees an absl::Mutex being locked or unlocked, and every access
// to data guarded by one (the commit pipeline's queue, the store's
// compaction state, the call limiter, gRPC's own mutexes) is reported as a
// race. This file defines the Mutex and CondVar entry points in the
// executable itself; the dynamic linker then binds every call to them, from
// errand's code and from the gRPC libraries alike, to these definitions,
// which tell TSan about the lock and call abseil's own code (found with
// dlsym(RTLD_NEXT)).
//
// The symbol names are those of Debian 12's abseil (20220623, inline
// namespace "debian3"); another abseil makes Real() abort with the missing
// name rather than run unannotated.

#include <absl/synchronization/mutex.h>
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>

namespace {

template <typename Fn>
Fn Real(const char* name) {
  void* p = dlsym(RTLD_NEXT, name);
  if (p == nullptr) {
    std::fprintf(stderr, "tsan absl annotations: %s not found\n", name);
    std::abort();
  }
  return reinterpret_cast<Fn>(p);
}

using MuFn = void (*)(absl::Mutex*);
using MuTryFn = bool (*)(absl::Mutex*);
using MuCondFn = void (*)(absl::Mutex*, const absl::Condition&);
using MuCondDurFn = bool (*)(absl::Mutex*, const absl::Condition&, absl::Duration);
using MuCondTimeFn = bool (*)(absl::Mutex*, const absl::Condition&, absl::Time);
using CvWaitFn = void (*)(absl::CondVar*, absl::Mutex*);
using CvWaitDurFn = bool (*)(absl::CondVar*, absl::Mutex*, absl::Duration);

constexpr unsigned kRead = __tsan_mutex_read_lock;

void Locked(void* mu, unsigned flags) {
  __tsan_mutex_pre_lock(mu, flags);
  __tsan_mutex_post_lock(mu, flags, 0);
}
void Unlocking(void* mu, unsigned flags) { __tsan_mutex_pre_unlock(mu, flags); }
void Unlocked(void* mu, unsigned flags) { __tsan_mutex_post_unlock(mu, flags); }

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  static const auto real = Real<MuFn>("_ZN4absl7debian35Mutex4LockEv");
  real(this);
  Locked(this, 0);
}

void Mutex::Unlock() {
  static const auto real = Real<MuFn>("_ZN4absl7debian35Mutex6UnlockEv");
  Unlocking(this, 0);
  real(this);
  Unlocked(this, 0);
}

void Mutex::ReaderLock() {
  static const auto real = Real<MuFn>("_ZN4absl7debian35Mutex10ReaderLockEv");
  real(this);
  Locked(this, kRead);
}

void Mutex::ReaderUnlock() {
  static const auto real = Real<MuFn>("_ZN4absl7debian35Mutex12ReaderUnlockEv");
  Unlocking(this, kRead);
  real(this);
  Unlocked(this, kRead);
}

bool Mutex::TryLock() {
  static const auto real = Real<MuTryFn>("_ZN4absl7debian35Mutex7TryLockEv");
  bool ok = real(this);
  if (ok) Locked(this, 0);
  return ok;
}

bool Mutex::ReaderTryLock() {
  static const auto real = Real<MuTryFn>("_ZN4absl7debian35Mutex13ReaderTryLockEv");
  bool ok = real(this);
  if (ok) Locked(this, kRead);
  return ok;
}

void Mutex::LockWhen(const Condition& cond) {
  static const auto real = Real<MuCondFn>("_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  real(this, cond);
  Locked(this, 0);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real = Real<MuCondDurFn>(
      "_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  bool ok = real(this, cond, timeout);
  Locked(this, 0);  // held on return either way
  return ok;
}

// Await releases the mutex while it waits and holds it again on return:
// seen by TSan as an unlock and a lock.
void Mutex::Await(const Condition& cond) {
  static const auto real = Real<MuCondFn>("_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
  Unlocking(this, 0);
  Unlocked(this, 0);
  real(this, cond);
  Locked(this, 0);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real = Real<MuCondDurFn>(
      "_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Unlocking(this, 0);
  Unlocked(this, 0);
  bool ok = real(this, cond, timeout);
  Locked(this, 0);
  return ok;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  static const auto real = Real<MuCondTimeFn>(
      "_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Unlocking(this, 0);
  Unlocked(this, 0);
  bool ok = real(this, cond, deadline);
  Locked(this, 0);
  return ok;
}

void CondVar::Wait(Mutex* mu) {
  static const auto real = Real<CvWaitFn>("_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE");
  Unlocking(mu, 0);
  Unlocked(mu, 0);
  real(this, mu);
  Locked(mu, 0);
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  static const auto real = Real<CvWaitDurFn>(
      "_ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  Unlocking(mu, 0);
  Unlocked(mu, 0);
  bool ok = real(this, mu, timeout);
  Locked(mu, 0);
  return ok;
}

ABSL_NAMESPACE_END
}  // namespace absl
