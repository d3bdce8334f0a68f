#include "dispatch/engine.h"

#include <gtest/gtest.h>

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <rocksdb/write_batch.h>

#include "commit/commit_pipeline.h"
#include "store/job_store.h"
#include "store/keys.h"
#include "support/test_support.h"
#include "util/clock.h"
#include "util/time.h"

namespace errand::dispatch {
namespace {

using std::chrono::hours;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::seconds;
using util::DurationToProto;
using util::FromProto;
using TimePoint = util::Clock::TimePoint;

uint64_t Id(const std::string& text) { return store::ParseJobId(text).value(); }

v1::EnqueueRequest Req(const std::string& queue, int32_t priority = 0,
                       const std::string& payload = "p") {
  v1::EnqueueRequest req;
  req.set_queue(queue);
  req.set_priority(priority);
  req.set_payload(payload);
  return req;
}

LeaseSpec Spec(std::vector<std::string> queues, uint32_t max_jobs = 1,
               microseconds wait = microseconds(0)) {
  LeaseSpec spec;
  spec.queues = std::move(queues);
  spec.max_jobs = max_jobs;
  spec.wait = wait;
  spec.worker_id = "worker-1";
  return spec;
}

// A broker core in miniature: a real JobStore on a temp dir, a CommitPipeline
// whose completions are posted to an io_context run by the test thread, and
// an Engine driven by a FakeClock (the test calls OnTimer after Advance).
class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override { Boot(); }
  void TearDown() override { Halt(); }

  void Boot() {
    store::JobStore::Options store_options;
    store_options.path = dir_.path() + "/data";
    auto store = store::JobStore::Open(store_options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    pipeline_ = std::make_unique<commit::CommitPipeline>(
        store_.get(), commit::CommitPipeline::Options{},
        [this](std::function<void()> fn) { asio::post(io_, std::move(fn)); },
        store_->LastEventSeq().value(), store_->FirstEventSeq().value());
    pipeline_->Start();
    engine_ = std::make_unique<Engine>(io_, clock_, *store_, pipeline_.get(), options_,
                                       store_->boot_epoch());
    absl::Status s = engine_->Recover();
    ASSERT_TRUE(s.ok()) << s;
    engine_->Start();
  }

  // Stops like the broker: no new work, in-flight commits land, store closed.
  void Halt() {
    if (!engine_) return;
    engine_->Shutdown();
    pipeline_->Stop();
    io_.poll();  // completions posted by the pipeline's last groups
    engine_.reset();
    pipeline_.reset();
    EXPECT_TRUE(store_->Close().ok());
    store_.reset();
  }

  void Restart() {
    Halt();
    Boot();
  }

  // Runs the core until `pred` holds (bounded; the commit thread answers in
  // milliseconds).
  bool RunUntil(const std::function<bool()>& pred, milliseconds timeout = milliseconds(10000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!pred()) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      io_.run_one_for(milliseconds(20));
    }
    return true;
  }

  template <typename T>
  T Await(std::optional<T>& slot, const char* what) {
    EXPECT_TRUE(RunUntil([&] { return slot.has_value(); })) << what << " was never answered";
    if (!slot) return T(absl::DeadlineExceededError(std::string(what) + ": no answer"));
    return std::move(*slot);
  }

  absl::StatusOr<EnqueueOutcome> EnqueueMany(std::vector<v1::EnqueueRequest> reqs) {
    std::optional<absl::StatusOr<EnqueueOutcome>> out;
    engine_->Enqueue(std::move(reqs), v1::DURABILITY_UNSPECIFIED,
                     [&](absl::StatusOr<EnqueueOutcome> r) { out = std::move(r); });
    return Await(out, "Enqueue");
  }

  // Enqueues one job and returns its id (0 on failure).
  uint64_t Enqueue(v1::EnqueueRequest req) {
    std::vector<v1::EnqueueRequest> reqs;
    reqs.push_back(std::move(req));
    auto out = EnqueueMany(std::move(reqs));
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok() || out->job_ids.size() != 1) return 0;
    return Id(out->job_ids[0]);
  }

  absl::StatusOr<std::vector<v1::Lease>> Lease(LeaseSpec spec) {
    std::optional<absl::StatusOr<std::vector<v1::Lease>>> out;
    engine_->Lease(std::move(spec),
                   [&](absl::StatusOr<std::vector<v1::Lease>> r) { out = std::move(r); });
    return Await(out, "Lease");
  }

  // Leases exactly one job from `queue`.
  v1::Lease LeaseOne(const std::string& queue) {
    auto leases = Lease(Spec({queue}));
    EXPECT_TRUE(leases.ok()) << leases.status();
    if (!leases.ok() || leases->size() != 1) {
      ADD_FAILURE() << "expected one lease from " << queue;
      return v1::Lease();
    }
    return (*leases)[0];
  }

  absl::StatusOr<v1::Job> Complete(uint64_t id, uint64_t token, std::string result = "ok") {
    std::optional<absl::StatusOr<v1::Job>> out;
    engine_->Complete(id, token, std::move(result),
                      [&](absl::StatusOr<v1::Job> r) { out = std::move(r); });
    return Await(out, "Complete");
  }

  absl::StatusOr<v1::Job> Fail(uint64_t id, uint64_t token, FailSpec spec) {
    std::optional<absl::StatusOr<v1::Job>> out;
    engine_->Fail(id, token, std::move(spec),
                  [&](absl::StatusOr<v1::Job> r) { out = std::move(r); });
    return Await(out, "Fail");
  }

  absl::StatusOr<ExtendOutcome> Extend(uint64_t id, uint64_t token, microseconds by,
                                       std::optional<v1::Progress> progress = std::nullopt) {
    std::optional<absl::StatusOr<ExtendOutcome>> out;
    engine_->Extend(id, token, by, std::move(progress),
                    [&](absl::StatusOr<ExtendOutcome> r) { out = std::move(r); });
    return Await(out, "Extend");
  }

  v1::Job Job(uint64_t id) {
    auto job = engine_->GetJob(id);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : v1::Job();
  }

  v1::JobState State(uint64_t id) { return Job(id).state(); }

  // The job as committed to RocksDB.
  store::JobRecord Stored(uint64_t id) {
    auto rec = store_->GetJob(id);
    EXPECT_TRUE(rec.ok()) << rec.status();
    EXPECT_TRUE(rec.ok() && rec->has_value()) << "job " << id << " is not stored";
    return rec.ok() && rec->has_value() ? **rec : store::JobRecord();
  }

  // Advances the fake clock and runs the timer work it makes due.
  void AdvanceAndTick(microseconds d) {
    clock_.Advance(d);
    engine_->OnTimer();
  }

  testing::TempDir dir_;
  util::FakeClock clock_;
  EngineOptions options_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_{io_.get_executor()};
  std::unique_ptr<store::JobStore> store_;
  std::unique_ptr<commit::CommitPipeline> pipeline_;
  std::unique_ptr<Engine> engine_;
};

TEST_F(EngineTest, EnqueueThenLeaseReturnsTheJobOnItsFirstAttempt) {
  const TimePoint t0 = clock_.Now();
  const uint64_t id = Enqueue(Req("q", 0, "hello"));
  ASSERT_NE(id, 0u);
  EXPECT_EQ(State(id), v1::JOB_STATE_READY);
  EXPECT_EQ(Stored(id).job().state(), v1::JOB_STATE_READY);

  v1::Lease lease = LeaseOne("q");
  EXPECT_EQ(lease.job().id(), store::FormatJobId(id));
  EXPECT_EQ(lease.job().payload(), "hello");
  EXPECT_EQ(lease.job().state(), v1::JOB_STATE_LEASED);
  EXPECT_EQ(lease.job().attempts(), 1u);
  EXPECT_NE(lease.lease_token(), 0u);
  EXPECT_EQ(lease.lease_token() >> 32, store_->boot_epoch());
  EXPECT_EQ(FromProto(lease.deadline()), t0 + options_.default_lease);
  ASSERT_EQ(lease.job().history_size(), 1);
  EXPECT_EQ(lease.job().history(0).number(), 1u);
  EXPECT_EQ(lease.job().history(0).worker_id(), "worker-1");
  EXPECT_EQ(lease.job().history(0).outcome(), v1::ATTEMPT_OUTCOME_RUNNING);

  EXPECT_EQ(State(id), v1::JOB_STATE_LEASED);
  EXPECT_EQ(Stored(id).lease_token(), lease.lease_token());
  // Nothing else to lease.
  auto again = Lease(Spec({"q"}));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->empty());
}

// Memory keeps a job's hot fields only; the whole record of a job nobody
// works on comes from the store. These tests change the store behind the
// engine's back to see where a read came from.
class EngineStoreReadTest : public EngineTest {
 protected:
  // Replaces (or with nullopt, deletes) job `id`'s record, as no broker
  // would: only to observe the engine.
  void Overwrite(uint64_t id, const std::optional<store::JobRecord>& rec) {
    rocksdb::WriteBatch batch;
    if (rec) {
      ASSERT_TRUE(batch.Put(store_->jobs_cf(), store::EncodeBE64(id), rec->SerializeAsString())
                      .ok());
    } else {
      ASSERT_TRUE(batch.Delete(store_->jobs_cf(), store::EncodeBE64(id)).ok());
    }
    ASSERT_TRUE(store_->Write(&batch, /*sync=*/false).ok());
  }

  absl::StatusOr<v1::Job> Cancel(uint64_t id) {
    std::optional<absl::StatusOr<v1::Job>> out;
    engine_->Cancel(id, "stop", [&](absl::StatusOr<v1::Job> r) { out = std::move(r); });
    return Await(out, "Cancel");
  }
};

TEST_F(EngineStoreReadTest, AReadyJobIsReadFromTheStoreAndALeasedOneFromMemory) {
  const uint64_t id = Enqueue(Req("q", 0, "as enqueued"));
  ASSERT_NE(id, 0u);
  store::JobRecord rec = Stored(id);
  rec.mutable_job()->set_payload("from the store");
  Overwrite(id, rec);
  EXPECT_EQ(Job(id).payload(), "from the store");

  v1::Lease lease = LeaseOne("q");
  EXPECT_EQ(lease.job().payload(), "from the store");
  // Leased: the engine holds the job it wrote; the store is not read.
  rec = Stored(id);
  rec.mutable_job()->set_payload("changed behind a lease");
  Overwrite(id, rec);
  EXPECT_EQ(Job(id).payload(), "from the store");
  EXPECT_EQ(Job(id).state(), v1::JOB_STATE_LEASED);
  EXPECT_EQ(FromProto(Job(id).lease_deadline()), FromProto(lease.deadline()));

  // Finished: memory lets the record go again.
  ASSERT_TRUE(Complete(id, lease.lease_token(), "done").ok());
  EXPECT_EQ(Job(id).payload(), "from the store");
  EXPECT_EQ(Job(id).result(), "done");
  rec = Stored(id);
  rec.mutable_job()->set_result("read from the store");
  Overwrite(id, rec);
  EXPECT_EQ(Job(id).result(), "read from the store");
  EXPECT_EQ(Job(id).state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(EngineStoreReadTest, APromotedScheduledJobShowsItsStateInMemory) {
  v1::EnqueueRequest req = Req("q", 0, "later");
  *req.mutable_delay() = util::DurationToProto(std::chrono::seconds(5));
  const uint64_t id = Enqueue(req);
  ASSERT_NE(id, 0u);
  EXPECT_EQ(State(id), v1::JOB_STATE_SCHEDULED);
  AdvanceAndTick(std::chrono::seconds(6));
  // Promoted without a write: the record still says SCHEDULED.
  EXPECT_EQ(Stored(id).job().state(), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(State(id), v1::JOB_STATE_READY);
  EXPECT_EQ(Job(id).payload(), "later");
}

TEST_F(EngineStoreReadTest, AJobWhoseRecordCannotBeReadFailsWithDataLossAndIsKept) {
  const uint64_t id = Enqueue(Req("q", 0, "precious"));
  ASSERT_NE(id, 0u);
  const store::JobRecord rec = Stored(id);
  Overwrite(id, std::nullopt);

  auto got = engine_->GetJob(id);
  ASSERT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(got.status().message().find(store::FormatJobId(id)), std::string::npos)
      << got.status();
  EXPECT_NE(got.status().message().find("no record"), std::string::npos) << got.status();
  auto leases = Lease(Spec({"q"}));
  EXPECT_EQ(leases.status().code(), absl::StatusCode::kDataLoss) << leases.status();
  EXPECT_EQ(Cancel(id).status().code(), absl::StatusCode::kDataLoss);

  // A corrupt record is told apart from a missing one.
  {
    rocksdb::WriteBatch batch;
    ASSERT_TRUE(batch.Put(store_->jobs_cf(), store::EncodeBE64(id), "\xff\xff\xff").ok());
    ASSERT_TRUE(store_->Write(&batch, false).ok());
  }
  got = engine_->GetJob(id);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(got.status().message().find("corrupt"), std::string::npos) << got.status();

  // Nothing changed meanwhile: with its record back the job is READY, in
  // its place, and leases as before.
  Overwrite(id, rec);
  EXPECT_EQ(engine_->QueueStats("q").ready(), 1u);
  v1::Lease lease = LeaseOne("q");
  EXPECT_EQ(lease.job().id(), store::FormatJobId(id));
  EXPECT_EQ(lease.job().payload(), "precious");
  EXPECT_EQ(lease.job().attempts(), 1u);
}

TEST_F(EngineStoreReadTest, RestartLoadsNoRecordsYetServesWholeJobs) {
  const uint64_t a = Enqueue(Req("q", 0, "first"));
  const uint64_t b = Enqueue(Req("q", 0, "second"));
  ASSERT_NE(b, 0u);
  Restart();
  // Recovery kept only hot fields: a change to the store shows at once.
  store::JobRecord rec = Stored(b);
  rec.mutable_job()->set_payload("second, rewritten");
  Overwrite(b, rec);
  EXPECT_EQ(LeaseOne("q").job().payload(), "first");
  EXPECT_EQ(LeaseOne("q").job().payload(), "second, rewritten");
  EXPECT_EQ(Job(a).state(), v1::JOB_STATE_LEASED);
}

TEST_F(EngineTest, OldestReadyAgeIgnoresPriorityAndConcurrencyKeys) {
  v1::EnqueueRequest low = Req("q", -5, "low");
  low.set_concurrency_key("tenant-1");
  const uint64_t first = Enqueue(low);
  clock_.Advance(seconds(5));
  Enqueue(Req("q", 9, "urgent"));
  clock_.Advance(seconds(2));
  v1::EnqueueRequest keyed = Req("q", 9, "keyed");
  keyed.set_concurrency_key("tenant-2");
  Enqueue(keyed);
  auto age = [&] {
    return util::DurationFromProto(engine_->QueueStats("q").oldest_ready_age());
  };
  EXPECT_EQ(age(), seconds(7));  // the low-priority job came first

  // Delivered first, by priority (the two keys take turns), the newer jobs
  // leave the oldest in place.
  std::set<std::string> high = {LeaseOne("q").job().payload()};
  EXPECT_EQ(age(), seconds(7));
  high.insert(LeaseOne("q").job().payload());
  EXPECT_EQ(high, (std::set<std::string>{"urgent", "keyed"}));
  EXPECT_EQ(age(), seconds(7));
  EXPECT_EQ(Id(LeaseOne("q").job().id()), first);
  EXPECT_FALSE(engine_->QueueStats("q").has_oldest_ready_age());
  EXPECT_EQ(engine_->QueueStats("q").ready(), 0u);
}

TEST_F(EngineTest, LeaseTakesHigherPriorityFirstAcrossQueues) {
  const uint64_t a = Enqueue(Req("q1", 1));
  const uint64_t b = Enqueue(Req("q2", 5));
  const uint64_t c = Enqueue(Req("q1", 5));
  const uint64_t d = Enqueue(Req("q2", 1));
  const uint64_t other = Enqueue(Req("q3", 100));  // not asked for

  auto leases = Lease(Spec({"q1", "q2"}, /*max_jobs=*/3));
  ASSERT_TRUE(leases.ok()) << leases.status();
  ASSERT_EQ(leases->size(), 3u);
  // Priority 5 first (b became ready before c), then the older priority 1.
  EXPECT_EQ((*leases)[0].job().id(), store::FormatJobId(b));
  EXPECT_EQ((*leases)[1].job().id(), store::FormatJobId(c));
  EXPECT_EQ((*leases)[2].job().id(), store::FormatJobId(a));
  // Each lease has its own token.
  EXPECT_NE((*leases)[0].lease_token(), (*leases)[1].lease_token());
  EXPECT_NE((*leases)[1].lease_token(), (*leases)[2].lease_token());

  EXPECT_EQ(LeaseOne("q2").job().id(), store::FormatJobId(d));
  EXPECT_EQ(State(other), v1::JOB_STATE_READY);
}

TEST_F(EngineTest, DelayedJobIsLeasableOnlyOnceItsRunAtPassed) {
  const TimePoint t0 = clock_.Now();
  v1::EnqueueRequest req = Req("q");
  *req.mutable_delay() = DurationToProto(seconds(10));
  const uint64_t id = Enqueue(req);
  EXPECT_EQ(State(id), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(FromProto(Job(id).run_at()), t0 + seconds(10));
  EXPECT_EQ(engine_->QueueStats("q").scheduled(), 1u);

  auto none = Lease(Spec({"q"}));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());

  AdvanceAndTick(seconds(9));
  EXPECT_EQ(State(id), v1::JOB_STATE_SCHEDULED);
  none = Lease(Spec({"q"}));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());

  AdvanceAndTick(seconds(1));
  EXPECT_EQ(State(id), v1::JOB_STATE_READY);
  EXPECT_EQ(engine_->QueueStats("q").ready(), 1u);
  EXPECT_EQ(LeaseOne("q").job().id(), store::FormatJobId(id));
}

TEST_F(EngineTest, RunAtInThePastIsReadyAtOnce) {
  v1::EnqueueRequest req = Req("q");
  *req.mutable_run_at() = util::ToProto(clock_.Now() - seconds(5));
  const uint64_t id = Enqueue(req);
  EXPECT_EQ(State(id), v1::JOB_STATE_READY);
}

TEST_F(EngineTest, ExpiredLeaseMakesTheJobReadyAgainAndFencesTheOldToken) {
  v1::EnqueueRequest req = Req("q");
  *req.mutable_lease_duration() = DurationToProto(seconds(5));
  const uint64_t id = Enqueue(req);
  v1::Lease first = LeaseOne("q");
  ASSERT_EQ(first.job().attempts(), 1u);

  // Not yet due.
  AdvanceAndTick(seconds(4));
  io_.poll();
  EXPECT_EQ(State(id), v1::JOB_STATE_LEASED);

  AdvanceAndTick(seconds(2));
  ASSERT_TRUE(RunUntil([&] { return State(id) == v1::JOB_STATE_READY; }));
  v1::Job job = Job(id);
  EXPECT_EQ(job.attempts(), 1u);  // the attempt counts; it is not undone
  ASSERT_EQ(job.history_size(), 1);
  EXPECT_EQ(job.history(0).outcome(), v1::ATTEMPT_OUTCOME_LEASE_EXPIRED);
  EXPECT_TRUE(job.history(0).has_ended_at());
  EXPECT_FALSE(job.has_lease_deadline());
  EXPECT_EQ(Stored(id).job().state(), v1::JOB_STATE_READY);
  EXPECT_EQ(Stored(id).lease_token(), 0u);

  // The expired worker is fenced off: not leased now...
  auto stale = Complete(id, first.lease_token());
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition) << stale.status();
  auto stale_extend = Extend(id, first.lease_token(), seconds(10));
  EXPECT_EQ(stale_extend.status().code(), absl::StatusCode::kFailedPrecondition);

  // ...nor once another worker holds it.
  v1::Lease second = LeaseOne("q");
  EXPECT_EQ(second.job().attempts(), 2u);
  EXPECT_GT(second.lease_token(), first.lease_token());
  stale = Complete(id, first.lease_token());
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition) << stale.status();
  auto stale_fail = Fail(id, first.lease_token(), FailSpec{"late", microseconds(0), false});
  EXPECT_EQ(stale_fail.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(State(id), v1::JOB_STATE_LEASED);

  auto done = Complete(id, second.lease_token(), "fine");
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(EngineTest, ExpiryOfTheLastAttemptMakesTheJobDead) {
  v1::EnqueueRequest req = Req("q");
  req.set_max_attempts(1);
  *req.mutable_lease_duration() = DurationToProto(seconds(5));
  const uint64_t id = Enqueue(req);
  LeaseOne("q");
  AdvanceAndTick(seconds(6));
  ASSERT_TRUE(RunUntil([&] { return State(id) == v1::JOB_STATE_DEAD; }));
  EXPECT_EQ(Job(id).history(0).outcome(), v1::ATTEMPT_OUTCOME_LEASE_EXPIRED);
  EXPECT_TRUE(Job(id).has_finished_at());
}

v1::EnqueueRequest RetryingReq(uint32_t max_attempts) {
  v1::EnqueueRequest req = Req("q");
  req.set_max_attempts(max_attempts);
  v1::RetryPolicy* r = req.mutable_retry();
  *r->mutable_initial_backoff() = DurationToProto(seconds(10));
  *r->mutable_max_backoff() = DurationToProto(hours(1));
  r->set_multiplier(2.0);
  r->set_jitter(1e-9);  // effectively none: waits are exact to a microsecond
  return req;
}

// `actual - expected` is within the jitter of 1e-9 of `wait`.
void ExpectRunAt(const v1::Job& job, TimePoint now, microseconds wait) {
  const microseconds delta =
      std::chrono::duration_cast<microseconds>(FromProto(job.run_at()) - now);
  EXPECT_LE(delta, wait);
  EXPECT_GE(delta, wait - microseconds(2));
}

TEST_F(EngineTest, FailWithAttemptsLeftSchedulesARetryAfterBackoff) {
  const uint64_t id = Enqueue(RetryingReq(3));

  v1::Lease l1 = LeaseOne("q");
  AdvanceAndTick(seconds(1));
  auto failed = Fail(id, l1.lease_token(), FailSpec{"boom", microseconds(0), false});
  ASSERT_TRUE(failed.ok()) << failed.status();
  EXPECT_EQ(failed->state(), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(failed->attempts(), 1u);
  EXPECT_EQ(failed->error(), "boom");
  ASSERT_EQ(failed->history_size(), 1);
  EXPECT_EQ(failed->history(0).outcome(), v1::ATTEMPT_OUTCOME_FAILED);
  EXPECT_EQ(failed->history(0).error(), "boom");
  ExpectRunAt(*failed, clock_.Now(), seconds(10));
  EXPECT_EQ(Stored(id).job().state(), v1::JOB_STATE_SCHEDULED);

  // Not leasable during the backoff.
  AdvanceAndTick(seconds(9));
  auto none = Lease(Spec({"q"}));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  AdvanceAndTick(seconds(1));
  EXPECT_EQ(State(id), v1::JOB_STATE_READY);

  // The second failure waits twice as long.
  v1::Lease l2 = LeaseOne("q");
  EXPECT_EQ(l2.job().attempts(), 2u);
  failed = Fail(id, l2.lease_token(), FailSpec{"boom again", microseconds(0), false});
  ASSERT_TRUE(failed.ok()) << failed.status();
  EXPECT_EQ(failed->state(), v1::JOB_STATE_SCHEDULED);
  ExpectRunAt(*failed, clock_.Now(), seconds(20));
}

TEST_F(EngineTest, FailWithRetryAfterWaitsThatLong) {
  const uint64_t id = Enqueue(RetryingReq(3));
  v1::Lease l1 = LeaseOne("q");
  auto failed = Fail(id, l1.lease_token(), FailSpec{"busy", seconds(3), false});
  ASSERT_TRUE(failed.ok()) << failed.status();
  EXPECT_EQ(failed->state(), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(FromProto(failed->run_at()), clock_.Now() + seconds(3));
}

TEST_F(EngineTest, FailAtMaxAttemptsMakesTheJobDead) {
  const uint64_t id = Enqueue(RetryingReq(2));
  v1::Lease l1 = LeaseOne("q");
  ASSERT_TRUE(Fail(id, l1.lease_token(), FailSpec{"e1", microseconds(0), false}).ok());
  AdvanceAndTick(seconds(10));
  v1::Lease l2 = LeaseOne("q");
  ASSERT_EQ(l2.job().attempts(), 2u);
  auto dead = Fail(id, l2.lease_token(), FailSpec{"e2", microseconds(0), false});
  ASSERT_TRUE(dead.ok()) << dead.status();
  EXPECT_EQ(dead->state(), v1::JOB_STATE_DEAD);
  EXPECT_EQ(dead->attempts(), 2u);
  EXPECT_EQ(dead->error(), "e2");
  EXPECT_TRUE(dead->has_finished_at());
  ASSERT_EQ(dead->history_size(), 2);
  EXPECT_EQ(dead->history(0).error(), "e1");
  EXPECT_EQ(dead->history(1).error(), "e2");
  EXPECT_EQ(Stored(id).job().state(), v1::JOB_STATE_DEAD);
  // A dead job is never delivered again.
  AdvanceAndTick(hours(1));
  auto none = Lease(Spec({"q"}));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST_F(EngineTest, NonRetryableFailureMakesTheJobDeadAtOnce) {
  const uint64_t id = Enqueue(RetryingReq(5));
  v1::Lease l1 = LeaseOne("q");
  auto dead = Fail(id, l1.lease_token(), FailSpec{"bad input", microseconds(0), true});
  ASSERT_TRUE(dead.ok()) << dead.status();
  EXPECT_EQ(dead->state(), v1::JOB_STATE_DEAD);
  EXPECT_EQ(dead->attempts(), 1u);
  EXPECT_EQ(engine_->QueueStats("q").dead(), 1u);
}

TEST_F(EngineTest, LongErrorsAreTruncated) {
  options_.max_error_bytes = 8;
  Restart();
  const uint64_t id = Enqueue(RetryingReq(5));
  v1::Lease l1 = LeaseOne("q");
  auto failed = Fail(id, l1.lease_token(), FailSpec{"0123456789abcdef", microseconds(0), true});
  ASSERT_TRUE(failed.ok()) << failed.status();
  EXPECT_EQ(failed->error(), "01234567");
}

TEST_F(EngineTest, CompleteStoresTheResult) {
  const uint64_t id = Enqueue(Req("q"));
  v1::Lease lease = LeaseOne("q");
  AdvanceAndTick(seconds(2));
  auto done = Complete(id, lease.lease_token(), "the answer");
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done->result(), "the answer");
  EXPECT_EQ(FromProto(done->finished_at()), clock_.Now());
  ASSERT_EQ(done->history_size(), 1);
  EXPECT_EQ(done->history(0).outcome(), v1::ATTEMPT_OUTCOME_SUCCEEDED);
  EXPECT_FALSE(done->has_lease_deadline());

  EXPECT_EQ(Job(id).result(), "the answer");
  store::JobRecord rec = Stored(id);
  EXPECT_EQ(rec.job().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(rec.job().result(), "the answer");
  EXPECT_EQ(rec.lease_token(), 0u);

  // Completing twice is refused.
  auto twice = Complete(id, lease.lease_token(), "again");
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Job(id).result(), "the answer");
}

TEST_F(EngineTest, OperationsOnUnknownJobsAreNotFound) {
  const uint64_t unknown = 0x1234;
  EXPECT_EQ(engine_->GetJob(unknown).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Complete(unknown, 1).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Fail(unknown, 1, FailSpec{}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Extend(unknown, 1, seconds(1)).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(EngineTest, ExtendMovesTheDeadline) {
  const TimePoint t0 = clock_.Now();
  v1::EnqueueRequest req = Req("q");
  *req.mutable_lease_duration() = DurationToProto(seconds(10));
  const uint64_t id = Enqueue(req);
  v1::Lease lease = LeaseOne("q");
  EXPECT_EQ(FromProto(lease.deadline()), t0 + seconds(10));

  AdvanceAndTick(seconds(8));
  auto ext = Extend(id, lease.lease_token(), seconds(10));
  ASSERT_TRUE(ext.ok()) << ext.status();
  EXPECT_EQ(ext->deadline, t0 + seconds(18));
  EXPECT_FALSE(ext->cancel_requested);
  EXPECT_EQ(FromProto(Job(id).lease_deadline()), t0 + seconds(18));

  // Past the old deadline: still leased.
  AdvanceAndTick(seconds(4));  // t0 + 12
  io_.poll();
  EXPECT_EQ(State(id), v1::JOB_STATE_LEASED);

  // Past the new one: expired.
  AdvanceAndTick(seconds(7));  // t0 + 19
  ASSERT_TRUE(RunUntil([&] { return State(id) == v1::JOB_STATE_READY; }));
  EXPECT_EQ(Job(id).history(0).outcome(), v1::ATTEMPT_OUTCOME_LEASE_EXPIRED);
}

TEST_F(EngineTest, ExtendWithoutDurationUsesTheJobsLeaseDuration) {
  v1::EnqueueRequest req = Req("q");
  *req.mutable_lease_duration() = DurationToProto(seconds(7));
  const uint64_t id = Enqueue(req);
  v1::Lease lease = LeaseOne("q");
  AdvanceAndTick(seconds(3));
  auto ext = Extend(id, lease.lease_token(), microseconds(0));
  ASSERT_TRUE(ext.ok()) << ext.status();
  EXPECT_EQ(ext->deadline, clock_.Now() + seconds(7));
}

TEST_F(EngineTest, ExtendWithProgressCommitsTheProgress) {
  const uint64_t id = Enqueue(Req("q"));
  v1::Lease lease = LeaseOne("q");
  v1::Progress progress;
  progress.set_fraction(0.25);
  progress.set_message("a quarter");
  auto ext = Extend(id, lease.lease_token(), seconds(60), progress);
  ASSERT_TRUE(ext.ok()) << ext.status();
  EXPECT_EQ(ext->deadline, clock_.Now() + seconds(60));
  EXPECT_DOUBLE_EQ(Job(id).progress().fraction(), 0.25);
  EXPECT_EQ(Job(id).progress().message(), "a quarter");
  EXPECT_EQ(Stored(id).job().progress().message(), "a quarter");
  // Still the same lease.
  EXPECT_EQ(State(id), v1::JOB_STATE_LEASED);
  EXPECT_TRUE(Complete(id, lease.lease_token()).ok());
}

// The engine keeps each job packed (its wire bytes and a few hot fields):
// every field must come back whole in every answer, through transitions and
// a restart.
TEST_F(EngineTest, WholeJobComesBackThroughTransitionsAndRestart) {
  v1::EnqueueRequest req = Req("q", 3, std::string(300, 'x'));
  (*req.mutable_headers())["trace"] = "t-1";
  req.set_idempotency_key("order-9");
  req.set_concurrency_key("tenant-2");
  req.set_max_attempts(4);
  const uint64_t id = Enqueue(req);
  ASSERT_NE(id, 0u);
  v1::Job job = Job(id);
  EXPECT_EQ(job.payload(), std::string(300, 'x'));
  EXPECT_EQ(job.headers().at("trace"), "t-1");
  EXPECT_EQ(job.priority(), 3);
  EXPECT_EQ(job.idempotency_key(), "order-9");
  EXPECT_EQ(job.concurrency_key(), "tenant-2");

  v1::Lease lease = LeaseOne("q");
  EXPECT_EQ(lease.job().payload(), std::string(300, 'x'));
  EXPECT_EQ(lease.job().headers().at("trace"), "t-1");
  FailSpec fail;
  fail.error = "boom";
  auto failed = Fail(id, lease.lease_token(), fail);
  ASSERT_TRUE(failed.ok()) << failed.status();
  EXPECT_EQ(failed->payload(), std::string(300, 'x'));
  EXPECT_EQ(failed->attempts(), 1u);
  ASSERT_EQ(failed->history_size(), 1);
  EXPECT_EQ(failed->history(0).error(), "boom");

  Restart();
  job = Job(id);
  EXPECT_EQ(job.SerializeAsString(), Stored(id).job().SerializeAsString());
  EXPECT_EQ(job.payload(), std::string(300, 'x'));
  EXPECT_EQ(job.headers().at("trace"), "t-1");
  EXPECT_EQ(job.attempts(), 1u);
  EXPECT_EQ(job.history(0).error(), "boom");
  // The recovered key still deduplicates.
  auto dup = EnqueueMany({req});
  ASSERT_TRUE(dup.ok()) << dup.status();
  EXPECT_TRUE(dup->duplicate[0]);
  EXPECT_EQ(Id(dup->job_ids[0]), id);
}

// A SCHEDULED job made READY by its time is not rewritten: answers show the
// in-memory state over the packed bytes, and the next write carries it.
TEST_F(EngineTest, DueScheduledJobShowsReadyBeforeAnyWrite) {
  v1::EnqueueRequest req = Req("q", 0, "later");
  *req.mutable_delay() = DurationToProto(seconds(5));
  const uint64_t id = Enqueue(req);
  EXPECT_EQ(State(id), v1::JOB_STATE_SCHEDULED);
  AdvanceAndTick(seconds(6));
  EXPECT_EQ(State(id), v1::JOB_STATE_READY);
  EXPECT_EQ(Job(id).payload(), "later");
  EXPECT_EQ(Stored(id).job().state(), v1::JOB_STATE_SCHEDULED);  // not rewritten
  v1::Lease lease = LeaseOne("q");
  EXPECT_EQ(lease.job().payload(), "later");
  EXPECT_EQ(Stored(id).job().state(), v1::JOB_STATE_LEASED);
}

// An Extend without progress moves the deadline in memory only; the next
// write of the job (here a cancel request) stores the deadline in force.
TEST_F(EngineTest, WriteAfterAnExtendStoresTheExtendedDeadline) {
  const uint64_t id = Enqueue(Req("q"));
  v1::Lease lease = LeaseOne("q");
  auto ext = Extend(id, lease.lease_token(), seconds(600));
  ASSERT_TRUE(ext.ok()) << ext.status();
  EXPECT_EQ(FromProto(Job(id).lease_deadline()), ext->deadline);
  EXPECT_NE(FromProto(Stored(id).job().lease_deadline()), ext->deadline);
  std::optional<absl::StatusOr<v1::Job>> out;
  engine_->Cancel(id, "stop", [&](absl::StatusOr<v1::Job> r) { out = std::move(r); });
  auto cancelled = Await(out, "Cancel");
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_TRUE(cancelled->cancel_requested());
  EXPECT_EQ(FromProto(cancelled->lease_deadline()), ext->deadline);
  EXPECT_EQ(FromProto(Stored(id).job().lease_deadline()), ext->deadline);
}

// Deleting a job frees its idempotency key.
TEST_F(EngineTest, PurgedJobFreesItsIdempotencyKey) {
  v1::EnqueueRequest req = Req("q");
  req.set_idempotency_key("k-1");
  const uint64_t first = Enqueue(req);
  std::optional<absl::StatusOr<uint64_t>> purged;
  engine_->Purge("q", [&](absl::StatusOr<uint64_t> r) { purged = std::move(r); });
  auto n = Await(purged, "Purge");
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 1u);
  auto again = EnqueueMany({req});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->duplicate[0]);
  EXPECT_NE(Id(again->job_ids[0]), first);
}

TEST_F(EngineTest, WaitingLeaseIsAnsweredWhenAJobIsEnqueued) {
  std::optional<absl::StatusOr<std::vector<v1::Lease>>> answer;
  const uint64_t wid = engine_->Lease(
      Spec({"a", "b"}, 1, seconds(30)),
      [&](absl::StatusOr<std::vector<v1::Lease>> r) { answer = std::move(r); });
  EXPECT_NE(wid, 0u);
  EXPECT_EQ(engine_->waiting_leases(), 1u);
  io_.poll();
  EXPECT_FALSE(answer.has_value());

  const uint64_t id = Enqueue(Req("b"));
  ASSERT_TRUE(RunUntil([&] { return answer.has_value(); }));
  ASSERT_TRUE(answer->ok()) << answer->status();
  ASSERT_EQ((*answer)->size(), 1u);
  EXPECT_EQ((**answer)[0].job().id(), store::FormatJobId(id));
  EXPECT_EQ((**answer)[0].job().attempts(), 1u);
  EXPECT_EQ(engine_->waiting_leases(), 0u);
  EXPECT_EQ(State(id), v1::JOB_STATE_LEASED);
  EXPECT_FALSE(engine_->CancelLeaseWait(wid));
}

TEST_F(EngineTest, WaitingLeasesAreAnsweredOldestFirst) {
  std::vector<int> order;
  engine_->Lease(Spec({"q"}, 1, seconds(30)),
                 [&](absl::StatusOr<std::vector<v1::Lease>> r) {
                   if (r.ok() && r->size() == 1) order.push_back(1);
                 });
  engine_->Lease(Spec({"q"}, 1, seconds(30)),
                 [&](absl::StatusOr<std::vector<v1::Lease>> r) {
                   if (r.ok() && r->size() == 1) order.push_back(2);
                 });
  EXPECT_EQ(engine_->waiting_leases(), 2u);
  Enqueue(Req("q"));
  ASSERT_TRUE(RunUntil([&] { return order.size() == 1; }));
  EXPECT_EQ(order, (std::vector<int>{1}));
  EXPECT_EQ(engine_->waiting_leases(), 1u);
  Enqueue(Req("q"));
  ASSERT_TRUE(RunUntil([&] { return order.size() == 2; }));
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
}

TEST_F(EngineTest, WaitingLeaseEndsEmptyWhenItsWaitPasses) {
  // The wait runs on a real steady_timer; keep it short.
  std::optional<absl::StatusOr<std::vector<v1::Lease>>> answer;
  engine_->Lease(Spec({"q"}, 1, milliseconds(10)),
                 [&](absl::StatusOr<std::vector<v1::Lease>> r) { answer = std::move(r); });
  ASSERT_TRUE(RunUntil([&] { return answer.has_value(); }));
  ASSERT_TRUE(answer->ok()) << answer->status();
  EXPECT_TRUE((*answer)->empty());
  EXPECT_EQ(engine_->waiting_leases(), 0u);
}

TEST_F(EngineTest, TimerExpiriesEnterCoreThroughOnCore) {
  // The broker's core runs closures on whichever thread hands them in; a
  // timer fires on the io_context's thread and must hand its work to core.
  std::vector<std::function<void()>> handed;
  options_.on_core = [&](std::function<void()> fn) { handed.push_back(std::move(fn)); };
  Restart();
  std::optional<absl::StatusOr<std::vector<v1::Lease>>> lease;
  engine_->Lease(Spec({"q"}, 1, milliseconds(10)),
                 [&](absl::StatusOr<std::vector<v1::Lease>> r) { lease = std::move(r); });
  const uint64_t id = Enqueue(Req("other"));
  std::optional<bool> waited_terminal;
  engine_->WaitJob(id, milliseconds(10), [&](absl::StatusOr<v1::Job>, bool terminal) {
    waited_terminal = terminal;
  });
  // Both timers expire on the io_context; neither waiter is answered until
  // the handed-over closures run.
  ASSERT_TRUE(RunUntil([&] { return handed.size() >= 2; }));
  EXPECT_FALSE(lease.has_value());
  EXPECT_FALSE(waited_terminal.has_value());
  for (auto& fn : handed) fn();
  ASSERT_TRUE(lease.has_value());
  ASSERT_TRUE(lease->ok()) << lease->status();
  EXPECT_TRUE((*lease)->empty());
  ASSERT_TRUE(waited_terminal.has_value());
  EXPECT_FALSE(*waited_terminal);
  options_.on_core = nullptr;
}

TEST_F(EngineTest, AnsweredWaitersHandNothingToCoreFromTheirTimers) {
  // A waiter answered before its wait runs out (a worker waiting on an empty
  // queue gets the next job) must not leave a timer handler behind: with a
  // timer per waiter, each cancelled one still ran on the io_context's
  // thread and entered core, a wake-up of the core thread per job.
  std::vector<std::function<void()>> handed;
  options_.on_core = [&](std::function<void()> fn) { handed.push_back(std::move(fn)); };
  Restart();
  int leased = 0;
  for (int i = 0; i < 3; ++i) {
    engine_->Lease(Spec({"q"}, 1, seconds(30)),
                   [&](absl::StatusOr<std::vector<v1::Lease>> r) {
                     if (r.ok() && r->size() == 1) ++leased;
                   });
    const uint64_t id = Enqueue(Req("q"));
    ASSERT_TRUE(RunUntil([&] { return leased == i + 1; }));
    // A WaitJob call that goes away (its client cancelled) is the same.
    const uint64_t wid =
        engine_->WaitJob(id, seconds(30), [](absl::StatusOr<v1::Job>, bool) {});
    ASSERT_NE(wid, 0u);
    EXPECT_TRUE(engine_->CancelWaitJob(wid));
  }
  // Whatever the commit pipeline still posts, run it; no timer fires here
  // (every wait and lease is 30 s away).
  for (int i = 0; i < 10; ++i) io_.run_for(milliseconds(5));
  EXPECT_TRUE(handed.empty()) << handed.size() << " timer closures entered core";
  EXPECT_EQ(engine_->waiting_leases(), 0u);
  // Stop the engine while `handed` lives: stopping cancels the engine's own
  // timer, whose handler hands a closure in too.
  options_.on_core = nullptr;
  Restart();
}

TEST_F(EngineTest, CancelLeaseWaitRemovesTheWaiter) {
  bool answered = false;
  const uint64_t wid =
      engine_->Lease(Spec({"q"}, 1, seconds(30)),
                     [&](absl::StatusOr<std::vector<v1::Lease>>) { answered = true; });
  ASSERT_NE(wid, 0u);
  EXPECT_TRUE(engine_->CancelLeaseWait(wid));
  EXPECT_EQ(engine_->waiting_leases(), 0u);
  EXPECT_FALSE(engine_->CancelLeaseWait(wid));

  const uint64_t id = Enqueue(Req("q"));
  io_.poll();
  EXPECT_FALSE(answered);
  EXPECT_EQ(State(id), v1::JOB_STATE_READY);
  EXPECT_EQ(engine_->QueueStats("q").ready(), 1u);
}

TEST_F(EngineTest, LeaseWithoutWaitOnAnEmptyQueueAnswersEmptyAtOnce) {
  bool answered = false;
  const uint64_t wid = engine_->Lease(Spec({"q"}), [&](absl::StatusOr<std::vector<v1::Lease>> r) {
    EXPECT_TRUE(r.ok());
    EXPECT_TRUE(r->empty());
    answered = true;
  });
  EXPECT_EQ(wid, 0u);
  EXPECT_TRUE(answered);
  EXPECT_EQ(engine_->waiting_leases(), 0u);
}

TEST_F(EngineTest, ShutdownAnswersWaitersWithUnavailableAndRefusesNewWork) {
  std::vector<absl::StatusCode> codes;
  auto record = [&](absl::StatusOr<std::vector<v1::Lease>> r) { codes.push_back(r.status().code()); };
  engine_->Lease(Spec({"a"}, 1, seconds(30)), record);
  engine_->Lease(Spec({"b"}, 1, seconds(30)), record);
  ASSERT_EQ(engine_->waiting_leases(), 2u);

  engine_->Shutdown();
  EXPECT_EQ(codes, (std::vector<absl::StatusCode>{absl::StatusCode::kUnavailable,
                                                  absl::StatusCode::kUnavailable}));
  EXPECT_EQ(engine_->waiting_leases(), 0u);

  auto enq = EnqueueMany({Req("a")});
  EXPECT_EQ(enq.status().code(), absl::StatusCode::kUnavailable);
  auto lease = Lease(Spec({"a"}));
  EXPECT_EQ(lease.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(EngineTest, QueueStatsCountsAreExactThroughTransitions) {
  auto expect_counts = [&](uint64_t scheduled, uint64_t ready, uint64_t leased, uint64_t succeeded,
                           uint64_t dead) {
    v1::QueueStats st = engine_->QueueStats("q");
    EXPECT_EQ(st.scheduled(), scheduled);
    EXPECT_EQ(st.ready(), ready);
    EXPECT_EQ(st.leased(), leased);
    EXPECT_EQ(st.succeeded(), succeeded);
    EXPECT_EQ(st.dead(), dead);
    EXPECT_EQ(st.cancelled(), 0u);
  };
  expect_counts(0, 0, 0, 0, 0);
  EXPECT_EQ(engine_->QueueStats("nope").ready(), 0u);

  v1::EnqueueRequest delayed = RetryingReq(2);
  *delayed.mutable_delay() = DurationToProto(seconds(60));
  auto out = EnqueueMany({RetryingReq(2), RetryingReq(2), RetryingReq(2), delayed});
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->job_ids.size(), 4u);
  expect_counts(1, 3, 0, 0, 0);
  EXPECT_EQ(engine_->QueueStats("q").total_enqueued(), 4u);

  // The oldest ready job's age follows the clock.
  AdvanceAndTick(seconds(5));
  EXPECT_EQ(util::DurationFromProto(engine_->QueueStats("q").oldest_ready_age()), seconds(5));

  v1::Lease l1 = LeaseOne("q");
  v1::Lease l2 = LeaseOne("q");
  expect_counts(1, 1, 2, 0, 0);

  ASSERT_TRUE(Complete(Id(l1.job().id()), l1.lease_token()).ok());
  expect_counts(1, 1, 1, 1, 0);

  // Retryable failure: LEASED -> SCHEDULED.
  ASSERT_TRUE(Fail(Id(l2.job().id()), l2.lease_token(), FailSpec{"x", microseconds(0), false}).ok());
  expect_counts(2, 1, 0, 1, 0);

  // Backoff (10s) and the delay (60s from the start) pass: both ready.
  AdvanceAndTick(seconds(60));
  expect_counts(0, 3, 0, 1, 0);

  // Leases expire: LEASED -> READY; at the last attempt -> DEAD.
  auto three = Lease(Spec({"q"}, 3));
  ASSERT_TRUE(three.ok());
  ASSERT_EQ(three->size(), 3u);
  expect_counts(0, 0, 3, 1, 0);
  AdvanceAndTick(options_.default_lease + seconds(1));
  ASSERT_TRUE(RunUntil([&] { return engine_->QueueStats("q").leased() == 0; }));
  // l2's job was on its second (last) attempt; the other two retry.
  expect_counts(0, 2, 0, 1, 1);

  v1::QueueStats st = engine_->QueueStats("q");
  EXPECT_EQ(st.total_enqueued(), 4u);
  EXPECT_EQ(st.total_succeeded(), 1u);
  EXPECT_EQ(st.total_failed(), 4u);  // one Fail, three expiries
  EXPECT_EQ(st.total_dead(), 1u);

  std::vector<v1::QueueStats> all = engine_->ListQueues();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].queue(), "q");
  EXPECT_EQ(all[0].ready(), 2u);
}

TEST_F(EngineTest, RecoverMakesLeasedJobsReadyAndLastAttemptsDead) {
  // A finished job, two leased ones, a ready one and a scheduled one.
  const uint64_t finished = Enqueue(Req("q"));
  v1::Lease lf = LeaseOne("q");
  ASSERT_TRUE(Complete(finished, lf.lease_token(), "kept").ok());

  v1::EnqueueRequest retry = Req("q");
  retry.set_max_attempts(3);
  const uint64_t leased = Enqueue(retry);
  v1::EnqueueRequest last = Req("q");
  last.set_max_attempts(1);
  const uint64_t leased_last = Enqueue(last);
  auto leases = Lease(Spec({"q"}, 2));
  ASSERT_TRUE(leases.ok());
  ASSERT_EQ(leases->size(), 2u);
  const uint64_t old_token = (*leases)[0].lease_token();
  ASSERT_EQ((*leases)[0].job().id(), store::FormatJobId(leased));

  const uint64_t ready = Enqueue(Req("q"));
  v1::EnqueueRequest later = Req("q");
  *later.mutable_delay() = DurationToProto(hours(1));
  const uint64_t scheduled = Enqueue(later);
  const uint64_t old_epoch = store_->boot_epoch();

  Restart();
  EXPECT_EQ(store_->boot_epoch(), old_epoch + 1);
  EXPECT_EQ(engine_->job_count(), 5u);
  ASSERT_TRUE(RunUntil([&] {
    return State(leased) == v1::JOB_STATE_READY && State(leased_last) == v1::JOB_STATE_DEAD;
  }));

  v1::Job job = Job(leased);
  EXPECT_EQ(job.attempts(), 1u);
  ASSERT_EQ(job.history_size(), 1);
  EXPECT_EQ(job.history(0).outcome(), v1::ATTEMPT_OUTCOME_BROKER_RESTART);
  EXPECT_EQ(Stored(leased).job().state(), v1::JOB_STATE_READY);

  job = Job(leased_last);
  ASSERT_EQ(job.history_size(), 1);
  EXPECT_EQ(job.history(0).outcome(), v1::ATTEMPT_OUTCOME_BROKER_RESTART);
  EXPECT_TRUE(job.has_finished_at());
  EXPECT_EQ(Stored(leased_last).job().state(), v1::JOB_STATE_DEAD);

  EXPECT_EQ(State(ready), v1::JOB_STATE_READY);
  EXPECT_EQ(State(scheduled), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(State(finished), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Job(finished).result(), "kept");

  v1::QueueStats st = engine_->QueueStats("q");
  EXPECT_EQ(st.ready(), 2u);
  EXPECT_EQ(st.scheduled(), 1u);
  EXPECT_EQ(st.leased(), 0u);
  EXPECT_EQ(st.succeeded(), 1u);
  EXPECT_EQ(st.dead(), 1u);

  // The previous boot's token is dead; new tokens are larger.
  auto stale = Complete(leased, old_token);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition) << stale.status();
  auto again = Lease(Spec({"q"}, 2));
  ASSERT_TRUE(again.ok());
  ASSERT_EQ(again->size(), 2u);
  for (const v1::Lease& l : *again) {
    EXPECT_GT(l.lease_token(), old_token);
    EXPECT_EQ(l.lease_token() >> 32, old_epoch + 1);
    if (l.job().id() == store::FormatJobId(leased)) {
      EXPECT_EQ(l.job().attempts(), 2u);
    }
  }

  // New ids still sort after the recovered ones.
  const uint64_t fresh = Enqueue(Req("q"));
  EXPECT_GT(fresh, scheduled);
}

TEST_F(EngineTest, RecoveredScheduledJobBecomesReadyWhenDue) {
  v1::EnqueueRequest later = Req("q");
  *later.mutable_delay() = DurationToProto(seconds(30));
  const uint64_t id = Enqueue(later);
  Restart();
  EXPECT_EQ(State(id), v1::JOB_STATE_SCHEDULED);
  AdvanceAndTick(seconds(30));
  EXPECT_EQ(State(id), v1::JOB_STATE_READY);
  EXPECT_EQ(LeaseOne("q").job().id(), store::FormatJobId(id));
}

// Once a key was reused after its window, the store holds two jobs with that
// key; after a restart the newer one must own it.
TEST_F(EngineTest, ReusedIdempotencyKeyStillDeduplicatesAfterRestart) {
  options_.idempotency_window = hours(1);
  Restart();
  v1::EnqueueRequest req = Req("q");
  req.set_idempotency_key("k");
  const uint64_t first = Enqueue(req);
  // Outside the window the key is free again and names a new job.
  clock_.Advance(hours(2));
  auto second = EnqueueMany({req});
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_FALSE(second->duplicate[0]);
  const uint64_t second_id = Id(second->job_ids[0]);
  EXPECT_NE(second_id, first);
  auto dup = EnqueueMany({req});
  ASSERT_TRUE(dup.ok());
  EXPECT_TRUE(dup->duplicate[0]);
  EXPECT_EQ(Id(dup->job_ids[0]), second_id);

  Restart();
  auto after = EnqueueMany({req});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(after->duplicate[0]) << "a third job was made for key \"k\"";
  EXPECT_EQ(Id(after->job_ids[0]), second_id);
  EXPECT_EQ(engine_->job_count(), 2u);
}

}  // namespace
}  // namespace errand::dispatch
