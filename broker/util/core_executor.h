#pragma once

#include <absl/base/thread_annotations.h>
#include <absl/functional/any_invocable.h>
#include <absl/synchronization/mutex.h>

#include <asio/io_context.hpp>
#include <cstddef>
#include <deque>

namespace errand::util {

// "Core": the broker's one logical thread. The engine, the hub and the
// worker registry are only touched from closures run here, one at a time, in
// the order they were handed in; a mutex orders them, so each closure sees
// everything the ones before it wrote.
//
// Core is not one OS thread. A thread that hands in a closure while core is
// idle runs it in place, then whatever was handed in meanwhile. So the gRPC
// thread that read a request usually validates, commits and answers it
// itself. Handing every request to a dedicated thread cost a wake-up and two
// context switches per message, the largest cost per job on a small machine.
//
// - Run(f): in place when core is idle; otherwise queued, and whoever is
//   running core runs it.
// - Post(f): always queued; when core is idle the core thread (the one
//   running `io`) is woken to run it. For callers that must not be held up
//   by core's work (the event hub's disk readers) and for start and stop.
// - A closure handed in from core itself runs after the current one, never
//   nested in it.
// - A thread running core in place runs at most `max_in_place` closures, then
//   hands what is left to the core thread: no caller is held up for long
//   under load. The core thread, in turn, goes back to `io` after as many, so
//   that timers expire on time.
// - After CloseInPlace() every closure goes through the core thread (Stop
//   uses it once the server is gone; closures handed in later run only if
//   the core thread still runs).
//
// Timers: create them on io(); a timer's handler runs on the core thread, not
// in core, and must enter core with Run.
class CoreExecutor {
 public:
  using Fn = absl::AnyInvocable<void() &&>;

  explicit CoreExecutor(asio::io_context& io, size_t max_in_place = 32)
      : io_(io), max_in_place_(max_in_place == 0 ? 1 : max_in_place) {}
  CoreExecutor(const CoreExecutor&) = delete;
  CoreExecutor& operator=(const CoreExecutor&) = delete;

  void Run(Fn f);
  void Post(Fn f);
  void CloseInPlace();

  asio::io_context& io() { return io_; }

  // True on a thread while it runs a closure of any CoreExecutor.
  static bool InCore();

  // Runs `f` in core right after the closure running now returns, before
  // the next one; hooks added by hooks run too, in the order they were
  // added. Outside a closure `f` runs at once. For output that a closure may
  // produce piece by piece but should go out in one go (a stream's write
  // started once, with everything the closure queued).
  static void AfterThisClosure(Fn f);

  // Closures run so far, for tests and metrics: by the thread that handed
  // them in, and by the core thread.
  struct Counts {
    size_t in_place = 0;
    size_t core_thread = 0;
  };
  Counts counts() const;

 private:
  // Runs queued closures (at most `limit`); the caller owns core (running_).
  // Hands core over to the core thread, or gives it up when nothing is left.
  void Drain(size_t limit, bool on_core_thread);
  void WakeCoreThread();

  asio::io_context& io_;
  const size_t max_in_place_;
  mutable absl::Mutex mu_;
  std::deque<Fn> queue_ ABSL_GUARDED_BY(mu_);
  bool running_ ABSL_GUARDED_BY(mu_) = false;  // someone owns core
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  Counts counts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace errand::util
