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
  // The mutation's events with their sequence numbers (empty on failure).
  std::vector<v1::Event> events;
};

// The group-commit pipeline: a single thread takes every mutation queued
// while the previous group was being written, writes them as one RocksDB
// WriteBatch with one (optional) fsync, and delivers all their results in one
// closure through `post` (the broker passes "post to core").
//
// Concurrent sync writers therefore share fsyncs: under load the number of
// fsyncs per write falls well below one.
//
// Thread: Submit may be called from any thread. The mutex guards the queue
// only; the write itself runs outside it.
class CommitPipeline {
 public:
  using Done = std::function<void(CommitResult&&)>;
  using Post = std::function<void(std::function<void()>)>;

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
  };

  struct Stats {
    uint64_t writes = 0;   // mutations committed
    uint64_t groups = 0;   // RocksDB writes
    uint64_t fsyncs = 0;   // synced writes + background WAL syncs
    uint64_t failed = 0;   // mutations whose write failed
  };

  // `store` must outlive the pipeline. `post` runs the result closures; it
  // must not block. `last_event_seq` is the highest event sequence number
  // already stored.
  CommitPipeline(store::JobStore* store, Options options, Post post, uint64_t last_event_seq,
                 uint64_t first_event_seq = 0);
  ~CommitPipeline();
  CommitPipeline(const CommitPipeline&) = delete;
  CommitPipeline& operator=(const CommitPipeline&) = delete;

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
  // duration of every fsync: a synced write, or a background WAL sync, in
  // seconds. Thread: any.
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

  void Run();
  void CommitGroup(std::vector<Item>& group);

  store::JobStore* const store_;
  const Options options_;
  const Post post_;

  mutable absl::Mutex mu_;
  std::vector<Item> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool committing_ ABSL_GUARDED_BY(mu_) = false;

  // Commit thread only.
  bool unsynced_ = false;
  std::chrono::steady_clock::time_point first_unsynced_;

  uint64_t event_seq_ = 0;  // commit thread only
  std::atomic<uint64_t> committed_event_seq_{0};
  std::atomic<uint64_t> first_event_seq_{0};
  std::chrono::steady_clock::time_point last_trim_{};
  std::atomic<uint64_t> writes_{0}, groups_{0}, fsyncs_{0}, failed_{0};
  metrics::Histogram group_sizes_{metrics::Histogram::PowersOfTwo(4096)};
  metrics::Histogram fsync_seconds_{metrics::Histogram::Exponential(0.0001, 2, 15)};
  std::atomic<bool> write_failing_{false};
  std::thread thread_;
};

}  // namespace errand::commit
