#pragma once

#include <absl/base/thread_annotations.h>
#include <absl/synchronization/mutex.h>
#include <grpcpp/grpcpp.h>

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
template <class Reactor, class Response>
class StreamWriter {
 public:
  // Builds the next message from `queued` (never empty) into `out`, taking
  // what it packs off `queued`.
  using Pack = std::function<void(std::vector<Response>& queued, Response* out)>;

  // `on_broken` runs (on gRPC's thread) when a write failed.
  StreamWriter(Reactor* reactor, Pack pack, std::function<void()> on_broken)
      : reactor_(reactor), pack_(std::move(pack)), on_broken_(std::move(on_broken)) {}

  // Packs every queued message into one, the first as is and the rest into
  // its repeated field `more` (as EnqueueStreamResponse does).
  static void PackIntoMore(std::vector<Response>& queued, Response* out) {
    *out = std::move(queued.front());
    for (size_t i = 1; i < queued.size(); ++i) *out->add_more() = std::move(queued[i]);
    queued.clear();
  }
  // One message per write.
  static void PackOne(std::vector<Response>& queued, Response* out) {
    *out = std::move(queued.front());
    queued.erase(queued.begin());
  }

  // Queues `msg`; starts a write when none is in flight.
  void Send(Response msg) {
    {
      absl::MutexLock lock(&mu_);
      if (finishing_ || broken_) return;
      queued_.push_back(std::move(msg));
      if (writing_ || !NextLocked()) return;
    }
    Issue();
  }

  // Call from the reactor's OnWriteDone.
  void OnWriteDone(bool ok) {
    bool broke = false;
    bool issue = false;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok && !broken_) {
        broken_ = broke = true;
        queued_.clear();
      }
      issue = NextLocked();
    }
    if (issue) Issue();
    if (broke && on_broken_) on_broken_();
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
  absl::Mutex mu_;
  std::vector<Response> queued_ ABSL_GUARDED_BY(mu_);
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
