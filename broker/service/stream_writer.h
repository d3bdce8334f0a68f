#pragma once

#include <absl/base/thread_annotations.h>
#include <absl/synchronization/mutex.h>
#include <grpcpp/grpcpp.h>

#include <deque>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

namespace errand::service {

// The write side of one server bidi stream, usable from any thread.
//
// Messages queue up and go out one write at a time; the next write starts
// from OnWriteDone, on gRPC's thread, so a stream that answers from core
// costs core no wake-up per written message (each hop to core is a context
// switch on a small machine). Whatever queued while a write was in flight is
// packed into the next message by `pack`.
//
// Finish happens once, after every message queued before it was written;
// nothing is written after it (later Sends are dropped). Only the owner
// finishes the stream (so that it knows when the reactor may go away): a
// failed write drops what is queued, drops later Sends and calls
// `on_broken`, and the owner then calls Finish.
//
// gRPC operations are issued with the mutex released: gRPC may run a
// reaction in place.
//
// Lifetime: the reactor calls OnWriteDone from its own OnWriteDone. gRPC
// deletes the reactor only after it finished, and once finishing, Send and
// Finish return without touching it: the writer (kept by the core-side
// state) may outlive the reactor.
//
// `Reactor` has StartWrite(const Response*) and Finish(grpc::Status), as
// grpc::ServerBidiReactor<Request, Response> and ParsedBidiReactor do.
// What queues up is a `Queued` (by default the Response itself), made into
// the Response only when its write starts (`pack`).
template <class Reactor, class Response, class Queued = Response>
class StreamWriter {
 public:
  // Builds the next message from `queued` (never empty) into `out`, taking
  // what it packs off `queued`.
  using Pack = std::function<void(std::deque<Queued>& queued, Response* out)>;

  // `on_broken` runs (on gRPC's thread) when a write failed. `on_drained`
  // runs (on gRPC's thread, with nothing queued) after a SendBounded found
  // the queue full, once the queue has emptied; not after a failed write.
  StreamWriter(Reactor* reactor, Pack pack, std::function<void()> on_broken,
               std::function<void()> on_drained = nullptr)
      : reactor_(reactor),
        pack_(std::move(pack)),
        on_broken_(std::move(on_broken)),
        on_drained_(std::move(on_drained)) {}

  // Packs every queued message into one, the first as is and the rest into
  // its repeated field `more` (as EnqueueStreamResponse does).
  static void PackIntoMore(std::deque<Queued>& queued, Response* out) {
    *out = std::move(queued.front());
    for (size_t i = 1; i < queued.size(); ++i) *out->add_more() = std::move(queued[i]);
    queued.clear();
  }
  // One message per write.
  static void PackOne(std::deque<Queued>& queued, Response* out) {
    *out = std::move(queued.front());
    queued.pop_front();
  }

  // Queues `msg`; starts a write when none is in flight.
  void Send(Queued msg) { SendBounded(std::move(msg), 0); }

  // Queues `msg` without starting a write: a later Flush (or the end of the
  // write in flight) starts it, packing `msg` with whatever queued after it.
  // Dropped once the stream broke or is finishing.
  void Hold(Queued msg) {
    absl::MutexLock lock(&mu_);
    if (finishing_ || broken_) return;
    queued_.push_back(std::move(msg));
  }
  // Starts a write of what Hold queued, unless one is in flight.
  void Flush() {
    {
      absl::MutexLock lock(&mu_);
      if (writing_ || finished_ || !NextLocked()) return;
    }
    Issue();
  }

  // As Send. With `limit` > 0: true while fewer than `limit` messages wait
  // behind the write in flight; false when the queue reached `limit` (the
  // message is queued all the same), and then `on_drained` runs once the
  // queue has emptied: the caller holds further messages until then. Also
  // false (and no `on_drained`) once the stream broke or is finishing: what
  // it sends is dropped.
  bool SendBounded(Queued msg, size_t limit) {
    bool room = true;
    {
      absl::MutexLock lock(&mu_);
      if (finishing_ || broken_) return false;
      queued_.push_back(std::move(msg));
      if (limit > 0 && queued_.size() >= limit) {
        room = false;
        drain_wanted_ = true;
      }
      if (writing_ || !NextLocked()) return room;
      if (limit > 0 && queued_.size() < limit) {  // the write took some
        room = true;
        drain_wanted_ = false;
      }
    }
    Issue();
    return room;
  }

  // Call from the reactor's OnWriteDone.
  void OnWriteDone(bool ok) {
    bool broke = false;
    bool issue = false;
    bool drained = false;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok && !broken_) {
        broken_ = broke = true;
        queued_.clear();
      }
      issue = NextLocked();
      if (drain_wanted_ && queued_.empty() && !broken_ && !finishing_) {
        drain_wanted_ = false;
        drained = true;
      }
    }
    if (issue) Issue();
    if (broke && on_broken_) on_broken_();
    if (drained && on_drained_) on_drained_();
  }

  // Finishes the stream with `status` once everything queued so far is
  // written. Only the first call counts.
  void Finish(grpc::Status status) {
    {
      absl::MutexLock lock(&mu_);
      if (finishing_) return;
      finishing_ = true;
      status_ = std::move(status);
      if (writing_ || !NextLocked()) return;  // OnWriteDone goes on
    }
    Issue();
  }

 private:
  // With no write in flight: picks what happens next (a write of the
  // queued messages, or the finish); false when nothing is to be done.
  bool NextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!queued_.empty()) {
      writing_ = true;
      pack_(queued_, &msg_);
      next_is_finish_ = false;
      return true;
    }
    if (finishing_ && !finished_) {
      finished_ = true;
      next_is_finish_ = true;
      return true;
    }
    return false;
  }
  // Issues what NextLocked picked, with the mutex released.
  void Issue() {
    if (next_is_finish_) {
      reactor_->Finish(status_);
    } else {
      reactor_->StartWrite(&msg_);
    }
  }

  Reactor* const reactor_;
  const Pack pack_;
  const std::function<void()> on_broken_;
  const std::function<void()> on_drained_;
  absl::Mutex mu_;
  std::deque<Queued> queued_ ABSL_GUARDED_BY(mu_);
  bool drain_wanted_ ABSL_GUARDED_BY(mu_) = false;  // a SendBounded found the queue full
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;  // Finish asked for
  bool broken_ ABSL_GUARDED_BY(mu_) = false;     // a write failed
  bool finished_ ABSL_GUARDED_BY(mu_) = false;   // reactor Finish called (or about to be)
  // Written before finished_ is set and never after: read without the lock.
  grpc::Status status_;
  // Set by NextLocked for the Issue that follows it (whoever got `true`
  // from NextLocked owns msg_ and next_is_finish_ until it issued).
  bool next_is_finish_ = false;
  Response msg_;  // the message being written
};

}  // namespace errand::service
