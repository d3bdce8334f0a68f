#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <grpcpp/support/slice.h>

#include <asio/io_context.hpp>
#include <asio/thread_pool.hpp>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "commit/commit_pipeline.h"
#include "errand/v1/events.pb.h"
#include "errand/v1/job.pb.h"
#include "store/job_store.h"

namespace errand::hub {

// Which events a subscriber wants. Within one list, any entry matches; the
// lists combine with AND. Job events need a match in `queues` and `job_ids`
// (an empty list matches all); topic messages need a match in `topics`.
// A subscriber naming only topics gets no job events, and one naming only
// queues or job ids gets no topic messages.
struct Filter {
  std::set<std::string> queues;
  std::set<std::string> job_ids;
  std::set<std::string> topics;
  std::set<int> types;

  bool Matches(const v1::Event& e) const;
};

// Where a subscription starts.
struct Start {
  enum Kind { kNow, kAfterSeq, kOldest } kind = kNow;
  uint64_t after_seq = 0;
};

// One committed event as the hub hands it out. Every subscriber it goes to
// shares the one object (a subscriber's buffer holds a pointer, not a copy),
// and its encoding is made once for all of them.
// Immutable once made, so any thread may read it.
class SharedEvent {
 public:
  explicit SharedEvent(v1::Event event);
  SharedEvent(const SharedEvent&) = delete;
  SharedEvent& operator=(const SharedEvent&) = delete;

  const v1::Event& event() const { return event_; }

  // The event serialized (the bytes of `Event`, as a field of a response
  // carries them), made once with the object: a copy of the slice is a
  // reference, not a copy of the bytes.
  const grpc::Slice& Serialized() const { return bytes_; }

 private:
  const v1::Event event_;
  grpc::Slice bytes_;
};
using EventRef = std::shared_ptr<const SharedEvent>;

// What a subscriber is: two callbacks the hub calls on core. `send` writes
// one event (or queues it for writing). It returns false when the hub must
// wait for WriteDone(id) before it sends the next; true when the sink can
// take the next at once (a sink that returns true must not have ended the
// session, nor call WriteDone for that event). `end` finishes the stream (the
// hub forgets the subscriber first).
struct Sink {
  std::function<bool(const EventRef&)> send;
  std::function<void(const absl::Status&)> end;
};

// The EventHub fans committed events out to subscribers.
//
// Each subscriber has a bounded buffer (and its sink may queue a bounded
// number of events of its own). While it keeps up it is LIVE: events
// are appended as they commit. A subscriber whose buffer is full switches to
// CATCHUP: live events are no longer buffered for it, and once its buffer
// drains the hub reads the missed events back from the event log on disk (on
// a reader thread, never on core), then returns it to LIVE. Memory per
// subscriber is therefore bounded, and a slow reader never slows producers,
// workers or other subscribers. A subscriber that falls behind the retained
// log ends with OUT_OF_RANGE, never with a silent gap.
//
// Thread: core, except the disk reads which run on `readers`.
class EventHub {
 public:
  struct Options {
    // Events buffered per subscriber; a subscriber further behind is caught
    // up from disk. Bounds memory: 1,000 subscribers that never read hold
    // at most 64,000 references to events (plus what their sinks queue: up
    // to 64 more each for Subscribe). Live events are shared, not copied,
    // between subscribers. Default: 64.
    size_t buffer = 64;
    // Most subscribers at once. Default: 10,000.
    size_t max_subscribers = 10000;
    // Events scanned per disk read. Default: 4096.
    size_t read_scan = 4096;
    // How a disk read's result (on a `readers` thread) enters core. Empty:
    // posted to `core`'s thread.
    std::function<void(std::function<void()>)> post_to_core;
  };

  // All pointers must outlive the hub.
  EventHub(asio::io_context& core, asio::thread_pool& readers, store::JobStore* store,
           const commit::CommitPipeline* pipeline, Options options, uint64_t head_seq);
  EventHub(const EventHub&) = delete;
  EventHub& operator=(const EventHub&) = delete;

  // Fans out committed events. `events` are consecutive; batches may arrive
  // out of order (the commit pipeline acknowledges an async write before an
  // earlier sync write's fsync), so a batch is held until every lower
  // sequence number has been published: subscribers always see sequence
  // order, and head_seq() only covers events that were acknowledged.
  void Publish(const std::vector<v1::Event>& events);

  // Adds a subscriber. With `hold`, the hub buffers but does not send until
  // the first WriteDone (the caller is writing something else first).
  // Errors: OUT_OF_RANGE (after_seq older than the retained log or ahead of
  // its head), RESOURCE_EXHAUSTED (too many subscribers), UNAVAILABLE.
  absl::StatusOr<uint64_t> Subscribe(Filter filter, Start start, Sink sink, bool hold = false);
  // The subscriber's previous send completed.
  void WriteDone(uint64_t id);
  // Forgets a subscriber without calling its `end`.
  void Unsubscribe(uint64_t id);
  // Ends every subscriber with `status`.
  void Shutdown(const absl::Status& status);

  uint64_t head_seq() const { return head_seq_; }
  size_t subscribers() const { return sessions_.size(); }

  // For metrics. A subscriber's lag is the number of committed events it
  // has not been sent yet (buffered, or not yet examined; events its filter
  // skips count until examined; what its sink queued counts as sent).
  struct Stats {
    size_t subscribers = 0;
    size_t catching_up = 0;   // reading back from disk (CATCHUP)
    uint64_t max_lag = 0;     // the largest lag of any subscriber
    uint64_t total_lag = 0;   // the sum of all lags
    uint64_t cut_off = 0;     // ended with OUT_OF_RANGE since start
  };
  Stats stats() const;

 private:
  struct Session {
    uint64_t id = 0;
    Filter filter;
    Sink sink;
    // Every event with seq <= cursor has been buffered or skipped.
    uint64_t cursor = 0;
    std::deque<EventRef> buffer;
    bool live = true;
    bool in_flight = false;
    bool reading = false;
  };

  void FanOut(const std::vector<v1::Event>& events);
  void Pump(Session& s);
  void StartRead(Session& s);
  void End(uint64_t id, const absl::Status& status);

  asio::io_context& core_;
  asio::thread_pool& readers_;
  store::JobStore* const store_;
  const commit::CommitPipeline* const pipeline_;
  const Options options_;
  uint64_t head_seq_;
  uint64_t next_id_ = 0;
  bool stopping_ = false;
  uint64_t cut_off_ = 0;
  std::unordered_map<uint64_t, std::unique_ptr<Session>> sessions_;
  // Batches waiting for a lower sequence number, by their first seq.
  std::map<uint64_t, std::vector<v1::Event>> pending_;
};

}  // namespace errand::hub
