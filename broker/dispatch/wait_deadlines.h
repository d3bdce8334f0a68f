#pragma once

#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "dispatch/deadline_set.h"

namespace errand::dispatch {

// When the engine's long polls (Lease calls waiting for a job, WaitJob calls
// waiting for an outcome) run out: their deadlines on the steady clock, and
// one asio timer for all of them, armed at the earliest.
//
// Why not a timer per waiter: most waiters are answered before their wait
// runs out (a worker waiting on an empty queue gets the next job), and a
// cancelled asio timer still runs its handler, on the io_context's thread.
// That woke the core thread once per job of every such worker. Here
// answering a waiter only drops its entry; the timer is moved only when a
// deadline earlier than the one it is armed for comes in (rare: waits of
// one kind mostly have one length, so new deadlines come last), and a timer
// that fires with nothing due re-arms for what is left.
//
// Thread: core, but the timer's handler runs on the io_context's thread and
// enters core through `on_core` (nullptr: it calls `due` right there).
class WaitDeadlines {
 public:
  using Time = std::chrono::steady_clock::time_point;
  // Called in core with the ids whose deadline passed, earliest first; they
  // are no longer in the set.
  using Due = std::function<void(std::vector<uint64_t>)>;
  using OnCore = std::function<void(std::function<void()>)>;

  WaitDeadlines(asio::io_context& io, OnCore on_core, Due due)
      : timer_(io), on_core_(std::move(on_core)), due_(std::move(due)) {}
  WaitDeadlines(const WaitDeadlines&) = delete;
  WaitDeadlines& operator=(const WaitDeadlines&) = delete;

  // `id`'s wait ends at `at` unless it is removed first.
  void Add(Time at, uint64_t id) {
    set_.Add(at, id);
    Arm();
  }
  // The same (at, id) that was added; false when it was not there (it fired).
  bool Remove(Time at, uint64_t id) { return set_.Remove(at, id); }
  size_t size() const { return set_.size(); }
  // When the timer is armed for (tests): nullopt when it is not.
  std::optional<Time> armed_at() const { return armed_; }
  // No deadline fires after this; a handler already on its way does nothing.
  void Stop() {
    stopped_ = true;
    set_ = {};
    armed_.reset();
    timer_.cancel();
  }

 private:
  void Arm() {
    if (stopped_) return;
    const std::optional<Time> earliest = set_.Earliest();
    if (!earliest) return;
    const Time at = *earliest;
    if (armed_ && *armed_ <= at) return;  // fires early enough already
    armed_ = at;
    // Replacing the expiry cancels the wait in progress (its handler sees
    // operation_aborted and does nothing).
    timer_.expires_at(at);
    timer_.async_wait([this](const std::error_code& ec) {
      if (ec) return;
      if (on_core_) {
        on_core_([this] { Fire(); });
      } else {
        Fire();
      }
    });
  }

  void Fire() {
    if (stopped_) return;
    // A wait armed meanwhile for an earlier time may still be pending; it
    // fires with nothing due, which costs nothing but a look.
    armed_.reset();
    std::vector<uint64_t> due = set_.PopDue(std::chrono::steady_clock::now());
    if (!due.empty()) due_(std::move(due));
    Arm();
  }

  asio::steady_timer timer_;
  OnCore on_core_;
  Due due_;
  BasicDeadlineSet<Time> set_;
  std::optional<Time> armed_;
  bool stopped_ = false;
};

}  // namespace errand::dispatch
