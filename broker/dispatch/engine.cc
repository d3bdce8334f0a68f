#include "dispatch/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cassert>
#include <utility>

#include "store/keys.h"
#include "util/fixed_pool.h"
#include "util/time.h"

namespace errand::dispatch {

using std::chrono::microseconds;
using util::DurationFromProto;
using util::DurationToProto;
using util::FromProto;
using util::ToProto;

bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_DEAD || s == v1::JOB_STATE_CANCELLED;
}


Engine::Engine(asio::io_context& core, const util::Clock& clock, store::JobStore& store,
               commit::CommitPipeline* pipeline, EngineOptions options, uint64_t boot_epoch)
    : core_(core),
      clock_(clock),
      store_(store),
      pipeline_(pipeline),
      options_(options),
      boot_epoch_(boot_epoch),
      rng_(std::random_device{}()),
      timer_(core),
      lease_waits_(
          core, [this](std::function<void()> fn) { EnterCore(std::move(fn)); },
          [this](std::vector<uint64_t> ids) { LeaseWaitsDue(std::move(ids)); }),
      job_waits_(
          core, [this](std::function<void()> fn) { EnterCore(std::move(fn)); },
          [this](std::vector<uint64_t> ids) { JobWaitsDue(std::move(ids)); }) {}

Engine::~Engine() {
  for (JobEntry* e : jobs_) delete e;
}

namespace {

// One pool per entry type, never destroyed (an engine's entries may be
// deleted during static destruction).
template <typename T>
util::FixedPool<sizeof(T), alignof(T)>& PoolOf() {
  static auto* pool = new util::FixedPool<sizeof(T), alignof(T)>();
  return *pool;
}

}  // namespace

void* Engine::JobEntry::operator new(size_t size) {
  assert(size == sizeof(JobEntry));
  (void)size;
  return PoolOf<JobEntry>().Allocate();
}

void Engine::JobEntry::operator delete(void* p) {
  if (p != nullptr) PoolOf<JobEntry>().Free(p);
}

Engine::QueueState& Engine::Queue(const std::string& name) {
  auto [it, inserted] = queues_.try_emplace(name);
  if (inserted) it->second.name = name;
  return it->second;
}

Engine::JobEntry* Engine::Find(uint64_t id) const {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : *it;
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

absl::Status Engine::Recover() {
  const auto now = clock_.Now();
  absl::Status qs = store_.ForEachQueue([&](store::QueueRecord&& rec) -> absl::Status {
    QueueState& q = Queue(rec.name());
    q.paused = rec.paused();
    q.max_leased_per_key = rec.max_leased_per_key();
    q.desired = std::move(rec);
    return absl::OkStatus();
  });
  if (!qs.ok()) return qs;
  QueueState* last_queue = nullptr;  // jobs of one queue tend to come in runs
  return store_.ForEachJob([&](uint64_t id, store::JobRecord&& rec) -> absl::Status {
    const v1::Job& job = rec.job();
    if (job.id() != store::FormatJobId(id)) {
      return absl::DataLossError("job record " + store::FormatJobId(id) + " names id " +
                                 job.id());
    }
    auto entry = std::make_unique<JobEntry>();
    entry->id = id;
    entry->job.Track(job);  // the record stays in the store
    if (last_queue == nullptr || last_queue->name != job.queue()) {
      last_queue = &Queue(job.queue());
    }
    entry->queue = last_queue;
    entry->run_at = FromProto(job.run_at());
    last_job_id_ = std::max(last_job_id_, id);
    JobEntry& e = *entry;
    jobs_.insert(entry.release());
    e.queue->counts[e.job.state()]++;
    e.queue->ids.insert(e.queue->ids.end(), id);  // ids come in order
    if (!job.idempotency_key().empty()) {
      // Jobs come in id (creation) order: the last one with a key is the
      // one a repeated enqueue must find (an older one may have been made
      // before the window, and then the key was used anew).
      idem_[IdemKey(job.queue(), job.idempotency_key())] =
          IdemEntry{id, FromProto(job.created_at())};
    }
    if (IsTerminal(e.job.state())) UpdateExpiry(e, job);
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
        if (!e.job.concurrency_key().empty()) e.queue->leased_by_key[e.job.concurrency_key()]++;
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
  std::vector<uint64_t> job_waiter_ids;
  for (auto& [id, w] : job_waiters_) job_waiter_ids.push_back(id);
  for (uint64_t wid : job_waiter_ids) {
    auto it = job_waiters_.find(wid);
    JobWaiter w = std::move(it->second);
    job_waiters_.erase(it);
    job_waits_.Remove(w.until, wid);
    if (JobEntry* e = Find(w.job_id)) e->Unwait(wid);
    w.done(absl::UnavailableError("broker is shutting down"), false);
  }
  std::vector<uint64_t> ids;
  for (auto& [id, w] : waiters_) ids.push_back(id);
  for (uint64_t id : ids) {
    Waiter w;
    RemoveWaiter(id, &w);
    w.done(absl::UnavailableError("broker is shutting down"));
  }
  timer_.cancel();
  timer_at_.reset();
  lease_waits_.Stop();
  job_waits_.Stop();
}

// ---------------------------------------------------------------------------
// Per-job serialisation.

void Engine::WithJob(JobEntry& e, std::function<void()> fn) {
  if (e.busy) {
    e.Wait().deferred.push_back(std::move(fn));
  } else {
    fn();
  }
}

void Engine::ReleaseJob(JobEntry& e) {
  // REQUIRES: e.busy was cleared by the write's completion. An operation
  // that started a new write (busy again) holds back the rest.
  while (!e.busy && e.waiting && !e.waiting->deferred.empty()) {
    auto fn = std::move(e.waiting->deferred.front());
    e.waiting->deferred.erase(e.waiting->deferred.begin());
    fn();
  }
  if (e.waiting && e.waiting->deferred.empty() && e.waiting->waiters.empty()) e.waiting.reset();
}

void Engine::SetState(JobEntry& e, v1::JobState state) {
  if (e.job.state() == v1::JOB_STATE_LEASED && state != v1::JOB_STATE_LEASED &&
      !e.job.concurrency_key().empty()) {
    auto it = e.queue->leased_by_key.find(e.job.concurrency_key());
    if (it != e.queue->leased_by_key.end() && --it->second == 0) e.queue->leased_by_key.erase(it);
  }
  e.queue->counts[e.job.state()]--;
  e.queue->counts[state]++;
  e.job.set_state(state);
}

void Engine::ApplyJob(JobEntry& e, const v1::Job& job) {
  v1::JobState old_state = e.job.state();
  v1::JobState new_state = job.state();
  e.job.Pack(job);
  e.pinned = false;  // the store's record is this job
  e.job.set_state(old_state);
  SetState(e, new_state);
  e.run_at = FromProto(job.run_at());
  UpdateExpiry(e, job);
  if (IsTerminal(new_state) && !IsTerminal(old_state)) FireJobWaiters(e);
}

void Engine::ShowLease(const JobEntry& e, v1::Job* job) const {
  if (job->state() == v1::JOB_STATE_LEASED && e.lease_token != 0) {
    *job->mutable_lease_deadline() = ToProto(e.lease_deadline);
  }
}

v1::Job Engine::Held(const JobEntry& e) const {
  v1::Job job = e.job.Unpack();
  ShowLease(e, &job);
  return job;
}

namespace {

// The stored record of job `id`: `bytes` gets its v1::Job's bytes, `job`
// the job parsed.
absl::Status ReadJob(store::JobStore& store, uint64_t id, std::string* bytes, v1::Job* job) {
  auto record = store.GetJobBytes(id);
  if (!record.ok()) return record.status();
  if (!record->has_value()) {
    // Memory has the job, so the store must: its record is only deleted
    // by a write that then removes it from memory.
    return absl::DataLossError("job " + store::FormatJobId(id) +
                               " has no record in the store");
  }
  if (!JobBytesOfRecord(**record, bytes) || !job->ParseFromString(*bytes)) {
    return absl::DataLossError("job record " + store::FormatJobId(id) + " is corrupt");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<v1::Job> Engine::Load(const JobEntry& e) const {
  if (e.job.held()) return Held(e);
  std::string bytes;
  v1::Job job;
  if (absl::Status s = ReadJob(store_, e.id, &bytes, &job); !s.ok()) return s;
  // The state in memory may be ahead of the record (SCHEDULED promoted to
  // READY). A job not held is not LEASED: no lease deadline to show.
  job.set_state(e.job.state());
  return job;
}

absl::StatusOr<v1::Job> Engine::Hold(JobEntry& e) {
  if (e.job.held()) return Held(e);
  std::string bytes;
  v1::Job job;
  if (absl::Status s = ReadJob(store_, e.id, &bytes, &job); !s.ok()) return s;
  e.job.Hold(bytes);
  job.set_state(e.job.state());
  ShowLease(e, &job);
  return job;
}

void Engine::Settle(JobEntry& e) {
  if (e.busy || e.pinned || e.job.state() == v1::JOB_STATE_LEASED) return;
  e.job.Drop();
}

uint64_t Engine::WaitJob(uint64_t id, std::chrono::microseconds timeout, WaitDone done) {
  JobEntry* e = Find(id);
  if (e == nullptr) {
    done(absl::NotFoundError("job " + store::FormatJobId(id) + " not found"), false);
    return 0;
  }
  if (IsTerminal(e->job.state()) || timeout.count() <= 0 || stopping_) {
    done(GetJob(id), IsTerminal(e->job.state()));
    return 0;
  }
  const uint64_t wid = ++waiter_counter_;
  JobWaiter& w = job_waiters_[wid];
  w.job_id = id;
  w.done = std::move(done);
  w.until = std::chrono::steady_clock::now() + timeout;
  e->Wait().waiters.push_back(wid);
  job_waits_.Add(w.until, wid);
  return wid;
}

void Engine::JobWaitsDue(std::vector<uint64_t> waiter_ids) {
  for (uint64_t wid : waiter_ids) {
    auto it = job_waiters_.find(wid);
    if (it == job_waiters_.end()) continue;
    JobWaiter w = std::move(it->second);
    job_waiters_.erase(it);
    if (JobEntry* e = Find(w.job_id)) {
      e->Unwait(wid);
      w.done(GetJob(w.job_id), IsTerminal(e->job.state()));
    } else {
      w.done(absl::NotFoundError("job " + store::FormatJobId(w.job_id) + " was deleted"), false);
    }
  }
}

bool Engine::CancelWaitJob(uint64_t waiter_id) {
  auto it = job_waiters_.find(waiter_id);
  if (it == job_waiters_.end()) return false;
  if (JobEntry* e = Find(it->second.job_id)) e->Unwait(waiter_id);
  job_waits_.Remove(it->second.until, waiter_id);
  job_waiters_.erase(it);
  return true;
}

void Engine::FireJobWaiters(JobEntry& e) {
  std::vector<uint64_t> ids;
  if (e.waiting) ids.swap(e.waiting->waiters);
  for (uint64_t wid : ids) {
    auto it = job_waiters_.find(wid);
    if (it == job_waiters_.end()) continue;
    JobWaiter w = std::move(it->second);
    job_waiters_.erase(it);
    job_waits_.Remove(w.until, wid);
    w.done(GetJob(e.id), true);
  }
}

commit::Mutation Engine::JobMutation(const v1::Job& job, uint64_t lease_token,
                                     v1::EventType type, bool sync) const {
  commit::Mutation m;
  m.sync = sync;
  // Serialized in place: copying the job into a JobRecord first costs a
  // dozen allocations and frees per write.
  m.ops.push_back({commit::Cf::kJobs, store::EncodeBE64(store::ParseJobId(job.id()).value()),
                   JobRecordBytes(job.SerializeAsString(), lease_token)});
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
  assert(e.job.held());  // by Hold(): reads meanwhile show the job as it was
  e.busy = true;
  const uint64_t id = e.id;
  uint64_t token = job.state() == v1::JOB_STATE_LEASED ? e.lease_token : 0;
  commit::Mutation m = JobMutation(job, token, type, sync);
  pipeline_->Submit(std::move(m), [this, id, job = std::move(job), then = std::move(then)](
                                      commit::CommitResult&& r) mutable {
    JobEntry* e = Find(id);
    assert(e != nullptr);
    if (r.status.ok()) {
      ApplyJob(*e, std::move(job));
    } else {
      e->pinned = true;
    }
    e->busy = false;
    then(r.status, *e);
    ReleaseJob(*e);
    if (JobEntry* f = Find(id)) Settle(*f);
    ArmTimers();  // e.g. a finished job's retention deadline
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
  // A key whose first enqueue is still being committed: answer this call
  // once that commit landed (then as a duplicate, or as a fresh enqueue if
  // the first one failed). Exactly one job results either way.
  for (const v1::EnqueueRequest& req : requests) {
    if (req.idempotency_key().empty()) continue;
    auto it = pending_keys_.find(IdemKey(req.queue(), req.idempotency_key()));
    if (it == pending_keys_.end()) continue;
    auto call = std::make_shared<std::tuple<std::vector<v1::EnqueueRequest>, v1::Durability,
                                            EnqueueDone>>(std::move(requests), durability,
                                                          std::move(done));
    it->second.push_back([this, call] {
      Enqueue(std::move(std::get<0>(*call)), std::get<1>(*call), std::move(std::get<2>(*call)));
    });
    return;
  }

  const auto now = clock_.Now();
  const bool sync = durability == v1::DURABILITY_SYNC ||
                    (durability == v1::DURABILITY_UNSPECIFIED && options_.sync_by_default);
  const size_t n = requests.size();
  // Per request: the id of the job it answers with, whether that job
  // already existed (or came earlier in this batch).
  std::vector<uint64_t> answer_ids(n, 0);
  std::vector<bool> duplicate(n, false);
  std::unordered_map<std::string, uint64_t> batch_keys;
  std::map<std::string, uint64_t> new_per_queue;
  for (size_t i = 0; i < n; ++i) {
    const v1::EnqueueRequest& req = requests[i];
    if (!req.idempotency_key().empty()) {
      std::string k = IdemKey(req.queue(), req.idempotency_key());
      if (auto b = batch_keys.find(k); b != batch_keys.end()) {
        answer_ids[i] = b->second;
        duplicate[i] = true;
        continue;
      }
      if (auto it = idem_.find(k); it != idem_.end()) {
        if (now - it->second.created < options_.idempotency_window &&
            Find(it->second.job_id) != nullptr) {
          answer_ids[i] = it->second.job_id;
          duplicate[i] = true;
          continue;
        }
        idem_.erase(it);  // outside the window: the key is free again
      }
      batch_keys.emplace(std::move(k), 0);  // id set below
    }
    new_per_queue[req.queue()]++;
  }
  if (options_.max_queue_depth > 0) {
    for (const auto& [name, added] : new_per_queue) {
      auto it = queues_.find(name);
      uint64_t depth = 0;
      if (it != queues_.end()) {
        const QueueState& q = it->second;
        depth = q.counts[v1::JOB_STATE_SCHEDULED] + q.counts[v1::JOB_STATE_READY] +
                q.counts[v1::JOB_STATE_LEASED] + q.pending;
      }
      if (depth + added > options_.max_queue_depth) {
        done(absl::ResourceExhaustedError(
            "queue \"" + name + "\" is full: it holds " + std::to_string(depth) +
            " jobs not yet finished" + (added > 1 ? " and " + std::to_string(added) + " more were asked for" : "") +
            "; the limit is " + std::to_string(options_.max_queue_depth) +
            " (--max-queue-depth)"));
        return;
      }
    }
  }

  commit::Mutation m;
  m.sync = sync;
  // The new jobs live on one arena until they are packed at commit: freed
  // at once rather than a dozen small frees each, which fragment the heap.
  struct NewJobs {
    google::protobuf::Arena arena;
    std::vector<v1::Job*> jobs;
  };
  auto jobs = std::make_shared<NewJobs>();
  auto keys = std::make_shared<std::vector<std::string>>();  // pending keys we own
  for (size_t i = 0; i < n; ++i) {
    if (duplicate[i]) continue;
    v1::EnqueueRequest& req = requests[i];
    v1::Job& job = *google::protobuf::Arena::CreateMessage<v1::Job>(&jobs->arena);
    uint64_t id = NextJobId();
    answer_ids[i] = id;
    if (!req.idempotency_key().empty()) {
      std::string k = IdemKey(req.queue(), req.idempotency_key());
      batch_keys[k] = id;
      pending_keys_.try_emplace(k);
      keys->push_back(std::move(k));
    }
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
    jobs->jobs.push_back(&job);
  }
  // In-batch duplicates point at the id their key got above.
  for (size_t i = 0; i < n; ++i) {
    if (duplicate[i] && answer_ids[i] == 0) {
      answer_ids[i] = batch_keys[IdemKey(requests[i].queue(), requests[i].idempotency_key())];
    }
  }
  for (const auto& [name, added] : new_per_queue) Queue(name).pending += added;
  // Even an all-duplicate call goes through the pipeline (an empty write):
  // its answer then promises the requested durability like any other.
  pipeline_->Submit(std::move(m), [this, jobs, keys, new_per_queue = std::move(new_per_queue),
                                   answer_ids = std::move(answer_ids),
                                   duplicate = std::move(duplicate),
                                   done = std::move(done)](commit::CommitResult&& r) {
    for (const auto& [name, added] : new_per_queue) Queue(name).pending -= added;
    std::vector<std::function<void()>> retry;
    for (const std::string& k : *keys) {
      auto it = pending_keys_.find(k);
      if (it == pending_keys_.end()) continue;
      for (auto& fn : it->second) retry.push_back(std::move(fn));
      pending_keys_.erase(it);
    }
    if (!r.status.ok()) {
      done(r.status);
      for (auto& fn : retry) fn();
      return;
    }
    EnqueueOutcome out;
    out.synced = r.synced;
    out.commit_seq = r.commit_seq;
    std::vector<QueueState*> touched;
    for (v1::Job* job_on_arena : jobs->jobs) {
      const v1::Job& job = *job_on_arena;
      auto entry = std::make_unique<JobEntry>();
      entry->id = store::ParseJobId(job.id()).value();
      entry->queue = &Queue(job.queue());
      entry->run_at = FromProto(job.run_at());
      entry->job.Track(job);  // the record is in the store now
      JobEntry& e = *entry;
      jobs_.insert(entry.release());
      e.queue->counts[e.job.state()]++;
      e.queue->total_enqueued++;
      e.queue->ids.insert(e.id);
      if (!job.idempotency_key().empty()) {
        idem_[IdemKey(job.queue(), job.idempotency_key())] =
            IdemEntry{e.id, FromProto(job.created_at())};
      }
      Place(e);
      touched.push_back(e.queue);
    }
    for (size_t i = 0; i < answer_ids.size(); ++i) {
      out.job_ids.push_back(store::FormatJobId(answer_ids[i]));
      out.duplicate.push_back(duplicate[i]);
      v1::Job dup;
      if (duplicate[i]) {
        if (auto j = GetJob(answer_ids[i]); j.ok()) dup = std::move(*j);
      }
      out.jobs.push_back(std::move(dup));
    }
    done(std::move(out));
    for (auto& fn : retry) fn();
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (QueueState* q : touched) Dispatch(*q);
    ArmTimers();
  });
}

const std::string* Engine::JobQueue(uint64_t id) const {
  JobEntry* e = Find(id);
  return e == nullptr ? nullptr : &e->queue->name;
}

absl::StatusOr<v1::Job> Engine::GetJob(uint64_t id) const {
  JobEntry* e = Find(id);
  if (e == nullptr) return absl::NotFoundError("job " + store::FormatJobId(id) + " not found");
  return Load(*e);  // a read from the store unless the job is held
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
  e.ready_seq = ++ready_counter_;
  ReadyPush(e);
}

void Engine::Dispatch(QueueState& q) {
  while (!q.waiters.empty() && !stopping_ && HasLeasable(q)) {
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
  lease_waits_.Remove(it->second.until, waiter_id);
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
    if (it != queues_.end() && HasLeasable(it->second)) any = true;
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
  w.until = std::chrono::steady_clock::now() + spec.wait;
  w.spec = std::move(spec);
  w.done = std::move(done);
  lease_waits_.Add(w.until, wid);
  return wid;
}

void Engine::LeaseWaitsDue(std::vector<uint64_t> waiter_ids) {
  for (uint64_t wid : waiter_ids) {
    if (waiters_.count(wid) == 0) continue;
    Waiter expired;
    RemoveWaiter(wid, &expired);
    expired.done(std::vector<v1::Lease>());
  }
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
      if (it == queues_.end()) continue;
      auto front = PickNext(it->second);
      if (front && (!best_entry || ReadyQueue::Before(*front, *best_entry))) {
        best = &it->second;
        best_entry = front;
      }
    }
    if (best == nullptr) break;
    JobEntry* e = Find(best_entry->job_id);
    assert(e != nullptr && !e->busy);
    ReadyErase(*e);
    const std::string& key = e->job.concurrency_key();
    best->rr_last = key;
    if (!key.empty()) best->leased_by_key[key]++;
    picked.push_back(e);
  }
  if (picked.empty()) {
    done(std::vector<v1::Lease>());
    return;
  }
  // The whole jobs, from the store: a job that cannot be read fails the
  // call, and every picked job goes back to its place.
  std::vector<v1::Job> loaded;
  loaded.reserve(picked.size());
  for (JobEntry* e : picked) {
    auto job = Hold(*e);
    if (!job.ok()) {
      spdlog::error("lease: {}", job.status().ToString());
      for (JobEntry* p : picked) {
        UnpickJob(*p);
        Settle(*p);
      }
      done(job.status());
      return;
    }
    loaded.push_back(std::move(*job));
  }

  const auto now = clock_.Now();
  commit::Mutation m;
  // Leases need not be durable: the WAL write survives a crash, and the
  // lease is delivered without waiting for an fsync. Its event reaches
  // subscribers only once fsynced in sync mode (the commit pipeline holds
  // it), so a sequence number a subscriber saw is never reused.
  m.sync = false;
  struct Pick {
    uint64_t id;
    uint64_t token;
    util::Clock::TimePoint deadline;
    v1::Job job;
  };
  auto picks = std::make_shared<std::vector<Pick>>();
  for (size_t i = 0; i < picked.size(); ++i) {
    JobEntry* e = picked[i];
    e->busy = true;
    v1::Job job = std::move(loaded[i]);
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
        ApplyJob(*e, p.job);
        e->queue->total_leased++;
        e->lease_token = p.token;
        e->lease_deadline = p.deadline;
        leases_.Add(p.deadline, p.id);
        v1::Lease lease;
        *lease.mutable_job() = std::move(p.job);
        lease.set_lease_token(p.token);
        *lease.mutable_deadline() = ToProto(p.deadline);
        leases.push_back(std::move(lease));
      } else {
        // The job is ready again, in its old place.
        e->pinned = true;
        UnpickJob(*e);
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
      if (JobEntry* e = Find(p.id)) Settle(*e);
    }
    for (QueueState* q : requeued) Dispatch(*q);
    ArmTimers();
  });
}

void Engine::UnpickJob(JobEntry& e) {
  if (!e.job.concurrency_key().empty()) {
    auto it = e.queue->leased_by_key.find(e.job.concurrency_key());
    if (it != e.queue->leased_by_key.end() && --it->second == 0) {
      e.queue->leased_by_key.erase(it);
    }
  }
  ReadyPush(e);
}

// ---------------------------------------------------------------------------
// Outcomes.

absl::Status Engine::Check(const JobEntry& e, uint64_t lease_token) const {
  if (e.job.state() != v1::JOB_STATE_LEASED || e.lease_token == 0) {
    return absl::FailedPreconditionError(
        "job " + store::FormatJobId(e.id) + " is not leased (state " +
        v1::JobState_Name(e.job.state()) +
        "); lease_token " + std::to_string(lease_token) + " is stale");
  }
  if (e.lease_token != lease_token) {
    return absl::FailedPreconditionError(
        "lease_token " + std::to_string(lease_token) + " is not the current lease of job " +
        store::FormatJobId(e.id) + " (now on attempt " + std::to_string(e.job.attempts()) +
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

v1::Job Engine::EndAttempt(v1::Job job, v1::AttemptOutcome outcome, const std::string& error,
                           microseconds retry_after, bool non_retryable, bool immediate_retry) {
  const auto now = clock_.Now();
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
    JobEntry* found = Find(id);
    if (found == nullptr) {
      done(absl::NotFoundError("job " + store::FormatJobId(id) + " was deleted"));
      return;
    }
    JobEntry& e = *found;
    if (absl::Status s = Check(e, lease_token); !s.ok()) {
      done(s);
      return;
    }
    const auto now = clock_.Now();
    auto held = Hold(e);
    if (!held.ok()) {
      done(held.status());
      return;
    }
    v1::Job job = std::move(*held);
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
                Dispatch(*e.queue);  // a fairness slot may have freed
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
    JobEntry* found = Find(id);
    if (found == nullptr) {
      done(absl::NotFoundError("job " + store::FormatJobId(id) + " was deleted"));
      return;
    }
    JobEntry& e = *found;
    if (absl::Status s = Check(e, lease_token); !s.ok()) {
      done(s);
      return;
    }
    auto held = Hold(e);
    if (!held.ok()) {
      done(held.status());
      return;
    }
    const bool cancelled = e.job.cancel_requested();
    v1::Job job = cancelled ? CancelledJob(std::move(*held), spec.error)
                            : EndAttempt(std::move(*held), v1::ATTEMPT_OUTCOME_FAILED,
                                         spec.error, spec.retry_after, spec.non_retryable,
                                         /*immediate_retry=*/false);
    v1::EventType type = cancelled                              ? v1::EVENT_TYPE_CANCELLED
                         : job.state() == v1::JOB_STATE_DEAD ? v1::EVENT_TYPE_DEAD
                                                             : v1::EVENT_TYPE_RETRY_SCHEDULED;
    CommitJob(e, std::move(job), type, options_.sync_by_default,
              [this, cancelled, done = std::move(done)](const absl::Status& s, JobEntry& e) {
                if (!s.ok()) {
                  done(s);
                  return;
                }
                leases_.Remove(e.lease_deadline, e.id);
                e.lease_token = 0;
                if (!cancelled) e.queue->total_failed++;
                if (e.job.state() == v1::JOB_STATE_DEAD) {
                  e.queue->total_dead++;
                  spdlog::warn("job {} in queue {} is DEAD after {} attempts (failed)",
                               store::FormatJobId(e.id),
                               e.queue->name, e.job.attempts());
                }
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
    JobEntry* found = Find(id);
    if (found == nullptr) {
      done(absl::NotFoundError("job " + store::FormatJobId(id) + " was deleted"));
      return;
    }
    JobEntry& e = *found;
    if (absl::Status s = Check(e, lease_token); !s.ok()) {
      done(s);
      return;
    }
    const auto now = clock_.Now();
    auto held = Hold(e);  // LEASED: held already
    if (!held.ok()) {
      done(held.status());
      return;
    }
    microseconds by =
        extend_by.count() > 0 ? extend_by : DurationFromProto(held->lease_duration());
    auto deadline = now + by;
    auto apply_deadline = [this, deadline](JobEntry& e) {
      leases_.Remove(e.lease_deadline, e.id);
      e.lease_deadline = deadline;
      leases_.Add(deadline, e.id);  // Load() shows it from here on
      ArmTimers();
    };
    if (!progress) {
      apply_deadline(e);
      done(ExtendOutcome{deadline, e.job.cancel_requested()});
      return;
    }
    v1::Job job = std::move(*held);
    *progress->mutable_updated_at() = ToProto(now);
    *job.mutable_progress() = std::move(*progress);
    *job.mutable_updated_at() = ToProto(now);
    *job.mutable_lease_deadline() = ToProto(deadline);
    // Progress need not be durable; its event waits for an fsync in sync
    // mode all the same (see StartLease).
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

void Engine::ReleaseLease(uint64_t id, uint64_t lease_token, v1::AttemptOutcome outcome) {
  JobEntry* e = Find(id);
  if (e == nullptr) return;
  WithJob(*e, [this, id, lease_token, outcome] {
    JobEntry* found = Find(id);
    if (found == nullptr || !Check(*found, lease_token).ok()) return;
    ExpireLease(id, outcome);
  });
}

void Engine::ExpireLease(uint64_t id, v1::AttemptOutcome outcome) {
  JobEntry* e = Find(id);
  if (e == nullptr) return;
  WithJob(*e, [this, id, outcome] {
    JobEntry* found = Find(id);
    if (found == nullptr) return;
    JobEntry& e = *found;
    if (e.job.state() != v1::JOB_STATE_LEASED) return;
    if (outcome == v1::ATTEMPT_OUTCOME_LEASE_EXPIRED && e.lease_deadline > clock_.Now()) {
      return;  // extended meanwhile
    }
    std::string why = outcome == v1::ATTEMPT_OUTCOME_BROKER_RESTART
                          ? "the broker restarted during this attempt"
                      : outcome == v1::ATTEMPT_OUTCOME_WORKER_LOST
                          ? "the worker's Connect stream dropped and the grace period passed"
                          : "lease expired without Complete, Fail or Extend";
    auto held = Hold(e);
    if (!held.ok()) {
      // Try again at the next tick, as after a failed write below.
      spdlog::error("ending the lease of job {}: {}", store::FormatJobId(e.id),
                    held.status().ToString());
      leases_.Remove(e.lease_deadline, e.id);
      e.lease_deadline = clock_.Now() + std::chrono::seconds(1);
      leases_.Add(e.lease_deadline, e.id);
      ArmTimers();
      return;
    }
    const bool cancelled = e.job.cancel_requested();
    v1::Job job = cancelled ? CancelledJob(std::move(*held), why)
                            : EndAttempt(std::move(*held), outcome, why, microseconds(0), false,
                                         /*immediate_retry=*/true);
    leases_.Remove(e.lease_deadline, e.id);
    e.lease_token = 0;  // no token of the ended lease is valid any more
    v1::EventType type = cancelled                              ? v1::EVENT_TYPE_CANCELLED
                         : job.state() == v1::JOB_STATE_DEAD ? v1::EVENT_TYPE_DEAD
                                                             : v1::EVENT_TYPE_RETRY_SCHEDULED;
    // A lost expiry is redone after a restart (the job is LEASED on disk);
    // its event waits for an fsync in sync mode all the same (see StartLease).
    CommitJob(e, std::move(job), type, /*sync=*/false,
              [this, cancelled, outcome](const absl::Status& s, JobEntry& e) {
                if (!s.ok()) {
                  // Try again at the next tick; the job stays leased meanwhile.
                  leases_.Add(clock_.Now() + std::chrono::seconds(1), e.id);
                  e.lease_deadline = clock_.Now() + std::chrono::seconds(1);
                  ArmTimers();
                  return;
                }
                if (!cancelled) e.queue->total_failed++;
                if (outcome != v1::ATTEMPT_OUTCOME_BROKER_RESTART) e.queue->total_lease_expired++;
                if (e.job.state() == v1::JOB_STATE_DEAD) {
                  e.queue->total_dead++;
                  spdlog::warn("job {} in queue {} is DEAD after {} attempts ({})",
                               store::FormatJobId(e.id),
                               e.queue->name, e.job.attempts(),
                               v1::AttemptOutcome_Name(outcome));
                }
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
      e->Wait().deferred.push_back([this, id] {
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
  SweepRetention(now);
  ArmTimers();
}

void Engine::ArmTimers() {
  if (stopping_) return;
  std::optional<util::Clock::TimePoint> next = leases_.Earliest();
  if (auto s = scheduled_.Earliest(); s && (!next || *s < *next)) next = s;
  if (!retention_in_flight_) {
    // Deletions lag by up to 100 ms so that jobs finishing close together
    // are deleted in one write.
    if (auto x = expiries_.Earliest()) {
      auto at = *x + std::chrono::milliseconds(100);
      if (!next || at < *next) next = at;
    }
  }
  if (!next) return;
  if (timer_at_ && *timer_at_ <= *next) return;  // already armed early enough
  timer_at_ = next;
  auto wait = *next - clock_.Now();
  if (wait.count() < 0) wait = wait.zero();
  timer_.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(wait));
  timer_.async_wait(OnCore([this](const std::error_code& ec) {
    if (ec) return;
    OnTimer();
  }));
}

// ---------------------------------------------------------------------------
// Ready-queue membership and fairness.

void Engine::ReadyPush(JobEntry& e) {
  ReadyQueue::Entry entry{e.job.priority(), e.ready_seq, e.id};
  e.queue->ready_by_key[e.job.concurrency_key()].Push(entry);
  e.queue->ready_by_seq.emplace(e.ready_seq, e.id);
}

bool Engine::ReadyErase(JobEntry& e) {
  auto it = e.queue->ready_by_key.find(e.job.concurrency_key());
  if (it == e.queue->ready_by_key.end()) return false;
  if (!it->second.Erase(ReadyQueue::Entry{e.job.priority(), e.ready_seq, e.id})) return false;
  if (it->second.empty()) e.queue->ready_by_key.erase(it);
  e.queue->ready_by_seq.erase(e.ready_seq);
  return true;
}

std::optional<ReadyQueue::Entry> Engine::PickNext(const QueueState& q) const {
  if (q.paused || q.ready_by_key.empty()) return std::nullopt;
  if (q.max_leased_per_key == 0 && q.ready_by_key.size() == 1) {
    return q.ready_by_key.begin()->second.Front();
  }
  // Keys take turns, starting after the last one served; the highest
  // priority wins, and among equals the first key in turn.
  std::optional<ReadyQueue::Entry> best;
  auto start = q.ready_by_key.upper_bound(q.rr_last);
  auto it = start;
  for (size_t i = 0; i < q.ready_by_key.size(); ++i, ++it) {
    if (it == q.ready_by_key.end()) it = q.ready_by_key.begin();
    const std::string& key = it->first;
    if (q.max_leased_per_key > 0 && !key.empty()) {
      auto l = q.leased_by_key.find(key);
      if (l != q.leased_by_key.end() && l->second >= q.max_leased_per_key) continue;
    }
    auto front = it->second.Front();
    if (front && (!best || front->priority > best->priority)) best = front;
  }
  return best;
}

// ---------------------------------------------------------------------------
// Cancel.

v1::Job Engine::CancelledJob(v1::Job job, const std::string& attempt_error) const {
  const auto now = clock_.Now();
  job.set_state(v1::JOB_STATE_CANCELLED);
  job.clear_lease_deadline();
  *job.mutable_updated_at() = ToProto(now);
  *job.mutable_finished_at() = ToProto(now);
  if (job.history_size() > 0) {
    v1::Attempt* a = job.mutable_history(job.history_size() - 1);
    *a->mutable_ended_at() = ToProto(now);
    a->set_outcome(v1::ATTEMPT_OUTCOME_CANCELLED);
    a->set_error(Truncate(attempt_error));
  }
  // job.error keeps the cancel reason, set when the cancel was requested.
  return job;
}

void Engine::Cancel(uint64_t id, std::string reason, JobDone done) {
  JobEntry* e = Find(id);
  if (e == nullptr) {
    done(absl::NotFoundError("job " + store::FormatJobId(id) + " not found"));
    return;
  }
  if (reason.empty()) reason = "cancelled";
  WithJob(*e, [this, id, reason = Truncate(reason), done = std::move(done)]() mutable {
    if (stopping_) {
      done(absl::UnavailableError("broker is shutting down"));
      return;
    }
    JobEntry* found = Find(id);
    if (found == nullptr) {
      done(absl::NotFoundError("job " + store::FormatJobId(id) + " was deleted"));
      return;
    }
    JobEntry& e = *found;
    const v1::JobState state = e.job.state();
    if (IsTerminal(state)) {
      done(absl::FailedPreconditionError(
          "job " + store::FormatJobId(e.id) + " is already " + v1::JobState_Name(state) +
          "; only READY, SCHEDULED or LEASED jobs can be cancelled"));
      return;
    }
    const auto now = clock_.Now();
    auto held = Hold(e);
    if (!held.ok()) {
      done(held.status());
      return;
    }
    v1::Job job = std::move(*held);
    *job.mutable_updated_at() = ToProto(now);
    job.set_error(reason);
    if (state == v1::JOB_STATE_LEASED) {
      if (e.job.cancel_requested()) {
        done(GetJob(id));
        return;
      }
      job.set_cancel_requested(true);
      CommitJob(e, std::move(job), v1::EVENT_TYPE_CANCEL_REQUESTED, options_.sync_by_default,
                [this, done = std::move(done)](const absl::Status& s, JobEntry& e) {
                  if (!s.ok()) {
                    done(s);
                    return;
                  }
                  done(GetJob(e.id));
                });
      return;
    }
    // READY or SCHEDULED: out of the ready queue now, so that no lease picks
    // it while the write is in flight; back in its old place if it fails.
    const bool was_ready = ReadyErase(e);
    job.set_state(v1::JOB_STATE_CANCELLED);
    job.clear_lease_deadline();
    *job.mutable_finished_at() = ToProto(now);
    const auto run_at = e.run_at;
    CommitJob(e, std::move(job), v1::EVENT_TYPE_CANCELLED, options_.sync_by_default,
              [this, was_ready, run_at, done = std::move(done)](const absl::Status& s,
                                                                 JobEntry& e) {
                if (!s.ok()) {
                  if (was_ready) {
                    ReadyPush(e);
                    Dispatch(*e.queue);
                  }
                  done(s);
                  return;
                }
                scheduled_.Remove(run_at, e.id);
                done(GetJob(e.id));
              });
  });
}

// ---------------------------------------------------------------------------
// Queue control.

void Engine::UpdateQueueRecord(const std::string& name,
                               const std::function<void(store::QueueRecord&)>& change,
                               StatusDone done) {
  if (stopping_) {
    done(absl::UnavailableError("broker is shutting down"));
    return;
  }
  QueueState& q = Queue(name);
  q.desired.set_name(name);
  change(q.desired);
  store::QueueRecord rec = q.desired;
  commit::Mutation m;
  m.sync = true;  // operators expect a pause to hold after a power loss
  m.ops.push_back({commit::Cf::kDefault, store::QueueKey(name), rec.SerializeAsString()});
  pipeline_->Submit(std::move(m), [this, name, rec, done = std::move(done)](
                                      commit::CommitResult&& r) {
    QueueState& q = Queue(name);
    if (!r.status.ok()) {
      // The record on disk is the last committed one.
      q.desired.set_paused(q.paused);
      q.desired.set_max_leased_per_key(q.max_leased_per_key);
      done(r.status);
      return;
    }
    // Results of writes with the same durability arrive in submission order
    // (and queue records are always written with sync), so
    // this is the newest committed record.
    q.paused = rec.paused();
    q.max_leased_per_key = rec.max_leased_per_key();
    done(absl::OkStatus());
    Dispatch(q);
  });
}

void Engine::SetPaused(const std::string& queue, bool paused, StatusDone done) {
  UpdateQueueRecord(
      queue, [paused](store::QueueRecord& r) { r.set_paused(paused); },
      [queue, paused, done = std::move(done)](absl::Status s) {
        if (s.ok()) spdlog::info("queue {} {}", queue, paused ? "paused" : "resumed");
        done(std::move(s));
      });
}

void Engine::SetQueueConfig(const std::string& queue, uint32_t max_leased_per_key,
                            StatusDone done) {
  UpdateQueueRecord(
      queue,
      [max_leased_per_key](store::QueueRecord& r) {
        r.set_max_leased_per_key(max_leased_per_key);
      },
      std::move(done));
}

void Engine::Purge(const std::string& queue, CountDone done) {
  if (stopping_) {
    done(absl::UnavailableError("broker is shutting down"));
    return;
  }
  auto qit = queues_.find(queue);
  if (qit == queues_.end()) {
    done(uint64_t{0});
    return;
  }
  std::vector<uint64_t> victims;
  for (uint64_t id : qit->second.ids) {
    JobEntry* e = Find(id);
    if (e == nullptr || e->busy) continue;
    v1::JobState st = e->job.state();
    if (st == v1::JOB_STATE_READY || st == v1::JOB_STATE_SCHEDULED) victims.push_back(id);
  }
  if (victims.empty()) {
    done(uint64_t{0});
    return;
  }
  struct Progress {
    size_t writes = 0;
    uint64_t purged = 0;
    absl::Status error;
    CountDone done;
  };
  auto progress = std::make_shared<Progress>();
  progress->done = std::move(done);
  constexpr size_t kChunk = 1000;
  const auto now = clock_.Now();
  for (size_t at = 0; at < victims.size(); at += kChunk) {
    auto ids = std::make_shared<std::vector<uint64_t>>();
    commit::Mutation m;
    m.sync = options_.sync_by_default;
    for (size_t i = at; i < std::min(victims.size(), at + kChunk); ++i) {
      JobEntry& e = *Find(victims[i]);
      // Held while the deletion is in flight (reads meanwhile, and EraseJob,
      // need the job, which the store then no longer has).
      auto held = Hold(e);
      if (!held.ok()) {
        spdlog::error("purge of queue {}: {}", queue, held.status().ToString());
        if (progress->error.ok()) progress->error = held.status();
        continue;
      }
      ReadyErase(e);
      e.busy = true;
      ids->push_back(e.id);
      m.ops.push_back({commit::Cf::kJobs, store::EncodeBE64(e.id), std::nullopt});
      v1::Event ev = MakeEvent(*held, v1::EVENT_TYPE_DELETED);
      *ev.mutable_time() = ToProto(now);
      m.events.push_back(std::move(ev));
    }
    if (ids->empty()) continue;
    progress->writes++;
    pipeline_->Submit(std::move(m), [this, ids, progress](commit::CommitResult&& r) {
      std::vector<QueueState*> touched;
      for (uint64_t id : *ids) {
        JobEntry* e = Find(id);
        if (e == nullptr) continue;
        e->busy = false;
        if (r.status.ok()) {
          EraseJob(id);
          progress->purged++;
        } else {
          e->pinned = true;
          if (e->job.state() == v1::JOB_STATE_READY) ReadyPush(*e);
          touched.push_back(e->queue);
          ReleaseJob(*e);
          if (JobEntry* f = Find(id)) Settle(*f);
        }
      }
      if (r.status.ok()) {
        NoteDeleted(ids->size());
      } else if (progress->error.ok()) {
        progress->error = r.status;
      }
      for (QueueState* q : touched) Dispatch(*q);
      if (--progress->writes == 0) {
        if (progress->error.ok()) {
          progress->done(progress->purged);
        } else {
          progress->done(progress->error);
        }
      }
    });
  }
  if (progress->writes == 0) progress->done(progress->error);  // no job could be read
}

void Engine::EraseJob(uint64_t id) {
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return;
  std::unique_ptr<JobEntry> owned(*it);
  jobs_.erase(it);
  JobEntry& e = *owned;
  QueueState& q = *e.queue;
  ReadyErase(e);
  scheduled_.Remove(e.run_at, id);
  if (e.job.state() == v1::JOB_STATE_LEASED) {
    leases_.Remove(e.lease_deadline, id);
    if (!e.job.concurrency_key().empty()) {
      auto l = q.leased_by_key.find(e.job.concurrency_key());
      if (l != q.leased_by_key.end() && --l->second == 0) q.leased_by_key.erase(l);
    }
  }
  if (e.expiring) expiries_.Remove(e.expire_at, id);
  q.counts[e.job.state()]--;
  q.ids.erase(id);
  if (e.job.has_idempotency_key() && e.job.held()) {
    // Deletions hold the job. (Were it not held, the key's entry would
    // stay and name a job that is gone, which Enqueue treats as no entry.)
    auto k = idem_.find(IdemKey(q.name, e.job.Unpack().idempotency_key()));
    if (k != idem_.end() && k->second.job_id == id) idem_.erase(k);
  }
  deleted_total_++;
  if (!e.waiting) return;
  for (uint64_t wid : e.waiting->waiters) {
    auto w = job_waiters_.find(wid);
    if (w == job_waiters_.end()) continue;
    JobWaiter waiter = std::move(w->second);
    job_waiters_.erase(w);
    job_waits_.Remove(waiter.until, wid);
    waiter.done(absl::NotFoundError("job " + store::FormatJobId(e.id) + " was deleted"), false);
  }
  // Operations that waited for the job's write now find no job.
  for (auto& fn : e.waiting->deferred) fn();
}

void Engine::NoteDeleted(uint64_t n) {
  deletes_since_compact_ += n;
  if (deletes_since_compact_ >= options_.compact_after_deletes) {
    deletes_since_compact_ = 0;
    if (options_.request_compaction) options_.request_compaction();
  }
}

// ---------------------------------------------------------------------------
// Retention.

void Engine::UpdateExpiry(JobEntry& e, const v1::Job& job) {
  if (e.expiring) {
    expiries_.Remove(e.expire_at, e.id);
    e.expiring = false;
  }
  if (!IsTerminal(e.job.state())) return;
  microseconds keep = options_.retention;
  if (job.has_retention() && DurationFromProto(job.retention()).count() > 0) {
    keep = DurationFromProto(job.retention());
  }
  auto finished = job.has_finished_at() ? FromProto(job.finished_at())
                                        : FromProto(job.updated_at());
  e.expire_at = finished + keep;
  e.expiring = true;
  expiries_.Add(e.expire_at, e.id);
}

void Engine::SweepRetention(util::Clock::TimePoint now) {
  if (retention_in_flight_ || stopping_) return;
  auto due = expiries_.PopDue(now, options_.retention_batch);
  if (due.empty()) return;
  auto ids = std::make_shared<std::vector<uint64_t>>();
  commit::Mutation m;
  // A deletion lost to a power loss is simply redone; its events wait for an
  // fsync in sync mode all the same (see StartLease).
  m.sync = false;
  for (uint64_t id : due) {
    JobEntry* e = Find(id);
    if (e == nullptr) continue;
    e->expiring = false;
    if (!IsTerminal(e->job.state())) continue;
    if (e->busy) {
      // A write (e.g. a redrive) is in flight; look again shortly.
      e->expire_at = now + std::chrono::seconds(1);
      e->expiring = true;
      expiries_.Add(e->expire_at, id);
      continue;
    }
    auto held = Hold(*e);  // see Purge
    if (!held.ok()) {
      spdlog::error("retention: {}", held.status().ToString());
      e->expire_at = now + std::chrono::seconds(1);
      e->expiring = true;
      expiries_.Add(e->expire_at, id);
      continue;
    }
    e->busy = true;
    ids->push_back(id);
    m.ops.push_back({commit::Cf::kJobs, store::EncodeBE64(id), std::nullopt});
    v1::Event ev = MakeEvent(*held, v1::EVENT_TYPE_DELETED);
    *ev.mutable_time() = ToProto(now);
    m.events.push_back(std::move(ev));
  }
  if (ids->empty()) return;
  retention_in_flight_ = true;
  pipeline_->Submit(std::move(m), [this, ids](commit::CommitResult&& r) {
    retention_in_flight_ = false;
    const auto now = clock_.Now();
    for (uint64_t id : *ids) {
      JobEntry* e = Find(id);
      if (e == nullptr) continue;
      e->busy = false;
      if (r.status.ok()) {
        EraseJob(id);
      } else {
        e->pinned = true;
        e->expire_at = now + std::chrono::seconds(1);
        e->expiring = true;
        expiries_.Add(e->expire_at, id);
        ReleaseJob(*e);
        if (JobEntry* f = Find(id)) Settle(*f);
      }
    }
    if (r.status.ok()) {
      NoteDeleted(ids->size());
    }
    ArmTimers();
  });
}

// ---------------------------------------------------------------------------
// Dead letters.

void Engine::Redrive(const std::string& queue, std::vector<uint64_t> ids,
                     std::optional<std::string> payload, CountDone done) {
  if (stopping_) {
    done(absl::UnavailableError("broker is shutting down"));
    return;
  }
  if (ids.empty()) {
    auto qit = queues_.find(queue);
    if (qit != queues_.end()) {
      for (uint64_t id : qit->second.ids) {
        JobEntry* e = Find(id);
        if (e != nullptr && e->job.state() == v1::JOB_STATE_DEAD) ids.push_back(id);
      }
    }
  } else {
    for (size_t i = 0; i < ids.size(); ++i) {
      const std::string field = "job_ids[" + std::to_string(i) + "]";
      JobEntry* e = Find(ids[i]);
      if (e == nullptr) {
        done(absl::NotFoundError(field + ": job " + store::FormatJobId(ids[i]) + " not found"));
        return;
      }
      if (!queue.empty() && e->queue->name != queue) {
        done(absl::InvalidArgumentError(field + ": job " + store::FormatJobId(e->id) +
                                        " is in queue \"" +
                                        e->queue->name + "\", not \"" + queue + "\""));
        return;
      }
      if (e->job.state() != v1::JOB_STATE_DEAD) {
        done(absl::FailedPreconditionError(field + ": job " + store::FormatJobId(e->id) + " is " +
                                           v1::JobState_Name(e->job.state()) +
                                           ", not DEAD; only DEAD jobs can be redriven"));
        return;
      }
    }
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  }
  if (ids.empty()) {
    done(uint64_t{0});
    return;
  }
  struct Progress {
    size_t left = 0;
    uint64_t redriven = 0;
    absl::Status error;
    CountDone done;
  };
  auto progress = std::make_shared<Progress>();
  progress->left = ids.size();
  progress->done = std::move(done);
  auto finish_one = [progress] {
    if (--progress->left > 0) return;
    if (progress->redriven == 0 && !progress->error.ok()) {
      progress->done(progress->error);
    } else {
      progress->done(progress->redriven);
    }
  };
  for (uint64_t id : ids) {
    JobEntry& e = *Find(id);
    WithJob(e, [this, id, payload, progress, finish_one] {
      JobEntry* found = Find(id);
      if (found == nullptr || found->job.state() != v1::JOB_STATE_DEAD || stopping_) {
        finish_one();  // deleted or changed meanwhile
        return;
      }
      JobEntry& e = *found;
      const auto now = clock_.Now();
      auto held = Hold(e);
      if (!held.ok()) {
        if (progress->error.ok()) progress->error = held.status();
        finish_one();
        return;
      }
      v1::Job job = std::move(*held);
      job.set_state(v1::JOB_STATE_READY);
      job.set_attempts(0);
      job.clear_error();
      job.clear_result();
      job.clear_finished_at();
      job.clear_lease_deadline();
      job.set_cancel_requested(false);
      if (payload) job.set_payload(*payload);
      *job.mutable_run_at() = ToProto(now);
      *job.mutable_updated_at() = ToProto(now);
      CommitJob(e, std::move(job), v1::EVENT_TYPE_REDRIVEN, options_.sync_by_default,
                [this, progress, finish_one](const absl::Status& s, JobEntry& e) {
                  if (!s.ok()) {
                    if (progress->error.ok()) progress->error = s;
                  } else {
                    progress->redriven++;
                    Place(e);
                    Dispatch(*e.queue);
                  }
                  finish_one();
                });
    });
  }
}

// ---------------------------------------------------------------------------
// Listing.

ListPage Engine::ListJobs(const ListSpec& spec) const {
  ListPage page;
  auto qit = queues_.find(spec.queue);
  if (qit == queues_.end()) return page;
  const absl::btree_set<uint64_t>& ids = qit->second.ids;
  size_t scanned = 0;
  uint64_t last = 0;
  auto visit = [&](uint64_t id) -> bool {  // false: the page is done
    if (page.jobs.size() >= spec.page_size || scanned >= spec.max_scan) {
      page.next = last;
      return false;
    }
    scanned++;
    last = id;
    JobEntry* e = Find(id);
    if (e == nullptr) return true;
    if (spec.state != v1::JOB_STATE_UNSPECIFIED && e->job.state() != spec.state) return true;
    auto job = GetJob(id);
    if (!job.ok()) return true;
    if (spec.omit_payload) job->clear_payload();
    page.jobs.push_back(std::move(*job));
    return true;
  };
  if (!spec.newest_first) {
    for (auto it = spec.after ? ids.upper_bound(spec.after) : ids.begin(); it != ids.end();
         ++it) {
      if (!visit(*it)) break;
    }
  } else {
    auto from = spec.after ? ids.lower_bound(spec.after) : ids.end();
    for (auto it = std::make_reverse_iterator(from); it != ids.rend(); ++it) {
      if (!visit(*it)) break;
    }
  }
  return page;
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
  if (!q.ready_by_seq.empty()) {
    if (JobEntry* e = Find(q.ready_by_seq.begin()->second)) {
      auto age = clock_.Now() - e->ReadySince();
      if (age.count() < 0) age = age.zero();
      *st.mutable_oldest_ready_age() =
          DurationToProto(std::chrono::duration_cast<microseconds>(age));
    }
  }
  st.set_paused(q.paused);
  st.set_max_leased_per_key(q.max_leased_per_key);
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

std::map<std::string, Engine::LeaseTotals> Engine::LeaseTotalsByQueue() const {
  std::map<std::string, LeaseTotals> out;
  for (const auto& [name, q] : queues_) out[name] = LeaseTotals{q.total_leased, q.total_lease_expired};
  return out;
}

}  // namespace errand::dispatch
