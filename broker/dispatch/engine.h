#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>

#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "broker/store/records.pb.h"
#include "commit/commit_pipeline.h"
#include "dispatch/backoff.h"
#include "dispatch/deadline_set.h"
#include "dispatch/ready_queue.h"
#include "errand/v1/admin.pb.h"
#include "errand/v1/jobs.pb.h"
#include "errand/v1/workers.pb.h"
#include "util/clock.h"

namespace errand::dispatch {

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
};

// What a committed enqueue reports.
struct EnqueueOutcome {
  std::vector<std::string> job_ids;
  bool synced = false;
  uint64_t commit_seq = 0;
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
// Thread: core. Every method, and every callback it invokes, runs on the
// core io_context thread; nothing here takes a lock or touches RocksDB
// (except the recovery scan, which runs before the broker serves).
class Engine {
 public:
  using EnqueueDone = std::function<void(absl::StatusOr<EnqueueOutcome>)>;
  using LeaseDone = std::function<void(absl::StatusOr<std::vector<v1::Lease>>)>;
  using JobDone = std::function<void(absl::StatusOr<v1::Job>)>;
  using ExtendDone = std::function<void(absl::StatusOr<ExtendOutcome>)>;

  // `core`, `clock` and `pipeline` must outlive the Engine.
  Engine(asio::io_context& core, const util::Clock& clock, commit::CommitPipeline* pipeline,
         EngineOptions options, uint64_t boot_epoch);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Loads every stored job. Run once, before Start, from any one thread.
  absl::Status Recover(store::JobStore& store);

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

  // Leases up to spec.max_jobs ready jobs, waiting up to spec.wait for the
  // first. Returns an id for CancelLeaseWait when the call waits, else 0.
  uint64_t Lease(LeaseSpec spec, LeaseDone done);
  // Ends a waiting Lease (its client went away) without answering it.
  // Returns false when the call no longer waits (it is being answered).
  bool CancelLeaseWait(uint64_t waiter_id);

  void Complete(uint64_t id, uint64_t lease_token, std::string result, JobDone done);
  void Fail(uint64_t id, uint64_t lease_token, FailSpec spec, JobDone done);
  void Extend(uint64_t id, uint64_t lease_token, std::chrono::microseconds extend_by,
              std::optional<v1::Progress> progress, ExtendDone done);

  // Exact per-state counts of one queue (zeroes for an unknown queue).
  v1::QueueStats QueueStats(const std::string& queue) const;
  std::vector<v1::QueueStats> ListQueues() const;
  size_t job_count() const { return jobs_.size(); }
  size_t waiting_leases() const { return waiters_.size(); }

  // Processes due leases and scheduled jobs. The timers call this; tests
  // driving a FakeClock call it directly.
  void OnTimer();

 private:
  struct QueueState;

  struct JobEntry {
    v1::Job job;  // committed state (SCHEDULED->READY promotion is in memory only)
    uint64_t id = 0;
    uint64_t lease_token = 0;
    util::Clock::TimePoint lease_deadline{};
    util::Clock::TimePoint run_at{};
    uint64_t ready_seq = 0;
    util::Clock::TimePoint ready_since{};
    QueueState* queue = nullptr;
    bool busy = false;
    std::deque<std::function<void()>> deferred;
  };

  struct QueueState {
    std::string name;
    ReadyQueue ready;
    std::list<uint64_t> waiters;  // Lease calls waiting on this queue, oldest first
    uint64_t counts[7] = {};      // by JobState
    uint64_t total_enqueued = 0, total_succeeded = 0, total_failed = 0, total_dead = 0;
    bool paused = false;
  };

  struct Waiter {
    LeaseSpec spec;
    LeaseDone done;
    std::unique_ptr<asio::steady_timer> timer;
    std::vector<std::pair<QueueState*, std::list<uint64_t>::iterator>> links;
  };

  QueueState& Queue(const std::string& name);
  JobEntry* Find(uint64_t id) const;
  uint64_t NextJobId();
  uint64_t NextLeaseToken() { return (boot_epoch_ << 32) | ++lease_counter_; }

  // Runs `fn` now, or after the job's in-flight write lands.
  void WithJob(JobEntry& e, std::function<void()> fn);
  void ReleaseJob(JobEntry& e);

  // Moves the job's in-memory state (and the per-state counts) to `job`.
  void ApplyJob(JobEntry& e, v1::Job job);
  void SetState(JobEntry& e, v1::JobState state);
  // Places a committed READY or SCHEDULED job in the ready queue or the
  // schedule, and wakes waiters.
  void Place(JobEntry& e);
  void MakeReady(JobEntry& e);
  void Dispatch(QueueState& q);
  void StartLease(LeaseSpec spec, LeaseDone done);
  void RemoveWaiter(uint64_t waiter_id, Waiter* out);

  // Builds the write of `job` (with `lease_token`) plus its event.
  commit::Mutation JobMutation(const v1::Job& job, uint64_t lease_token, v1::EventType type,
                               bool sync) const;
  v1::Event MakeEvent(const v1::Job& job, v1::EventType type) const;

  // The job after attempt `e.job.attempts` ended with `outcome`: retried
  // (SCHEDULED or READY) or DEAD.
  v1::Job EndAttempt(const JobEntry& e, v1::AttemptOutcome outcome, const std::string& error,
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
  commit::CommitPipeline* const pipeline_;
  const EngineOptions options_;
  const uint64_t boot_epoch_;

  std::unordered_map<uint64_t, std::unique_ptr<JobEntry>> jobs_;
  std::map<std::string, QueueState> queues_;
  std::unordered_map<uint64_t, Waiter> waiters_;
  DeadlineSet leases_;
  DeadlineSet scheduled_;
  std::vector<uint64_t> restarted_leases_;

  uint64_t last_job_id_ = 0;
  uint64_t lease_counter_ = 0;
  uint64_t ready_counter_ = 0;
  uint64_t waiter_counter_ = 0;
  bool stopping_ = false;
  std::mt19937_64 rng_;

  asio::steady_timer timer_;
  std::optional<util::Clock::TimePoint> timer_at_;
};

}  // namespace errand::dispatch
