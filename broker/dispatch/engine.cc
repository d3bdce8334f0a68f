#include "dispatch/engine.h"

#include <algorithm>
#include <cassert>
#include <utility>

#include "store/keys.h"
#include "util/time.h"

namespace errand::dispatch {

using std::chrono::microseconds;
using util::DurationFromProto;
using util::DurationToProto;
using util::FromProto;
using util::ToProto;


Engine::Engine(asio::io_context& core, const util::Clock& clock,
               commit::CommitPipeline* pipeline, EngineOptions options, uint64_t boot_epoch)
    : core_(core),
      clock_(clock),
      pipeline_(pipeline),
      options_(options),
      boot_epoch_(boot_epoch),
      rng_(std::random_device{}()),
      timer_(core) {}

Engine::~Engine() = default;

Engine::QueueState& Engine::Queue(const std::string& name) {
  auto [it, inserted] = queues_.try_emplace(name);
  if (inserted) it->second.name = name;
  return it->second;
}

Engine::JobEntry* Engine::Find(uint64_t id) const {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second.get();
}

uint64_t Engine::NextJobId() {
  // 48 bits of milliseconds, 16 bits of sequence: unique and sortable by
  // creation, even if the clock steps back (ids never decrease).
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                clock_.Now().time_since_epoch())
                .count();
  uint64_t candidate = static_cast<uint64_t>(std::max<int64_t>(ms, 1)) << 16;
  last_job_id_ = std::max(last_job_id_ + 1, candidate);
  return last_job_id_;
}

// ---------------------------------------------------------------------------
// Recovery and lifecycle.

absl::Status Engine::Recover(store::JobStore& store) {
  const auto now = clock_.Now();
  return store.ForEachJob([&](uint64_t id, store::JobRecord&& rec) -> absl::Status {
    if (rec.job().id() != store::FormatJobId(id)) {
      return absl::DataLossError("job record " + store::FormatJobId(id) + " names id " +
                                 rec.job().id());
    }
    auto entry = std::make_unique<JobEntry>();
    entry->id = id;
    entry->job = std::move(*rec.mutable_job());
    entry->queue = &Queue(entry->job.queue());
    entry->run_at = FromProto(entry->job.run_at());
    last_job_id_ = std::max(last_job_id_, id);
    JobEntry& e = *entry;
    jobs_.emplace(id, std::move(entry));
    e.queue->counts[e.job.state()]++;
    switch (e.job.state()) {
      case v1::JOB_STATE_READY:
      case v1::JOB_STATE_SCHEDULED:
        if (e.run_at <= now) {
          MakeReady(e);
        } else {
          scheduled_.Add(e.run_at, id);
        }
        break;
      case v1::JOB_STATE_LEASED:
        // The lease died with the previous process. No token of the old
        // lease is accepted; Start() ends the attempt.
        e.lease_token = 0;
        e.busy = true;
        restarted_leases_.push_back(id);
        break;
      default:
        break;
    }
    return absl::OkStatus();
  });
}

void Engine::Start() {
  std::vector<uint64_t> restarted;
  restarted.swap(restarted_leases_);
  for (uint64_t id : restarted) {
    JobEntry* e = Find(id);
    if (e == nullptr) continue;
    e->busy = false;
    ExpireLease(id, v1::ATTEMPT_OUTCOME_BROKER_RESTART);
    ReleaseJob(*e);
  }
  ArmTimers();
}

void Engine::Shutdown() {
  stopping_ = true;
  std::vector<uint64_t> ids;
  for (auto& [id, w] : waiters_) ids.push_back(id);
  for (uint64_t id : ids) {
    Waiter w;
    RemoveWaiter(id, &w);
    w.done(absl::UnavailableError("broker is shutting down"));
  }
  timer_.cancel();
  timer_at_.reset();
}

// ---------------------------------------------------------------------------
// Per-job serialisation.

void Engine::WithJob(JobEntry& e, std::function<void()> fn) {
  if (e.busy) {
    e.deferred.push_back(std::move(fn));
  } else {
    fn();
  }
}

void Engine::ReleaseJob(JobEntry& e) {
  // REQUIRES: e.busy was cleared by the write's completion. An operation
  // that started a new write (busy again) holds back the rest.
  while (!e.busy && !e.deferred.empty()) {
    auto fn = std::move(e.deferred.front());
    e.deferred.pop_front();
    fn();
  }
}

void Engine::SetState(JobEntry& e, v1::JobState state) {
  e.queue->counts[e.job.state()]--;
  e.queue->counts[state]++;
  e.job.set_state(state);
}

void Engine::ApplyJob(JobEntry& e, v1::Job job) {
  v1::JobState old_state = e.job.state();
  v1::JobState new_state = job.state();
  e.job = std::move(job);
  e.job.set_state(old_state);
  SetState(e, new_state);
  e.run_at = FromProto(e.job.run_at());
}

commit::Mutation Engine::JobMutation(const v1::Job& job, uint64_t lease_token,
                                     v1::EventType type, bool sync) const {
  commit::Mutation m;
  m.sync = sync;
  store::JobRecord rec;
  *rec.mutable_job() = job;
  rec.set_lease_token(lease_token);
  m.ops.push_back({commit::Cf::kJobs, store::EncodeBE64(store::ParseJobId(job.id()).value()),
                   rec.SerializeAsString()});
  if (type != v1::EVENT_TYPE_UNSPECIFIED) m.events.push_back(MakeEvent(job, type));
  return m;
}

v1::Event Engine::MakeEvent(const v1::Job& job, v1::EventType type) const {
  v1::Event ev;
  ev.set_type(type);
  *ev.mutable_time() = job.updated_at();
  ev.set_job_id(job.id());
  ev.set_queue(job.queue());
  ev.set_attempt(job.attempts());
  *ev.mutable_job() = job;
  // The payload is in the job record already; events stay small.
  ev.mutable_job()->clear_payload();
  return ev;
}

void Engine::CommitJob(JobEntry& e, v1::Job job, v1::EventType type, bool sync,
                       std::function<void(const absl::Status&, JobEntry&)> then) {
  assert(!e.busy);
  e.busy = true;
  const uint64_t id = e.id;
  uint64_t token = job.state() == v1::JOB_STATE_LEASED ? e.lease_token : 0;
  commit::Mutation m = JobMutation(job, token, type, sync);
  pipeline_->Submit(std::move(m), [this, id, job = std::move(job), then = std::move(then)](
                                      commit::CommitResult&& r) mutable {
    JobEntry* e = Find(id);
    assert(e != nullptr);
    if (r.status.ok()) ApplyJob(*e, std::move(job));
    e->busy = false;
    then(r.status, *e);
    ReleaseJob(*e);
  });
}

// ---------------------------------------------------------------------------
// Enqueue and reads.

void Engine::Enqueue(std::vector<v1::EnqueueRequest> requests, v1::Durability durability,
                     EnqueueDone done) {
  if (stopping_) {
    done(absl::UnavailableError("broker is shutting down"));
    return;
  }
  const auto now = clock_.Now();
  const bool sync = durability == v1::DURABILITY_SYNC ||
                    (durability == v1::DURABILITY_UNSPECIFIED && options_.sync_by_default);
  commit::Mutation m;
  m.sync = sync;
  auto jobs = std::make_shared<std::vector<v1::Job>>();
  jobs->reserve(requests.size());
  for (v1::EnqueueRequest& req : requests) {
    v1::Job job;
    uint64_t id = NextJobId();
    job.set_id(store::FormatJobId(id));
    job.set_queue(req.queue());
    job.set_payload(std::move(*req.mutable_payload()));
    *job.mutable_headers() = std::move(*req.mutable_headers());
    job.set_priority(req.priority());
    auto run_at = now;
    if (req.has_run_at()) {
      run_at = FromProto(req.run_at());
    } else if (req.has_delay()) {
      run_at = now + DurationFromProto(req.delay());
    }
    *job.mutable_run_at() = ToProto(run_at);
    job.set_state(run_at > now ? v1::JOB_STATE_SCHEDULED : v1::JOB_STATE_READY);
    job.set_max_attempts(req.max_attempts() ? req.max_attempts() : options_.default_max_attempts);
    *job.mutable_lease_duration() = req.has_lease_duration() &&
                                            DurationFromProto(req.lease_duration()).count() > 0
                                        ? req.lease_duration()
                                        : DurationToProto(options_.default_lease);
    job.set_idempotency_key(req.idempotency_key());
    job.set_concurrency_key(req.concurrency_key());
    if (req.has_retry()) *job.mutable_retry() = req.retry();
    if (req.has_retention()) *job.mutable_retention() = req.retention();
    *job.mutable_created_at() = ToProto(now);
    *job.mutable_updated_at() = ToProto(now);
    commit::Mutation one = JobMutation(job, 0, v1::EVENT_TYPE_ENQUEUED, sync);
    for (auto& op : one.ops) m.ops.push_back(std::move(op));
    for (auto& ev : one.events) m.events.push_back(std::move(ev));
    jobs->push_back(std::move(job));
  }
  pipeline_->Submit(std::move(m), [this, jobs, done = std::move(done)](commit::CommitResult&& r) {
    if (!r.status.ok()) {
      done(r.status);
      return;
    }
    EnqueueOutcome out;
    out.synced = r.synced;
    out.commit_seq = r.commit_seq;
    std::vector<QueueState*> touched;
    for (v1::Job& job : *jobs) {
      out.job_ids.push_back(job.id());
      auto entry = std::make_unique<JobEntry>();
      entry->id = store::ParseJobId(job.id()).value();
      entry->queue = &Queue(job.queue());
      entry->run_at = FromProto(job.run_at());
      entry->job = std::move(job);
      JobEntry& e = *entry;
      jobs_.emplace(e.id, std::move(entry));
      e.queue->counts[e.job.state()]++;
      e.queue->total_enqueued++;
      Place(e);
      touched.push_back(e.queue);
    }
    done(std::move(out));
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (QueueState* q : touched) Dispatch(*q);
    ArmTimers();
  });
}

absl::StatusOr<v1::Job> Engine::GetJob(uint64_t id) const {
  JobEntry* e = Find(id);
  if (e == nullptr) return absl::NotFoundError("job " + store::FormatJobId(id) + " not found");
  v1::Job job = e->job;
  if (job.state() == v1::JOB_STATE_LEASED && e->lease_token != 0) {
    *job.mutable_lease_deadline() = ToProto(e->lease_deadline);
  }
  return job;
}

// ---------------------------------------------------------------------------
// Ready queues, the schedule and waiting workers.

void Engine::Place(JobEntry& e) {
  if (e.job.state() == v1::JOB_STATE_READY) {
    MakeReady(e);
  } else if (e.job.state() == v1::JOB_STATE_SCHEDULED) {
    if (e.run_at <= clock_.Now()) {
      MakeReady(e);
    } else {
      scheduled_.Add(e.run_at, e.id);
    }
  }
}

void Engine::MakeReady(JobEntry& e) {
  if (e.job.state() != v1::JOB_STATE_READY) SetState(e, v1::JOB_STATE_READY);
  e.ready_since = std::max(e.run_at, FromProto(e.job.updated_at()));
  e.ready_seq = ++ready_counter_;
  e.queue->ready.Push({e.job.priority(), e.ready_seq, e.id});
}

void Engine::Dispatch(QueueState& q) {
  while (!q.paused && !q.ready.empty() && !q.waiters.empty() && !stopping_) {
    uint64_t wid = q.waiters.front();
    Waiter w;
    RemoveWaiter(wid, &w);
    StartLease(std::move(w.spec), std::move(w.done));
  }
}

void Engine::RemoveWaiter(uint64_t waiter_id, Waiter* out) {
  auto it = waiters_.find(waiter_id);
  if (it == waiters_.end()) return;
  for (auto& [q, link] : it->second.links) q->waiters.erase(link);
  if (it->second.timer) it->second.timer->cancel();
  if (out != nullptr) *out = std::move(it->second);
  waiters_.erase(it);
}

uint64_t Engine::Lease(LeaseSpec spec, LeaseDone done) {
  if (stopping_) {
    done(absl::UnavailableError("broker is shutting down"));
    return 0;
  }
  bool any = false;
  for (const std::string& name : spec.queues) {
    auto it = queues_.find(name);
    if (it != queues_.end() && !it->second.paused && !it->second.ready.empty()) any = true;
  }
  if (any || spec.wait.count() <= 0) {
    StartLease(std::move(spec), std::move(done));
    return 0;
  }
  const uint64_t wid = ++waiter_counter_;
  Waiter& w = waiters_[wid];
  for (const std::string& name : spec.queues) {
    QueueState& q = Queue(name);
    q.waiters.push_back(wid);
    w.links.emplace_back(&q, std::prev(q.waiters.end()));
  }
  w.timer = std::make_unique<asio::steady_timer>(core_, spec.wait);
  w.spec = std::move(spec);
  w.done = std::move(done);
  w.timer->async_wait([this, wid](const std::error_code& ec) {
    if (ec) return;
    Waiter expired;
    auto it = waiters_.find(wid);
    if (it == waiters_.end()) return;
    RemoveWaiter(wid, &expired);
    expired.done(std::vector<v1::Lease>());
  });
  return wid;
}

bool Engine::CancelLeaseWait(uint64_t waiter_id) {
  if (waiters_.count(waiter_id) == 0) return false;
  RemoveWaiter(waiter_id, nullptr);
  return true;
}

void Engine::StartLease(LeaseSpec spec, LeaseDone done) {
  // Take the best ready jobs across the named queues.
  std::vector<JobEntry*> picked;
  while (picked.size() < spec.max_jobs) {
    QueueState* best = nullptr;
    std::optional<ReadyQueue::Entry> best_entry;
    for (const std::string& name : spec.queues) {
      auto it = queues_.find(name);
      if (it == queues_.end() || it->second.paused) continue;
      auto front = it->second.ready.Front();
      if (front && (!best_entry || ReadyQueue::Before(*front, *best_entry))) {
        best = &it->second;
        best_entry = front;
      }
    }
    if (best == nullptr) break;
    best->ready.PopFront();
    JobEntry* e = Find(best_entry->job_id);
    assert(e != nullptr && !e->busy);
    picked.push_back(e);
  }
  if (picked.empty()) {
    done(std::vector<v1::Lease>());
    return;
  }

  const auto now = clock_.Now();
  commit::Mutation m;
  m.sync = false;  // leases need not be durable; the WAL write survives a crash
  struct Pick {
    uint64_t id;
    uint64_t token;
    util::Clock::TimePoint deadline;
    v1::Job job;
  };
  auto picks = std::make_shared<std::vector<Pick>>();
  for (JobEntry* e : picked) {
    e->busy = true;
    v1::Job job = e->job;
    job.set_state(v1::JOB_STATE_LEASED);
    job.set_attempts(job.attempts() + 1);
    job.set_cancel_requested(false);
    *job.mutable_updated_at() = ToProto(now);
    microseconds lease = spec.lease_duration.count() > 0 ? spec.lease_duration
                                                         : DurationFromProto(job.lease_duration());
    auto deadline = now + lease;
    *job.mutable_lease_deadline() = ToProto(deadline);
    v1::Attempt* a = job.add_history();
    a->set_number(job.attempts());
    a->set_worker_id(spec.worker_id);
    *a->mutable_started_at() = ToProto(now);
    a->set_outcome(v1::ATTEMPT_OUTCOME_RUNNING);
    uint64_t token = NextLeaseToken();
    commit::Mutation one = JobMutation(job, token, v1::EVENT_TYPE_LEASED, false);
    for (auto& op : one.ops) m.ops.push_back(std::move(op));
    for (auto& ev : one.events) m.events.push_back(std::move(ev));
    picks->push_back(Pick{e->id, token, deadline, std::move(job)});
  }
  pipeline_->Submit(std::move(m), [this, picks, done = std::move(done)](
                                      commit::CommitResult&& r) {
    std::vector<v1::Lease> leases;
    std::vector<QueueState*> requeued;
    for (Pick& p : *picks) {
      JobEntry* e = Find(p.id);
      assert(e != nullptr);
      e->busy = false;
      if (r.status.ok()) {
        ApplyJob(*e, std::move(p.job));
        e->lease_token = p.token;
        e->lease_deadline = p.deadline;
        leases_.Add(p.deadline, p.id);
        v1::Lease lease;
        *lease.mutable_job() = e->job;
        lease.set_lease_token(p.token);
        *lease.mutable_deadline() = ToProto(p.deadline);
        leases.push_back(std::move(lease));
      } else {
        // Nothing was written: the job is ready again, in its old place.
        e->queue->ready.Push({e->job.priority(), e->ready_seq, e->id});
        requeued.push_back(e->queue);
      }
    }
    if (r.status.ok()) {
      done(std::move(leases));
    } else {
      done(r.status);
    }
    for (Pick& p : *picks) {
      if (JobEntry* e = Find(p.id)) ReleaseJob(*e);
    }
    for (QueueState* q : requeued) Dispatch(*q);
    ArmTimers();
  });
}

// ---------------------------------------------------------------------------
// Outcomes.

absl::Status Engine::Check(const JobEntry& e, uint64_t lease_token) const {
  if (e.job.state() != v1::JOB_STATE_LEASED || e.lease_token == 0) {
    return absl::FailedPreconditionError(
        "job " + e.job.id() + " is not leased (state " + v1::JobState_Name(e.job.state()) +
        "); lease_token " + std::to_string(lease_token) + " is stale");
  }
  if (e.lease_token != lease_token) {
    return absl::FailedPreconditionError(
        "lease_token " + std::to_string(lease_token) + " is not the current lease of job " +
        e.job.id() + " (now on attempt " + std::to_string(e.job.attempts()) +
        "); this worker lost its lease");
  }
  return absl::OkStatus();
}

std::string Engine::Truncate(const std::string& s) const {
  if (s.size() <= options_.max_error_bytes) return s;
  size_t n = options_.max_error_bytes;
  // Do not cut a UTF-8 sequence in half.
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

BackoffPolicy Engine::PolicyOf(const v1::Job& job) const {
  BackoffPolicy p = options_.default_backoff;
  if (!job.has_retry()) return p;
  const v1::RetryPolicy& r = job.retry();
  if (r.has_initial_backoff() && DurationFromProto(r.initial_backoff()).count() > 0) {
    p.initial = DurationFromProto(r.initial_backoff());
  }
  if (r.has_max_backoff() && DurationFromProto(r.max_backoff()).count() > 0) {
    p.max = DurationFromProto(r.max_backoff());
  }
  if (r.multiplier() > 0) p.multiplier = r.multiplier();
  if (r.jitter() > 0) p.jitter = r.jitter();
  return p;
}

v1::Job Engine::EndAttempt(const JobEntry& e, v1::AttemptOutcome outcome,
                           const std::string& error, microseconds retry_after,
                           bool non_retryable, bool immediate_retry) {
  const auto now = clock_.Now();
  v1::Job job = e.job;
  *job.mutable_updated_at() = ToProto(now);
  job.clear_lease_deadline();
  job.set_error(Truncate(error));
  if (job.history_size() > 0) {
    v1::Attempt* a = job.mutable_history(job.history_size() - 1);
    *a->mutable_ended_at() = ToProto(now);
    a->set_outcome(outcome);
    a->set_error(job.error());
  }
  if (non_retryable || job.attempts() >= job.max_attempts()) {
    job.set_state(v1::JOB_STATE_DEAD);
    *job.mutable_finished_at() = ToProto(now);
    return job;
  }
  microseconds wait{0};
  if (retry_after.count() > 0) {
    wait = retry_after;
  } else if (!immediate_retry) {
    std::uniform_real_distribution<double> u(0.0, 1.0);
    wait = ComputeBackoff(PolicyOf(job), job.attempts(), u(rng_));
  }
  auto run_at = now + wait;
  *job.mutable_run_at() = ToProto(run_at);
  job.set_state(wait.count() > 0 ? v1::JOB_STATE_SCHEDULED : v1::JOB_STATE_READY);
  return job;
}

void Engine::Complete(uint64_t id, uint64_t lease_token, std::string result, JobDone done) {
  JobEntry* e = Find(id);
  if (e == nullptr) {
    done(absl::NotFoundError("job " + store::FormatJobId(id) + " not found"));
    return;
  }
  WithJob(*e, [this, id, lease_token, result = std::move(result),
               done = std::move(done)]() mutable {
    if (stopping_) {
      done(absl::UnavailableError("broker is shutting down"));
      return;
    }
    JobEntry& e = *Find(id);
    if (absl::Status s = Check(e, lease_token); !s.ok()) {
      done(s);
      return;
    }
    const auto now = clock_.Now();
    v1::Job job = e.job;
    job.set_state(v1::JOB_STATE_SUCCEEDED);
    job.set_result(std::move(result));
    job.clear_error();
    job.clear_lease_deadline();
    *job.mutable_updated_at() = ToProto(now);
    *job.mutable_finished_at() = ToProto(now);
    if (job.history_size() > 0) {
      v1::Attempt* a = job.mutable_history(job.history_size() - 1);
      *a->mutable_ended_at() = ToProto(now);
      a->set_outcome(v1::ATTEMPT_OUTCOME_SUCCEEDED);
    }
    CommitJob(e, std::move(job), v1::EVENT_TYPE_SUCCEEDED, options_.sync_by_default,
              [this, done = std::move(done)](const absl::Status& s, JobEntry& e) {
                if (!s.ok()) {
                  done(s);
                  return;
                }
                leases_.Remove(e.lease_deadline, e.id);
                e.lease_token = 0;
                e.queue->total_succeeded++;
                done(GetJob(e.id));
              });
  });
}

void Engine::Fail(uint64_t id, uint64_t lease_token, FailSpec spec, JobDone done) {
  JobEntry* e = Find(id);
  if (e == nullptr) {
    done(absl::NotFoundError("job " + store::FormatJobId(id) + " not found"));
    return;
  }
  WithJob(*e, [this, id, lease_token, spec = std::move(spec), done = std::move(done)]() mutable {
    if (stopping_) {
      done(absl::UnavailableError("broker is shutting down"));
      return;
    }
    JobEntry& e = *Find(id);
    if (absl::Status s = Check(e, lease_token); !s.ok()) {
      done(s);
      return;
    }
    v1::Job job = EndAttempt(e, v1::ATTEMPT_OUTCOME_FAILED, spec.error, spec.retry_after,
                             spec.non_retryable, /*immediate_retry=*/false);
    v1::EventType type = job.state() == v1::JOB_STATE_DEAD ? v1::EVENT_TYPE_DEAD
                                                           : v1::EVENT_TYPE_RETRY_SCHEDULED;
    CommitJob(e, std::move(job), type, options_.sync_by_default,
              [this, done = std::move(done)](const absl::Status& s, JobEntry& e) {
                if (!s.ok()) {
                  done(s);
                  return;
                }
                leases_.Remove(e.lease_deadline, e.id);
                e.lease_token = 0;
                e.queue->total_failed++;
                if (e.job.state() == v1::JOB_STATE_DEAD) e.queue->total_dead++;
                Place(e);
                done(GetJob(e.id));
                Dispatch(*e.queue);
                ArmTimers();
              });
  });
}

void Engine::Extend(uint64_t id, uint64_t lease_token, microseconds extend_by,
                    std::optional<v1::Progress> progress, ExtendDone done) {
  JobEntry* e = Find(id);
  if (e == nullptr) {
    done(absl::NotFoundError("job " + store::FormatJobId(id) + " not found"));
    return;
  }
  WithJob(*e, [this, id, lease_token, extend_by, progress = std::move(progress),
               done = std::move(done)]() mutable {
    JobEntry& e = *Find(id);
    if (absl::Status s = Check(e, lease_token); !s.ok()) {
      done(s);
      return;
    }
    const auto now = clock_.Now();
    microseconds by = extend_by.count() > 0 ? extend_by : DurationFromProto(e.job.lease_duration());
    auto deadline = now + by;
    auto apply_deadline = [this, deadline](JobEntry& e) {
      leases_.Remove(e.lease_deadline, e.id);
      e.lease_deadline = deadline;
      leases_.Add(deadline, e.id);
      *e.job.mutable_lease_deadline() = ToProto(deadline);
      ArmTimers();
    };
    if (!progress) {
      apply_deadline(e);
      done(ExtendOutcome{deadline, e.job.cancel_requested()});
      return;
    }
    v1::Job job = e.job;
    *progress->mutable_updated_at() = ToProto(now);
    *job.mutable_progress() = std::move(*progress);
    *job.mutable_updated_at() = ToProto(now);
    *job.mutable_lease_deadline() = ToProto(deadline);
    CommitJob(e, std::move(job), v1::EVENT_TYPE_PROGRESS, /*sync=*/false,
              [apply_deadline, deadline, done = std::move(done)](const absl::Status& s,
                                                                  JobEntry& e) {
                if (!s.ok()) {
                  done(s);
                  return;
                }
                apply_deadline(e);
                done(ExtendOutcome{deadline, e.job.cancel_requested()});
              });
  });
}

void Engine::ExpireLease(uint64_t id, v1::AttemptOutcome outcome) {
  JobEntry* e = Find(id);
  if (e == nullptr) return;
  WithJob(*e, [this, id, outcome] {
    JobEntry& e = *Find(id);
    if (e.job.state() != v1::JOB_STATE_LEASED) return;
    if (outcome == v1::ATTEMPT_OUTCOME_LEASE_EXPIRED && e.lease_deadline > clock_.Now()) {
      return;  // extended meanwhile
    }
    std::string why = outcome == v1::ATTEMPT_OUTCOME_BROKER_RESTART
                          ? "the broker restarted during this attempt"
                          : "lease expired without Complete, Fail or Extend";
    v1::Job job = EndAttempt(e, outcome, why, microseconds(0), false, /*immediate_retry=*/true);
    leases_.Remove(e.lease_deadline, e.id);
    e.lease_token = 0;  // no token of the ended lease is valid any more
    v1::EventType type = job.state() == v1::JOB_STATE_DEAD ? v1::EVENT_TYPE_DEAD
                                                           : v1::EVENT_TYPE_RETRY_SCHEDULED;
    CommitJob(e, std::move(job), type, /*sync=*/false,
              [this](const absl::Status& s, JobEntry& e) {
                if (!s.ok()) {
                  // Try again at the next tick; the job stays leased meanwhile.
                  leases_.Add(clock_.Now() + std::chrono::seconds(1), e.id);
                  e.lease_deadline = clock_.Now() + std::chrono::seconds(1);
                  ArmTimers();
                  return;
                }
                e.queue->total_failed++;
                if (e.job.state() == v1::JOB_STATE_DEAD) e.queue->total_dead++;
                Place(e);
                Dispatch(*e.queue);
                ArmTimers();
              });
  });
}

// ---------------------------------------------------------------------------
// Timers.

void Engine::OnTimer() {
  timer_at_.reset();
  if (stopping_) return;
  const auto now = clock_.Now();
  for (uint64_t id : leases_.PopDue(now)) {
    JobEntry* e = Find(id);
    if (e == nullptr) continue;
    ExpireLease(id, v1::ATTEMPT_OUTCOME_LEASE_EXPIRED);
  }
  std::vector<QueueState*> touched;
  for (uint64_t id : scheduled_.PopDue(now)) {
    JobEntry* e = Find(id);
    if (e == nullptr) continue;
    if (e->busy) {
      // A write on the job is in flight; decide once it landed.
      e->deferred.push_back([this, id] {
        JobEntry* e = Find(id);
        if (e == nullptr || e->job.state() != v1::JOB_STATE_SCHEDULED) return;
        Place(*e);
        Dispatch(*e->queue);
        ArmTimers();
      });
      continue;
    }
    if (e->job.state() != v1::JOB_STATE_SCHEDULED) continue;
    MakeReady(*e);
    touched.push_back(e->queue);
  }
  for (QueueState* q : touched) Dispatch(*q);
  ArmTimers();
}

void Engine::ArmTimers() {
  if (stopping_) return;
  std::optional<util::Clock::TimePoint> next = leases_.Earliest();
  if (auto s = scheduled_.Earliest(); s && (!next || *s < *next)) next = s;
  if (!next) return;
  if (timer_at_ && *timer_at_ <= *next) return;  // already armed early enough
  timer_at_ = next;
  auto wait = *next - clock_.Now();
  if (wait.count() < 0) wait = wait.zero();
  timer_.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(wait));
  timer_.async_wait([this](const std::error_code& ec) {
    if (ec) return;
    OnTimer();
  });
}

// ---------------------------------------------------------------------------
// Introspection.

v1::QueueStats Engine::QueueStats(const std::string& name) const {
  v1::QueueStats st;
  st.set_queue(name);
  auto it = queues_.find(name);
  if (it == queues_.end()) return st;
  const QueueState& q = it->second;
  st.set_scheduled(q.counts[v1::JOB_STATE_SCHEDULED]);
  st.set_ready(q.counts[v1::JOB_STATE_READY]);
  st.set_leased(q.counts[v1::JOB_STATE_LEASED]);
  st.set_succeeded(q.counts[v1::JOB_STATE_SUCCEEDED]);
  st.set_dead(q.counts[v1::JOB_STATE_DEAD]);
  st.set_cancelled(q.counts[v1::JOB_STATE_CANCELLED]);
  if (auto oldest = q.ready.Oldest()) {
    if (JobEntry* e = Find(oldest->job_id)) {
      auto age = clock_.Now() - e->ready_since;
      if (age.count() < 0) age = age.zero();
      *st.mutable_oldest_ready_age() =
          DurationToProto(std::chrono::duration_cast<microseconds>(age));
    }
  }
  st.set_paused(q.paused);
  st.set_total_enqueued(q.total_enqueued);
  st.set_total_succeeded(q.total_succeeded);
  st.set_total_failed(q.total_failed);
  st.set_total_dead(q.total_dead);
  return st;
}

std::vector<v1::QueueStats> Engine::ListQueues() const {
  std::vector<v1::QueueStats> out;
  for (const auto& [name, q] : queues_) out.push_back(QueueStats(name));
  return out;
}

}  // namespace errand::dispatch
