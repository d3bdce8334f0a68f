#pragma once

// errand::Subscription: a live feed of broker events (Events.Subscribe).
//
// The callback sees every matching event exactly once, in sequence order:
// when the stream breaks (network drop, broker restart) the subscription
// reconnects with backoff and resumes after the last delivered seq, skipping
// anything it already delivered. Limitation: with Start::kNow, events
// committed while the very first connection is being (re)tried before any
// event was delivered are not seen.
//
// It stops for good, reporting through the error callback, when the broker
// answers OUT_OF_RANGE (the resume point is no longer retained),
// INVALID_ARGUMENT (bad filter) or any other non-retryable code;
// UNAVAILABLE, INTERNAL, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED and
// UNKNOWN are retried.
//
// Thread-safety: callbacks run on the subscription's own thread, one at a
// time. Stop(), last_seq() and status() may be called from any thread.
// Ownership: Start returns the owner and borrows the Client (which must
// outlive it). Destroying the Subscription stops it and joins its thread;
// never destroy it from inside its callbacks (Stop() there is fine).

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "errand/client.h"
#include "errand/options.h"
#include "errand/v1/job.pb.h"

namespace errand {

class Subscription {
 public:
  using EventCallback = std::function<void(const v1::Event&)>;
  // Called once when the subscription stops on an error.
  using ErrorCallback = std::function<void(const absl::Status&)>;

  static absl::StatusOr<std::unique_ptr<Subscription>> Start(Client& client,
                                                             SubscriptionOptions options,
                                                             EventCallback on_event,
                                                             ErrorCallback on_error = nullptr);
  ~Subscription();
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;

  // Unsubscribes; returns once no callback runs any more (unless called from
  // a callback). Idempotent.
  void Stop();
  // The seq of the last delivered event (0 before the first).
  uint64_t last_seq() const;
  // OK while running or after Stop(); the error after an error stop.
  absl::Status status() const;
  // True after Stop() or an error stop.
  bool done() const;

  class Impl;  // client/src: not part of the API.

 private:
  explicit Subscription(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace errand
