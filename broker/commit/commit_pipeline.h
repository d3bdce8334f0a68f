#pragma once

#include <absl/base/thread_annotations.h>
#include <absl/status/status.h>
#include <absl/synchronization/mutex.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "errand/v1/job.pb.h"
#include "metrics/histogram.h"
#include "store/job_store.h"

namespace errand::commit {

// How writes reach the disk.
enum class SyncMode {
  // --commit=sync: every write is fsynced before it is acknowledged.
  kAlways,
  // --commit=async: acknowledged once in the WAL (survives a process crash);
  // fsynced in the background at least every sync interval.
  kInterval,
};

// Which column family an operation touches.
enum class Cf { kJobs, kEvents, kDefault };

// One key-value change. `value` empty (nullopt) deletes the key.
struct WriteOp {
  Cf cf;
  std::string key;
  std::optional<std::string> value;
};

// A unit the caller wants committed atomically.
struct Mutation {
  std::vector<WriteOp> ops;
  // Events appended to the event log in the same write. The pipeline gives
  // them their sequence numbers when it builds the group, and only a group
  // that committed consumes numbers, so the log has no gaps even when a
  // write fails.
  std::vector<v1::Event> events;
  // Acknowledge only after fsync.
  bool sync = true;
};

struct CommitResult {
  absl::Status status;
  // True when the write was fsynced before this result was delivered.
  bool synced = false;
  // RocksDB sequence number after the group's write.
  uint64_t commit_seq = 0;
  // The sequence numbers given to the mutation's events: first_event_seq
  // .. first_event_seq + event_count - 1 (0 and 0 without events or on
  // failure). The events themselves go to the event sink.
  uint64_t first_event_seq = 0;
  uint32_t event_count = 0;
};

// The group-commit pipeline. Two threads (or one and the posting thread, see
// Options::write_on_post_thread):
//  - the writer takes every mutation queued while it was busy, gives their
//    events sequence numbers and writes them as one RocksDB WriteBatch to the
//    WAL, without fsync. Results of mutations that did not ask for sync are
//    delivered at once, through `post` (the broker passes "post to core");
//    the others are handed to the syncer.
//  - the syncer fsyncs the WAL (DB::SyncWAL) for every group handed over
//    since its previous fsync, then delivers their results.
// Concurrent sync writers share fsyncs (under load the number of fsyncs per
// write falls well below one), and an async write (a lease, say) is
// acknowledged as soon as it is written, not after the fsync of its group.
// A write may run while the previous group's fsync is in progress (see
// JobStore): groups do not wait for each other's fsyncs.
//
// Events: every committed event goes to the event sink (through `post`),
// never to the result. In kAlways mode an event is handed on only once it is
// fsynced, even when its mutation was acknowledged before (a lease): a
// sequence number a subscriber saw is never lost to a power cut and reused.
// Such events wait up to Options::event_fsync_delay for the fsync of a sync
// write rather than cost an fsync of their own.
// In kInterval mode events go out with their write, as the mode promises.
//
// Ordering: results of one group are delivered in submission order, but an
// async result may be delivered before the result of an earlier sync write
// that is still being fsynced, and the same holds for events: the caller must
// not depend on the order of results of independent mutations, and the event
// sink must put events back in sequence order (the EventHub does). A write
// that is written but not yet fsynced is visible to RocksDB reads; it is
// acknowledged only after the fsync.
//
// A failed fsync (or a write error after the write, e.g. a full disk) holds
// the sync results: the syncer retries every 100 ms, and JobStore::SyncWAL
// recovers the store once it can (RocksDB then flushes the memtables, which
// makes the held writes durable), so they are acknowledged only when
// durable. After 2 s (or at Stop) they get the error instead, with
// "not known to be durable" in its message: the write may still reach the
// disk.
//
// Thread: Submit may be called from any thread. The mutexes guard the queues
// only; writes and fsyncs run outside them.
class CommitPipeline {
 public:
  using Done = std::function<void(CommitResult&&)>;
  using Post = std::function<void(std::function<void()>)>;
  using EventSink = std::function<void(std::vector<v1::Event>&&)>;

  struct Options {
    SyncMode mode = SyncMode::kAlways;
    // kInterval: longest time an acknowledged write stays unsynced.
    std::chrono::milliseconds sync_interval{100};
    // Most mutations in one group (bounds the latency of a group).
    size_t max_group = 4096;
    // Event log retention: the log is trimmed (oldest first, about once a
    // second) to at most this many events... Default: 1,000,000.
    uint64_t max_events = 1'000'000;
    // ...and to events younger than this (the newest event is always kept,
    // so that sequence numbers continue after a restart). Default: 24h.
    std::chrono::microseconds max_event_age{std::chrono::hours(24)};
    // Write on the thread that runs `post`'s closures instead of on a
    // writer thread. The first Submit after a write posts a flush; the flush
    // takes every mutation queued by then, writes them as one group and runs
    // the results of the unsynced ones at once, in the same closure: such a
    // write costs no hand-off between threads at all (the broker's core is
    // that thread: a lease in sync mode, every write in async mode). The
    // syncer thread still fsyncs (sync mutations, and the interval sync of
    // kInterval mode) and trims the event log. A write never waits for an
    // fsync in progress (see JobStore), so the posting thread is held only
    // for the write itself. The broker sets it; false keeps a writer thread
    // (for a `post` that must not do I/O). Default: false.
    bool write_on_post_thread = false;
    // kAlways: how long the events of async writes (a lease's, progress)
    // may wait for an fsync that a sync write asks for anyway, before the
    // syncer fsyncs for them alone. A lease is followed by its job's
    // complete or fail, a sync write, most of the time: its event then
    // rides that fsync, and the complete does not queue behind an fsync
    // done for the lease alone. Zero: fsync for them at once.
    std::chrono::microseconds event_fsync_delay{std::chrono::milliseconds(5)};
    // How the syncer thread hands over the results of the writes it fsynced.
    // Empty: `post`. It may run them in place, on the syncer thread (the
    // broker's does when core is idle): the next fsync then starts once
    // they ran, and the writes that came meanwhile join it.
    Post deliver_post;
  };

  struct Stats {
    uint64_t writes = 0;   // mutations committed
    uint64_t groups = 0;   // RocksDB writes
    uint64_t fsyncs = 0;   // synced writes + background WAL syncs
    uint64_t failed = 0;   // mutations whose write failed
    // WAL syncs that failed (a stopped store: full disk); retried.
    uint64_t failed_syncs = 0;
  };

  // `store` must outlive the pipeline. `post` runs the result closures; it
  // must not block. `last_event_seq` is the highest event sequence number
  // already stored.
  CommitPipeline(store::JobStore* store, Options options, Post post, uint64_t last_event_seq,
                 uint64_t first_event_seq = 0);
  ~CommitPipeline();
  CommitPipeline(const CommitPipeline&) = delete;
  CommitPipeline& operator=(const CommitPipeline&) = delete;

  // Where committed events go (run through `post`; batches may arrive out of
  // sequence order, see above). Without a sink they are dropped.
  // REQUIRES: before Start.
  void SetEventSink(EventSink sink) { sink_ = std::move(sink); }

  // Starts the commit thread. Mutations submitted before Start form the first
  // group.
  void Start();

  // Queues `m`; `done` later runs (through `post`) with the outcome. After
  // Stop, `done` gets UNAVAILABLE.
  void Submit(Mutation m, Done done);

  // Commits everything queued, fsyncs the WAL and joins the thread.
  void Stop();

  Stats stats() const;
  // True when nothing is queued or being written, and the results of every
  // committed write have been handed to `post`. Thread: any.
  bool Idle() const;
  // The sequence number of the last committed event.
  uint64_t last_event_seq() const { return committed_event_seq_.load(); }
  // The oldest retained event's sequence number (0 while the log is empty).
  // Thread: any.
  uint64_t first_event_seq() const { return first_event_seq_.load(); }
  // Trims the event log now (normally done by the commit thread). Thread:
  // the commit thread, or any thread before Start / after Stop.
  void TrimEvents();
  const Options& options() const { return options_; }

  // Metrics. Mutations per group written (one RocksDB write each), and the
  // duration of every WAL fsync (the syncer's, or async mode's background
  // sync), in seconds. Thread: any.
  const metrics::Histogram& group_sizes() const { return group_sizes_; }
  const metrics::Histogram& fsync_seconds() const { return fsync_seconds_; }
  // True while the latest write failed (e.g. disk full): writes are being
  // refused. Thread: any.
  bool write_failing() const { return write_failing_.load(std::memory_order_relaxed); }

 private:
  struct Item {
    Mutation mutation;
    Done done;
  };

  // A written mutation's result (`done` empty: only events to hand on).
  struct Pending {
    Done done;
    CommitResult result;
    std::vector<v1::Event> events;
  };

  // Runs `pending`'s results (with `synced`, or with `error`) and then
  // hands their events to the sink: through `post`, or right here when
  // `inline_results` (the caller runs on the posting thread).
  void Deliver(std::vector<Pending> pending, bool synced, const absl::Status& error,
               bool inline_results = false);
  static void RunResults(std::vector<Pending>& pending, bool synced, const absl::Status& error,
                         const EventSink& sink);

  // Starts the syncer (and the writer thread unless write_on_post_thread).
  void StartThreadsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Run();
  void RunSyncer();
  void CommitGroup(std::vector<Item>& group, bool inline_results);
  // write_on_post_thread: the posted flush (runs on the posting thread).
  void Flush();
  // Takes up to max_group queued mutations into `group`.
  void TakeGroupLocked(std::vector<Item>& group) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves every write waiting for an fsync into `batch` (the syncer's).
  void TakeToSyncLocked(std::vector<Pending>& batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(sync_mu_);
  // The event log trim (about once a second) and kInterval's background
  // fsync, when due (all of it when `final`). Thread: the writer, or the
  // syncer with write_on_post_thread.
  void Housekeep(bool final);
  // When the housekeeping thread should next wake.
  std::chrono::steady_clock::time_point NextHousekeeping() const;
  void NoteUnsynced();

  store::JobStore* const store_;
  const Options options_;
  const Post post_;
  const Post deliver_post_;  // results of fsynced writes (Options::deliver_post)
  EventSink sink_;

  mutable absl::Mutex mu_;
  std::vector<Item> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool committing_ ABSL_GUARDED_BY(mu_) = false;
  bool flush_posted_ ABSL_GUARDED_BY(mu_) = false;  // write_on_post_thread

  // Written mutations waiting for an fsync, and whether the syncer is busy.
  mutable absl::Mutex sync_mu_ ABSL_ACQUIRED_AFTER(mu_);
  std::vector<Pending> to_sync_ ABSL_GUARDED_BY(sync_mu_);
  // How many of to_sync_ carry a result (a sync write), not events alone.
  size_t to_sync_results_ ABSL_GUARDED_BY(sync_mu_) = 0;
  bool syncing_ ABSL_GUARDED_BY(sync_mu_) = false;
  bool sync_stop_ ABSL_GUARDED_BY(sync_mu_) = false;
  // write_on_post_thread: a write left the WAL unsynced (wakes the syncer).
  bool unsynced_noted_ ABSL_GUARDED_BY(sync_mu_) = false;
  std::thread syncer_;

  // When the oldest write not yet fsynced was written (steady clock, in
  // nanoseconds since its epoch); 0 when every write is fsynced.
  std::atomic<int64_t> unsynced_since_ns_{0};

  uint64_t event_seq_ = 0;  // whoever writes (one at a time: committing_)
  std::atomic<uint64_t> committed_event_seq_{0};
  std::atomic<uint64_t> first_event_seq_{0};
  std::chrono::steady_clock::time_point last_trim_{};
  std::atomic<uint64_t> writes_{0}, groups_{0}, fsyncs_{0}, failed_{0};
  std::atomic<uint64_t> failed_syncs_{0};
  metrics::Histogram group_sizes_{metrics::Histogram::PowersOfTwo(4096)};
  metrics::Histogram fsync_seconds_{metrics::Histogram::Exponential(0.0001, 2, 15)};
  std::atomic<bool> write_failing_{false};
  std::thread thread_;
};

}  // namespace errand::commit
