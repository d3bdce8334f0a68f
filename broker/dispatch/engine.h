#pragma once

#include <absl/status/status.h>
#include <absl/container/btree_map.h>
#include <absl/container/btree_set.h>
#include <absl/container/flat_hash_map.h>
#include <absl/container/flat_hash_set.h>
#include <absl/hash/hash.h>
#include <absl/status/statusor.h>

#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "broker/store/records.pb.h"
#include "commit/commit_pipeline.h"
#include "dispatch/backoff.h"
#include "dispatch/deadline_set.h"
#include "dispatch/packed_job.h"
#include "dispatch/ready_queue.h"
#include "dispatch/wait_deadlines.h"
#include "store/job_store.h"
#include "errand/v1/admin.pb.h"
#include "errand/v1/jobs.pb.h"
#include "errand/v1/workers.pb.h"
#include "util/clock.h"

namespace errand::dispatch {

// SUCCEEDED, DEAD and CANCELLED.
bool IsTerminal(v1::JobState s);

struct EngineOptions {
  // Lease given to a delivery when neither the job nor the worker names one.
  // Default: 30s.
  std::chrono::microseconds default_lease{std::chrono::seconds(30)};
  // Attempts before a failing job becomes DEAD when the job names none.
  // Default: 5.
  uint32_t default_max_attempts = 5;
  // Retry backoff when the job's policy leaves a field unset.
  BackoffPolicy default_backoff;
  // Durability of writes whose request says DURABILITY_UNSPECIFIED, and of
  // completions and failures. Default: true (--commit=sync).
  bool sync_by_default = true;
  // Longest error message stored per attempt; longer ones are truncated.
  // Default: 4096.
  size_t max_error_bytes = 4096;
  // How long finished jobs (SUCCEEDED, DEAD, CANCELLED) are kept when the
  // job names no retention (--retention). Default: 7 days.
  std::chrono::microseconds retention{std::chrono::hours(24 * 7)};
  // How long an idempotency key keeps answering with its job
  // (--idempotency-window). Default: 24h.
  std::chrono::microseconds idempotency_window{std::chrono::hours(24)};
  // Most non-terminal jobs per queue; 0: no limit (--max-queue-depth).
  // Default: 1,000,000.
  uint64_t max_queue_depth = 1'000'000;
  // Most finished jobs deleted by one retention sweep (one write); the next
  // sweep starts once it committed. Default: 1000.
  size_t retention_batch = 1000;
  // After this many deleted jobs (retention, purge), request_compaction is
  // called. Default: 10000.
  uint64_t compact_after_deletes = 10000;
  // Asks the store to compact the jobs column family. Called on core: must
  // return at once (the store compacts on its own thread). Default: none.
  std::function<void()> request_compaction;
  // How a timer's expiry enters core. The engine's timers run on the
  // io_context given to the constructor; when core is more than that
  // context's thread (the broker's util::CoreExecutor), this hands the
  // expiry to core. Empty: run it on the io_context's thread.
  std::function<void(std::function<void()>)> on_core;
};

// What a committed enqueue reports.
struct EnqueueOutcome {
  // One per request, in order: the new job's id, or the original job's id
  // when the request's idempotency key matched.
  std::vector<std::string> job_ids;
  bool synced = false;
  uint64_t commit_seq = 0;
  // One per request: true when it was answered with an existing job.
  std::vector<bool> duplicate;
  // One per request: for duplicates, the existing job as it is now (else
  // empty).
  std::vector<v1::Job> jobs;
};

// One page of Engine::ListJobs.
struct ListSpec {
  std::string queue;
  // UNSPECIFIED: every state.
  v1::JobState state = v1::JOB_STATE_UNSPECIFIED;
  bool newest_first = false;
  // REQUIRES: >= 1.
  uint32_t page_size = 100;
  // Start after this job id in the chosen order (a previous page's `next`);
  // 0: from the start.
  uint64_t after = 0;
  bool omit_payload = false;
  // Most jobs examined per page (bounds the work on core when a state
  // filter skips many).
  size_t max_scan = 10000;
};

struct ListPage {
  std::vector<v1::Job> jobs;
  // Pass as ListSpec::after for the next page; 0 on the last page.
  uint64_t next = 0;
};

struct LeaseSpec {
  std::vector<std::string> queues;
  uint32_t max_jobs = 1;
  std::chrono::microseconds wait{0};
  // 0: each job's own lease duration.
  std::chrono::microseconds lease_duration{0};
  std::string worker_id;
};

struct FailSpec {
  std::string error;
  // 0: the job's backoff policy.
  std::chrono::microseconds retry_after{0};
  bool non_retryable = false;
};

struct ExtendOutcome {
  util::Clock::TimePoint deadline;
  bool cancel_requested = false;
};

// The Engine is the broker's in-memory state machine: the job table, the
// ready queues, scheduled jobs, leases and long-polling workers. Every state
// change is written through the CommitPipeline and applied to memory only
// once committed, so reads never see an uncommitted state and a crash never
// loses an acknowledged one.
//
// While a job has a write in flight it is "busy": further operations on it
// wait in that job's queue and run, in order, once the write lands.
//
// Memory holds each job's hot fields (PackedJob); a job's whole record is
// held only while the engine works on it (leased, or a write in flight).
// The rest is read from the store when a whole job is needed: a point read
// of a committed record (GetJob of a READY job, a lease, a cancel...).
//
// Thread: core. Every method, and every callback it invokes, runs on the
// core io_context thread; nothing here takes a lock. RocksDB is read here
// (point reads, and the recovery scan, which runs before the broker
// serves); writes go through the CommitPipeline.
class Engine {
 public:
  using EnqueueDone = std::function<void(absl::StatusOr<EnqueueOutcome>)>;
  using LeaseDone = std::function<void(absl::StatusOr<std::vector<v1::Lease>>)>;
  using JobDone = std::function<void(absl::StatusOr<v1::Job>)>;
  using ExtendDone = std::function<void(absl::StatusOr<ExtendOutcome>)>;

  // `core`, `clock`, `store` and `pipeline` (which writes to `store`) must
  // outlive the Engine.
  Engine(asio::io_context& core, const util::Clock& clock, store::JobStore& store,
         commit::CommitPipeline* pipeline, EngineOptions options, uint64_t boot_epoch);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Loads every stored job's hot fields. Run once, before Start, from any
  // one thread.
  absl::Status Recover();

  // Arms the timers and settles jobs that were leased when the broker last
  // stopped (they become READY again, or DEAD when that was their last
  // attempt). Thread: core.
  void Start();

  // Refuses new work with UNAVAILABLE and answers every waiting Lease call
  // with UNAVAILABLE. Writes already in flight still complete.
  void Shutdown();

  // REQUIRES: every request is valid (service/validate.h). All of them are
  // committed in one write, or none is.
  void Enqueue(std::vector<v1::EnqueueRequest> requests, v1::Durability durability,
               EnqueueDone done);

  // The job's committed state; NOT_FOUND when unknown.
  absl::StatusOr<v1::Job> GetJob(uint64_t id) const;

  // The queue of a known job, or nullptr; valid until the next call into
  // the engine. Cheap (no copy): used by per-queue token checks.
  const std::string* JobQueue(uint64_t id) const;

  // Leases up to spec.max_jobs ready jobs, waiting up to spec.wait for the
  // first. Returns an id for CancelLeaseWait when the call waits, else 0.
  uint64_t Lease(LeaseSpec spec, LeaseDone done);
  // Ends a waiting Lease (its client went away) without answering it.
  // Returns false when the call no longer waits (it is being answered).
  bool CancelLeaseWait(uint64_t waiter_id);

  // Ends the lease `lease_token` of job `id` now, as if it had expired,
  // recording `outcome` (e.g. WORKER_LOST when a Connect stream dropped).
  // A no-op when the token is no longer current.
  void ReleaseLease(uint64_t id, uint64_t lease_token, v1::AttemptOutcome outcome);

  // Long poll for a terminal state: `done(job, terminal)` runs when the job
  // becomes SUCCEEDED, DEAD or CANCELLED, or when `timeout` passes (then with
  // the current state and terminal=false). Returns an id for CancelWaitJob
  // when the call waits, else 0.
  using WaitDone = std::function<void(absl::StatusOr<v1::Job>, bool terminal)>;
  uint64_t WaitJob(uint64_t id, std::chrono::microseconds timeout, WaitDone done);
  // Withdraws a waiting WaitJob without answering it; false if not waiting.
  bool CancelWaitJob(uint64_t waiter_id);
  size_t waiting_jobs() const { return job_waiters_.size(); }

  using StatusDone = std::function<void(absl::Status)>;
  using CountDone = std::function<void(absl::StatusOr<uint64_t>)>;

  // Cancels a job. READY/SCHEDULED: committed CANCELLED (event
  // EVENT_TYPE_CANCELLED), never delivered afterwards. LEASED: committed
  // with cancel_requested (EVENT_TYPE_CANCEL_REQUESTED); the job ends
  // CANCELLED on Fail or when its lease ends, SUCCEEDED on Complete.
  // `reason` becomes the job's error. `done` gets the job as committed;
  // NOT_FOUND, or FAILED_PRECONDITION for a terminal job.
  void Cancel(uint64_t id, std::string reason, JobDone done);

  // Pauses (leases nothing; waiting Lease calls keep waiting) or resumes a
  // queue. The state is committed (synced) to the queue's record before it
  // applies and `done` runs; it survives restarts.
  void SetPaused(const std::string& queue, bool paused, StatusDone done);
  // Sets the most jobs per non-empty concurrency_key LEASED at once in
  // `queue` (0: no limit); committed like SetPaused.
  void SetQueueConfig(const std::string& queue, uint32_t max_leased_per_key, StatusDone done);

  // Deletes every READY and SCHEDULED job of `queue` that has no write in
  // flight (records included; event EVENT_TYPE_DELETED each) and answers
  // how many.
  void Purge(const std::string& queue, CountDone done);

  // Makes DEAD jobs READY again (attempts 0, history kept, event
  // EVENT_TYPE_REDRIVEN): `ids`, or every DEAD job of `queue` when `ids` is
  // empty. With `ids`, each must exist (NOT_FOUND), be in `queue` when it is
  // not empty (INVALID_ARGUMENT) and be DEAD (FAILED_PRECONDITION); on such
  // an error nothing changes. `payload` replaces each job's payload.
  // Answers how many were redriven.
  void Redrive(const std::string& queue, std::vector<uint64_t> ids,
               std::optional<std::string> payload, CountDone done);

  // One page of the jobs of a queue (committed state), by creation order.
  ListPage ListJobs(const ListSpec& spec) const;

  // Finished jobs waiting for their retention to end.
  size_t retained_jobs() const { return expiries_.size(); }
  // Jobs deleted (retention, purge) since start.
  uint64_t deleted_jobs() const { return deleted_total_; }

  void Complete(uint64_t id, uint64_t lease_token, std::string result, JobDone done);
  void Fail(uint64_t id, uint64_t lease_token, FailSpec spec, JobDone done);
  void Extend(uint64_t id, uint64_t lease_token, std::chrono::microseconds extend_by,
              std::optional<v1::Progress> progress, ExtendDone done);

  // Exact per-state counts of one queue (zeroes for an unknown queue).
  v1::QueueStats QueueStats(const std::string& queue) const;
  std::vector<v1::QueueStats> ListQueues() const;
  size_t job_count() const { return jobs_.size(); }
  // Per queue, since start: leases granted, and leases that ended without
  // Complete or Fail (deadline passed, or a Connect stream's grace ran out).
  struct LeaseTotals {
    uint64_t leased = 0;
    uint64_t expired = 0;
  };
  std::map<std::string, LeaseTotals> LeaseTotalsByQueue() const;
  size_t waiting_leases() const { return waiters_.size(); }

  // Processes due leases and scheduled jobs. The timers call this; tests
  // driving a FakeClock call it directly.
  void OnTimer();

 private:
  // A timer handler that runs `h` in core (EngineOptions::on_core).
  template <typename H>
  auto OnCore(H h) {
    return [this, h = std::move(h)](const std::error_code& ec) mutable {
      EnterCore([h, ec]() mutable { h(ec); });
    };
  }
  // Runs `fn` in core (EngineOptions::on_core), from a timer's handler.
  void EnterCore(std::function<void()> fn) {
    if (options_.on_core) {
      options_.on_core(std::move(fn));
    } else {
      fn();
    }
  }

  struct QueueState;

  // One per job: millions may be held, so the committed job is kept packed
  // (its wire bytes and hot fields, see packed_job.h; Load() parses it).
  struct JobEntry {
    // Committed state (SCHEDULED->READY promotion is in memory only). Its
    // bytes are held while the job is LEASED or busy, and after a failed
    // write (pinned); otherwise the store's record is the job.
    PackedJob job;
    uint64_t id = 0;
    uint64_t lease_token = 0;
    util::Clock::TimePoint lease_deadline{};
    util::Clock::TimePoint run_at{};
    uint64_t ready_seq = 0;  // while READY; it became ready at ReadySince()
    QueueState* queue = nullptr;
    bool busy = false;
    // A write of this job failed: its record in the store may be ahead of
    // memory (written, then the fsync failed), so the bytes stay held until
    // a write of it succeeds.
    bool pinned = false;
    // While finished: when retention deletes it (in expiries_).
    bool expiring = false;
    util::Clock::TimePoint expire_at{};
    // Work waiting for the write in flight, and WaitJob calls: most jobs
    // never have either, so they live apart, made on first use (two empty
    // vectors in every entry cost 48 bytes per job).
    struct Waiting {
      std::vector<std::function<void()>> deferred;
      std::vector<uint64_t> waiters;  // WaitJob calls
    };
    std::unique_ptr<Waiting> waiting;
    Waiting& Wait() {
      if (!waiting) waiting = std::make_unique<Waiting>();
      return *waiting;
    }
    // While READY: when it became ready (its run_at, or its last write when
    // that came later; neither changes while it stays READY).
    util::Clock::TimePoint ReadySince() const { return std::max(run_at, job.updated_at()); }
    // Drops `waiter` from the WaitJob calls, if there.
    void Unwait(uint64_t waiter) {
      if (!waiting) return;
      auto& w = waiting->waiters;
      w.erase(std::remove(w.begin(), w.end(), waiter), w.end());
    }
    // Entries come from a pool: 112 bytes each, not a 128-byte heap chunk.
    static void* operator new(size_t size);
    static void operator delete(void* p);
  };

  // jobs_ keys its entries by their id, without a copy of the id.
  struct EntryHash {
    using is_transparent = void;
    size_t operator()(uint64_t id) const { return absl::Hash<uint64_t>{}(id); }
    size_t operator()(const JobEntry* e) const { return (*this)(e->id); }
  };
  struct EntryEq {
    using is_transparent = void;
    static uint64_t IdOf(uint64_t id) { return id; }
    static uint64_t IdOf(const JobEntry* e) { return e->id; }
    template <typename A, typename B>
    bool operator()(const A& a, const B& b) const {
      return IdOf(a) == IdOf(b);
    }
  };

  struct JobWaiter {
    uint64_t job_id = 0;
    WaitDone done;
    WaitDeadlines::Time until;  // in job_waits_
  };

  struct QueueState {
    std::string name;
    // Every READY job not picked by a lease being committed, by
    // concurrency_key ("" for jobs without one; a key with none is absent).
    // Keys take turns (round-robin after rr_last) within one priority.
    std::map<std::string, ReadyQueue> ready_by_key;
    // The same jobs by the order they became ready: ready_seq -> job id.
    // (16 bytes per job; the oldest answers QueueStats' oldest_ready_age.)
    absl::btree_map<uint64_t, uint64_t> ready_by_seq;
    std::string rr_last;
    // Jobs LEASED, or picked for a lease being committed, per non-empty key.
    std::unordered_map<std::string, uint32_t> leased_by_key;
    absl::btree_set<uint64_t> ids;  // every job of the queue (id order = creation order)
    uint64_t pending = 0;         // jobs in enqueues not yet committed
    std::list<uint64_t> waiters;  // Lease calls waiting on this queue, oldest first
    uint64_t counts[7] = {};      // by JobState
    uint64_t total_enqueued = 0, total_succeeded = 0, total_failed = 0, total_dead = 0;
    uint64_t total_leased = 0, total_lease_expired = 0;  // for metrics
    // Committed settings, and the record including writes in flight.
    bool paused = false;
    uint32_t max_leased_per_key = 0;
    store::QueueRecord desired;
  };

  struct IdemEntry {
    uint64_t job_id = 0;
    util::Clock::TimePoint created{};
  };

  struct Waiter {
    LeaseSpec spec;
    LeaseDone done;
    WaitDeadlines::Time until;  // in lease_waits_
    std::vector<std::pair<QueueState*, std::list<uint64_t>::iterator>> links;
  };

  // Ready-queue membership (both indexes).
  void ReadyPush(JobEntry& e);
  bool ReadyErase(JobEntry& e);
  // The job the queue would lease next (fairness and pause applied).
  std::optional<ReadyQueue::Entry> PickNext(const QueueState& q) const;
  bool HasLeasable(const QueueState& q) const { return PickNext(q).has_value(); }
  // Removes a job from memory after its record was deleted; answers its
  // waiters and runs its deferred operations (which then find no job).
  void EraseJob(uint64_t id);
  // REQUIRES: `job` is e's committed job (its retention and finish time).
  void UpdateExpiry(JobEntry& e, const v1::Job& job);
  void SweepRetention(util::Clock::TimePoint now);
  void NoteDeleted(uint64_t n);
  void UpdateQueueRecord(const std::string& name,
                         const std::function<void(store::QueueRecord&)>& change, StatusDone done);
  // The job after a cancelled LEASED job's attempt ended.
  v1::Job CancelledJob(v1::Job job, const std::string& attempt_error) const;
  std::string IdemKey(const std::string& queue, const std::string& key) const {
    return queue + '\n' + key;
  }
  void FireJobWaiters(JobEntry& e);
  QueueState& Queue(const std::string& name);
  JobEntry* Find(uint64_t id) const;
  uint64_t NextJobId();
  uint64_t NextLeaseToken() { return (boot_epoch_ << 32) | ++lease_counter_; }

  // Runs `fn` now, or after the job's in-flight write lands.
  void WithJob(JobEntry& e, std::function<void()> fn);
  void ReleaseJob(JobEntry& e);

  // Moves the job's in-memory state (and the per-state counts) to `job`,
  // holding its bytes (Settle drops them).
  void ApplyJob(JobEntry& e, const v1::Job& job);
  // The job's committed state, parsed, with its in-memory state and (while
  // leased) its current lease deadline: from the held bytes, else from the
  // store.
  absl::StatusOr<v1::Job> Load(const JobEntry& e) const;
  // As Load, REQUIRES e.job.held().
  v1::Job Held(const JobEntry& e) const;
  // Sets `job`'s lease deadline from memory while it is leased.
  void ShowLease(const JobEntry& e, v1::Job* job) const;
  // As Load, and holds the bytes: call before a write of the job (a read
  // while the write is in flight must not see the store's newer record).
  absl::StatusOr<v1::Job> Hold(JobEntry& e);
  // Drops the bytes of a job nobody works on (not busy, not LEASED, not
  // pinned): the store has its record.
  void Settle(JobEntry& e);
  void SetState(JobEntry& e, v1::JobState state);
  // Places a committed READY or SCHEDULED job in the ready queue or the
  // schedule, and wakes waiters.
  void Place(JobEntry& e);
  void MakeReady(JobEntry& e);
  void Dispatch(QueueState& q);
  void StartLease(LeaseSpec spec, LeaseDone done);
  // Undoes StartLease's pick of a READY job: back in its place in the ready
  // queue, its concurrency key's count released.
  void UnpickJob(JobEntry& e);
  void RemoveWaiter(uint64_t waiter_id, Waiter* out);
  // Waiting Lease and WaitJob calls whose wait ran out: answered as a timeout.
  void LeaseWaitsDue(std::vector<uint64_t> waiter_ids);
  void JobWaitsDue(std::vector<uint64_t> waiter_ids);

  // Builds the write of `job` (with `lease_token`) plus its event.
  commit::Mutation JobMutation(const v1::Job& job, uint64_t lease_token, v1::EventType type,
                               bool sync) const;
  v1::Event MakeEvent(const v1::Job& job, v1::EventType type) const;

  // `job` (LEASED) after its current attempt ended with `outcome`: retried
  // (SCHEDULED or READY) or DEAD.
  v1::Job EndAttempt(v1::Job job, v1::AttemptOutcome outcome, const std::string& error,
                     std::chrono::microseconds retry_after, bool non_retryable,
                     bool immediate_retry);
  void ExpireLease(uint64_t id, v1::AttemptOutcome outcome);
  // Commits `job` for entry `e` (busy meanwhile) and applies it on success.
  void CommitJob(JobEntry& e, v1::Job job, v1::EventType type, bool sync,
                 std::function<void(const absl::Status&, JobEntry&)> then);

  void ArmTimers();
  BackoffPolicy PolicyOf(const v1::Job& job) const;
  std::string Truncate(const std::string& s) const;
  absl::Status Check(const JobEntry& e, uint64_t lease_token) const;

  asio::io_context& core_;
  const util::Clock& clock_;
  store::JobStore& store_;
  commit::CommitPipeline* const pipeline_;
  const EngineOptions options_;
  const uint64_t boot_epoch_;

  // Every job, by id. Owns its entries (EraseJob and ~Engine delete them):
  // they stay put (their addresses are held while writes are in flight),
  // and the table itself is flat, ~9-18 bytes per job.
  absl::flat_hash_set<JobEntry*, EntryHash, EntryEq> jobs_;
  std::map<std::string, QueueState> queues_;
  std::unordered_map<uint64_t, Waiter> waiters_;
  std::unordered_map<uint64_t, JobWaiter> job_waiters_;
  DeadlineSet leases_;
  DeadlineSet scheduled_;
  DeadlineSet expiries_;  // finished jobs by retention end
  bool retention_in_flight_ = false;
  uint64_t deletes_since_compact_ = 0;
  uint64_t deleted_total_ = 0;
  // Idempotency keys (IdemKey) of committed jobs, and of enqueues in flight
  // with the calls that wait for them.
  std::unordered_map<std::string, IdemEntry> idem_;
  std::unordered_map<std::string, std::vector<std::function<void()>>> pending_keys_;
  std::vector<uint64_t> restarted_leases_;

  uint64_t last_job_id_ = 0;
  uint64_t lease_counter_ = 0;
  uint64_t ready_counter_ = 0;
  uint64_t waiter_counter_ = 0;
  bool stopping_ = false;
  std::mt19937_64 rng_;

  asio::steady_timer timer_;
  std::optional<util::Clock::TimePoint> timer_at_;
  // When waiting Lease and WaitJob calls run out (real time, not clock_).
  WaitDeadlines lease_waits_;
  WaitDeadlines job_waits_;
};

}  // namespace errand::dispatch
