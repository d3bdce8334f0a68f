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
#include <link.h>
#include <sanitizer/tsan_interface.h>

#include <algorithm>
#include <cstdint>

#include "real_symbol.h"

namespace {

using errand::tsan::Real;

using MuFn = void (*)(absl::Mutex*);
using MuTryFn = bool (*)(absl::Mutex*);
using MuCondFn = void (*)(absl::Mutex*, const absl::Condition&);
using MuCondDurFn = bool (*)(absl::Mutex*, const absl::Condition&, absl::Duration);
using MuCondTimeFn = bool (*)(absl::Mutex*, const absl::Condition&, absl::Time);
using CvWaitFn = void (*)(absl::CondVar*, absl::Mutex*);
using CvWaitDurFn = bool (*)(absl::CondVar*, absl::Mutex*, absl::Duration);

constexpr unsigned kRead = __tsan_mutex_read_lock;

// Only calls made from the executable itself are annotated. gRPC's own
// libraries lock some of their mutexes through paths that never reach these
// definitions, so annotating their calls would show TSan half a lock
// ("double lock", lock-order reports); their internals stay invisible, as
// with every uninstrumented library.
struct Range {
  uintptr_t lo = UINTPTR_MAX;
  uintptr_t hi = 0;
};
const Range& Executable() {
  static const Range r = [] {
    Range out;
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* data) {
          auto* r = static_cast<Range*>(data);
          for (int i = 0; i < info->dlpi_phnum; ++i) {
            const auto& ph = info->dlpi_phdr[i];
            if (ph.p_type != PT_LOAD || (ph.p_flags & PF_X) == 0) continue;
            uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
            r->lo = std::min(r->lo, lo);
            r->hi = std::max(r->hi, lo + ph.p_memsz);
          }
          return 1;  // the first object is the executable
        },
        &out);
    return out;
  }();
  return r;
}

// abseil's own entry points call each other (AwaitWithTimeout calls
// AwaitWithDeadline through the PLT, so it lands here again): only the
// outermost call on a thread annotates, and only when the executable made it.
thread_local int depth = 0;
struct OuterImpl {
  explicit OuterImpl(void* caller)
      : outer(depth++ == 0 && reinterpret_cast<uintptr_t>(caller) >= Executable().lo &&
              reinterpret_cast<uintptr_t>(caller) < Executable().hi) {}
  ~OuterImpl() { --depth; }
  const bool outer;
};


void Locked(void* mu, unsigned flags) {
  __tsan_mutex_pre_lock(mu, flags);
  __tsan_mutex_post_lock(mu, flags, 0);
}
void Unlocking(void* mu, unsigned flags) { __tsan_mutex_pre_unlock(mu, flags); }
void Unlocked(void* mu, unsigned flags) { __tsan_mutex_post_unlock(mu, flags); }

// abseil evaluates a waiter's Condition with the mutex held, in the waiter or
// in whichever thread unlocks; TSan sees neither. The wrapper makes each
// evaluation synchronize with the mutex like a critical section.
struct Guarded {
  const absl::Condition* cond;
  void* mu;
};
bool EvalGuarded(Guarded* g) {
  __tsan_acquire(g->mu);
  bool r = g->cond->Eval();
  __tsan_release(g->mu);
  return r;
}

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  static const auto real = Real<MuFn>("_ZN4absl7debian35Mutex4LockEv");
  OuterImpl o(__builtin_return_address(0));
  real(this);
  if (o.outer) Locked(this, 0);
}

void Mutex::Unlock() {
  static const auto real = Real<MuFn>("_ZN4absl7debian35Mutex6UnlockEv");
  OuterImpl o(__builtin_return_address(0));
  if (o.outer) Unlocking(this, 0);
  real(this);
  if (o.outer) Unlocked(this, 0);
}

void Mutex::ReaderLock() {
  static const auto real = Real<MuFn>("_ZN4absl7debian35Mutex10ReaderLockEv");
  OuterImpl o(__builtin_return_address(0));
  real(this);
  if (o.outer) Locked(this, kRead);
}

void Mutex::ReaderUnlock() {
  static const auto real = Real<MuFn>("_ZN4absl7debian35Mutex12ReaderUnlockEv");
  OuterImpl o(__builtin_return_address(0));
  if (o.outer) Unlocking(this, kRead);
  real(this);
  if (o.outer) Unlocked(this, kRead);
}

bool Mutex::TryLock() {
  static const auto real = Real<MuTryFn>("_ZN4absl7debian35Mutex7TryLockEv");
  OuterImpl o(__builtin_return_address(0));
  bool ok = real(this);
  if (ok && o.outer) Locked(this, 0);
  return ok;
}

bool Mutex::ReaderTryLock() {
  static const auto real = Real<MuTryFn>("_ZN4absl7debian35Mutex13ReaderTryLockEv");
  OuterImpl o(__builtin_return_address(0));
  bool ok = real(this);
  if (ok && o.outer) Locked(this, kRead);
  return ok;
}

void Mutex::LockWhen(const Condition& cond) {
  static const auto real = Real<MuCondFn>("_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  OuterImpl o(__builtin_return_address(0));
  if (!o.outer) return real(this, cond);
  Guarded g{&cond, this};
  real(this, Condition(&EvalGuarded, &g));
  Locked(this, 0);
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real = Real<MuCondDurFn>(
      "_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  OuterImpl o(__builtin_return_address(0));
  if (!o.outer) return real(this, cond, timeout);
  Guarded g{&cond, this};
  bool ok = real(this, Condition(&EvalGuarded, &g), timeout);
  Locked(this, 0);  // held on return either way
  return ok;
}

// Await releases the mutex while it waits and holds it again on return:
// seen by TSan as an unlock and a lock.
void Mutex::Await(const Condition& cond) {
  static const auto real = Real<MuCondFn>("_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
  Unlocking(this, 0);
  Unlocked(this, 0);
  OuterImpl o(__builtin_return_address(0));
  if (!o.outer) return real(this, cond);
  Guarded g{&cond, this};
  real(this, Condition(&EvalGuarded, &g));
  Locked(this, 0);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real = Real<MuCondDurFn>(
      "_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  OuterImpl o(__builtin_return_address(0));
  if (!o.outer) return real(this, cond, timeout);
  Unlocking(this, 0);
  Unlocked(this, 0);
  Guarded g{&cond, this};
  bool ok = real(this, Condition(&EvalGuarded, &g), timeout);
  Locked(this, 0);
  return ok;
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  static const auto real = Real<MuCondTimeFn>(
      "_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  OuterImpl o(__builtin_return_address(0));
  if (!o.outer) return real(this, cond, deadline);
  Unlocking(this, 0);
  Unlocked(this, 0);
  Guarded g{&cond, this};
  bool ok = real(this, Condition(&EvalGuarded, &g), deadline);
  Locked(this, 0);
  return ok;
}

void CondVar::Wait(Mutex* mu) {
  static const auto real = Real<CvWaitFn>("_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE");
  OuterImpl o(__builtin_return_address(0));
  if (!o.outer) return real(this, mu);
  Unlocking(mu, 0);
  Unlocked(mu, 0);
  real(this, mu);
  Locked(mu, 0);
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  static const auto real = Real<CvWaitDurFn>(
      "_ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  OuterImpl o(__builtin_return_address(0));
  if (!o.outer) return real(this, mu, timeout);
  Unlocking(mu, 0);
  Unlocked(mu, 0);
  bool ok = real(this, mu, timeout);
  Locked(mu, 0);
  return ok;
}

ABSL_NAMESPACE_END
}  // namespace absl
