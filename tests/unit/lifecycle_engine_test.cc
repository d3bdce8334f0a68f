// Unit tests of the job lifecycle in dispatch::Engine: cancel, queue control,
// dead letters, listing, idempotency, retention, stats, fairness, limits.
// A real JobStore on a temp dir, a real CommitPipeline, a FakeClock; the test
// thread plays core (it runs the io_context the pipeline posts to).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "commit/commit_pipeline.h"
#include "dispatch/engine.h"
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
using ::testing::HasSubstr;

uint64_t Id(const std::string& s) { return store::ParseJobId(s).value(); }

v1::EnqueueRequest Req(const std::string& queue, const std::string& payload = "",
                       const std::string& idem = "", const std::string& ckey = "") {
  v1::EnqueueRequest r;
  r.set_queue(queue);
  r.set_payload(payload);
  r.set_idempotency_key(idem);
  r.set_concurrency_key(ckey);
  return r;
}

class LifecycleEngineTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(); }
  void TearDown() override { Close(); }

  void Open() {
    auto st = store::JobStore::Open({dir_.path(), nullptr});
    ASSERT_TRUE(st.ok()) << st.status();
    store_ = std::move(*st);
    auto last = store_->LastEventSeq();
    ASSERT_TRUE(last.ok());
    pipeline_ = std::make_unique<commit::CommitPipeline>(
        store_.get(), commit::CommitPipeline::Options{},
        [this](std::function<void()> fn) { asio::post(io_, std::move(fn)); }, *last);
    options_.request_compaction = [this] {
      compaction_requests_++;
      store_->RequestJobsCompaction();
    };
    engine_ = std::make_unique<Engine>(io_, clock_, *store_, pipeline_.get(), options_,
                                       store_->boot_epoch());
    pipeline_->SetEventSink([this](std::vector<v1::Event>&& evs) {
      for (const auto& e : evs) events_.push_back(e);
    });
    ASSERT_TRUE(engine_->Recover().ok());
    pipeline_->Start();
    engine_->Start();
  }

  void Close() {
    if (!engine_) return;
    engine_->Shutdown();
    pipeline_->Stop();
    io_.restart();
    io_.poll();
    engine_.reset();
    pipeline_.reset();
    ASSERT_TRUE(store_->Close().ok());
    store_.reset();
    io_.restart();
  }

  void Reopen() {
    Close();
    Open();
    Settle();  // restarted leases end
  }

  // Runs core until `*flag` is set.
  void Pump(const bool* flag) {
    auto deadline = std::chrono::steady_clock::now() + seconds(10);
    while (!*flag && std::chrono::steady_clock::now() < deadline) {
      io_.restart();
      io_.run_one_for(milliseconds(10));
    }
    ASSERT_TRUE(*flag) << "core did not answer in time";
  }
  // Runs whatever core has queued, for a little while.
  void Settle() {
    auto until = std::chrono::steady_clock::now() + milliseconds(150);
    while (std::chrono::steady_clock::now() < until) {
      io_.restart();
      io_.poll();
      std::this_thread::sleep_for(milliseconds(2));
    }
  }

  template <typename T, typename Start>
  T Call(Start start) {
    std::optional<T> out;
    bool done = false;
    start([&](T r) {
      out.emplace(std::move(r));
      done = true;
    });
    Pump(&done);
    return std::move(*out);
  }

  absl::StatusOr<EnqueueOutcome> Enqueue(std::vector<v1::EnqueueRequest> reqs) {
    return Call<absl::StatusOr<EnqueueOutcome>>([&](auto cb) {
      engine_->Enqueue(std::move(reqs), v1::DURABILITY_UNSPECIFIED, cb);
    });
  }
  std::string MustEnqueue(v1::EnqueueRequest req) {
    auto r = Enqueue({std::move(req)});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->job_ids.at(0) : "";
  }
  absl::StatusOr<std::vector<v1::Lease>> Lease(const std::string& queue, uint32_t n = 1,
                                               microseconds wait = microseconds(0)) {
    LeaseSpec spec;
    spec.queues = {queue};
    spec.max_jobs = n;
    spec.wait = wait;
    spec.worker_id = "w";
    return Call<absl::StatusOr<std::vector<v1::Lease>>>(
        [&](auto cb) { engine_->Lease(std::move(spec), cb); });
  }
  absl::StatusOr<v1::Job> Cancel(const std::string& id, const std::string& reason = "") {
    return Call<absl::StatusOr<v1::Job>>([&](auto cb) { engine_->Cancel(Id(id), reason, cb); });
  }
  absl::StatusOr<v1::Job> Complete(const v1::Lease& l, const std::string& result = "ok") {
    return Call<absl::StatusOr<v1::Job>>([&](auto cb) {
      engine_->Complete(Id(l.job().id()), l.lease_token(), result, cb);
    });
  }
  absl::StatusOr<v1::Job> Fail(const v1::Lease& l, bool non_retryable = false) {
    FailSpec spec;
    spec.error = "boom";
    spec.non_retryable = non_retryable;
    return Call<absl::StatusOr<v1::Job>>([&](auto cb) {
      engine_->Fail(Id(l.job().id()), l.lease_token(), spec, cb);
    });
  }
  absl::StatusOr<ExtendOutcome> Extend(const v1::Lease& l) {
    return Call<absl::StatusOr<ExtendOutcome>>([&](auto cb) {
      engine_->Extend(Id(l.job().id()), l.lease_token(), microseconds(0), std::nullopt, cb);
    });
  }
  absl::Status SetPaused(const std::string& q, bool paused) {
    return Call<absl::Status>([&](auto cb) { engine_->SetPaused(q, paused, cb); });
  }
  absl::Status SetLimit(const std::string& q, uint32_t limit) {
    return Call<absl::Status>([&](auto cb) { engine_->SetQueueConfig(q, limit, cb); });
  }
  absl::StatusOr<uint64_t> Purge(const std::string& q) {
    return Call<absl::StatusOr<uint64_t>>([&](auto cb) { engine_->Purge(q, cb); });
  }
  absl::StatusOr<uint64_t> Redrive(const std::string& q, std::vector<std::string> ids,
                                   std::optional<std::string> payload = std::nullopt) {
    std::vector<uint64_t> nums;
    for (auto& s : ids) nums.push_back(Id(s));
    return Call<absl::StatusOr<uint64_t>>(
        [&](auto cb) { engine_->Redrive(q, std::move(nums), payload, cb); });
  }
  v1::Job Get(const std::string& id) {
    auto j = engine_->GetJob(Id(id));
    EXPECT_TRUE(j.ok()) << j.status();
    return j.ok() ? *j : v1::Job();
  }
  // Makes a DEAD job in `queue` (one attempt, failed non-retryable).
  std::string MakeDead(const std::string& queue, const std::string& payload = "p") {
    std::string id = MustEnqueue(Req(queue, payload));
    auto leases = Lease(queue);
    EXPECT_TRUE(leases.ok() && leases->size() == 1);
    auto f = Fail(leases->at(0), /*non_retryable=*/true);
    EXPECT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->state(), v1::JOB_STATE_DEAD);
    return id;
  }
  std::vector<v1::EventType> EventTypesOf(const std::string& id) const {
    std::vector<v1::EventType> out;
    for (const auto& e : events_) {
      if (e.job_id() == id) out.push_back(e.type());
    }
    return out;
  }

  testing::TempDir dir_;
  util::FakeClock clock_;
  asio::io_context io_{1};
  EngineOptions options_;
  std::unique_ptr<store::JobStore> store_;
  std::unique_ptr<commit::CommitPipeline> pipeline_;
  std::unique_ptr<Engine> engine_;
  std::vector<v1::Event> events_;
  int compaction_requests_ = 0;
};

// --- 1. Cancel ---------------------------------------------------------------

TEST_F(LifecycleEngineTest, CancelReadyJobEndsCancelledAndIsNeverLeased) {
  std::string id = MustEnqueue(Req("q", "x"));
  auto c = Cancel(id, "no longer needed");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(c->error(), "no longer needed");
  EXPECT_TRUE(c->has_finished_at());
  auto leases = Lease("q");
  ASSERT_TRUE(leases.ok());
  EXPECT_TRUE(leases->empty());
  EXPECT_THAT(EventTypesOf(id), ::testing::ElementsAre(v1::EVENT_TYPE_ENQUEUED,
                                                       v1::EVENT_TYPE_CANCELLED));
  auto st = engine_->QueueStats("q");
  EXPECT_EQ(st.ready(), 0u);
  EXPECT_EQ(st.cancelled(), 1u);
  EXPECT_FALSE(st.has_oldest_ready_age() && st.oldest_ready_age().seconds() > 0);
  // Committed: still CANCELLED after a restart.
  Reopen();
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(Get(id).error(), "no longer needed");
}

TEST_F(LifecycleEngineTest, CancelScheduledJobEndsCancelledAndNeverBecomesReady) {
  v1::EnqueueRequest r = Req("q");
  *r.mutable_delay() = util::DurationToProto(seconds(10));
  std::string id = MustEnqueue(r);
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_SCHEDULED);
  auto c = Cancel(id);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(c->error(), "cancelled");
  clock_.Advance(seconds(20));
  engine_->OnTimer();
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_CANCELLED);
  auto leases = Lease("q");
  ASSERT_TRUE(leases.ok());
  EXPECT_TRUE(leases->empty());
}

TEST_F(LifecycleEngineTest, CancelLeasedJobIsSeenByExtendAndEndsCancelledOnFail) {
  std::string id = MustEnqueue(Req("q"));
  auto leases = Lease("q");
  ASSERT_TRUE(leases.ok() && leases->size() == 1);
  auto ext = Extend(leases->at(0));
  ASSERT_TRUE(ext.ok());
  EXPECT_FALSE(ext->cancel_requested);

  auto c = Cancel(id, "stop it");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->state(), v1::JOB_STATE_LEASED);
  EXPECT_TRUE(c->cancel_requested());
  // A second cancel is harmless.
  ASSERT_TRUE(Cancel(id).ok());

  ext = Extend(leases->at(0));
  ASSERT_TRUE(ext.ok());
  EXPECT_TRUE(ext->cancel_requested);

  auto f = Fail(leases->at(0));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(f->error(), "stop it");
  ASSERT_EQ(f->history_size(), 1);
  EXPECT_EQ(f->history(0).outcome(), v1::ATTEMPT_OUTCOME_CANCELLED);
  EXPECT_THAT(EventTypesOf(id),
              ::testing::ElementsAre(v1::EVENT_TYPE_ENQUEUED, v1::EVENT_TYPE_LEASED,
                                     v1::EVENT_TYPE_CANCEL_REQUESTED, v1::EVENT_TYPE_CANCELLED));
  auto st = engine_->QueueStats("q");
  EXPECT_EQ(st.leased(), 0u);
  EXPECT_EQ(st.cancelled(), 1u);
  EXPECT_EQ(st.total_failed(), 0u);
}

TEST_F(LifecycleEngineTest, CancelLeasedJobThenCompleteRecordsSucceeded) {
  std::string id = MustEnqueue(Req("q"));
  auto leases = Lease("q");
  ASSERT_TRUE(leases.ok() && leases->size() == 1);
  ASSERT_TRUE(Cancel(id).ok());
  auto done = Complete(leases->at(0), "result");
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done->result(), "result");
}

TEST_F(LifecycleEngineTest, CancelLeasedJobEndsCancelledWhenLeaseExpires) {
  v1::EnqueueRequest r = Req("q");
  r.set_max_attempts(5);
  std::string id = MustEnqueue(r);
  auto leases = Lease("q");
  ASSERT_TRUE(leases.ok() && leases->size() == 1);
  ASSERT_TRUE(Cancel(id).ok());
  clock_.Advance(hours(1));
  engine_->OnTimer();
  Settle();
  v1::Job j = Get(id);
  EXPECT_EQ(j.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(j.history(0).outcome(), v1::ATTEMPT_OUTCOME_CANCELLED);
}

TEST_F(LifecycleEngineTest, CancelLeasedJobEndsCancelledAfterRestart) {
  std::string id = MustEnqueue(Req("q"));
  auto leases = Lease("q");
  ASSERT_TRUE(leases.ok() && leases->size() == 1);
  ASSERT_TRUE(Cancel(id).ok());
  Reopen();
  Settle();
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_CANCELLED);
}

TEST_F(LifecycleEngineTest, CancelTerminalJobIsFailedPreconditionNamingState) {
  std::string id = MustEnqueue(Req("q"));
  auto leases = Lease("q");
  ASSERT_TRUE(Complete(leases->at(0)).ok());
  auto c = Cancel(id);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("JOB_STATE_SUCCEEDED"));
  auto unknown = Cancel(store::FormatJobId(12345));
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
}

// --- 2. Pause, resume, purge ---------------------------------------------------

TEST_F(LifecycleEngineTest, PausedQueueAcceptsButLeasesNothingAndSurvivesRestart) {
  ASSERT_TRUE(SetPaused("q", true).ok());
  std::string id = MustEnqueue(Req("q"));
  auto leases = Lease("q");
  ASSERT_TRUE(leases.ok());
  EXPECT_TRUE(leases->empty());
  EXPECT_TRUE(engine_->QueueStats("q").paused());
  Reopen();
  EXPECT_TRUE(engine_->QueueStats("q").paused());
  leases = Lease("q");
  ASSERT_TRUE(leases.ok());
  EXPECT_TRUE(leases->empty());

  // A waiting lease gets the job as soon as the queue resumes.
  std::optional<absl::StatusOr<std::vector<v1::Lease>>> waited;
  bool answered = false;
  LeaseSpec spec;
  spec.queues = {"q"};
  spec.wait = seconds(30);
  engine_->Lease(spec, [&](absl::StatusOr<std::vector<v1::Lease>> r) {
    waited.emplace(std::move(r));
    answered = true;
  });
  Settle();
  EXPECT_FALSE(answered);
  ASSERT_TRUE(SetPaused("q", false).ok());
  Pump(&answered);
  ASSERT_TRUE(waited->ok());
  ASSERT_EQ((*waited)->size(), 1u);
  EXPECT_EQ((*waited)->at(0).job().id(), id);
  Reopen();
  EXPECT_FALSE(engine_->QueueStats("q").paused());
}

TEST_F(LifecycleEngineTest, PurgeDeletesReadyAndScheduledJobsOnly) {
  std::string ready1 = MustEnqueue(Req("q"));
  std::string leased = MustEnqueue(Req("q"));
  v1::EnqueueRequest later = Req("q");
  *later.mutable_delay() = util::DurationToProto(seconds(100));
  std::string scheduled = MustEnqueue(later);
  std::string other = MustEnqueue(Req("other"));
  // Lease one: ready1 goes first (FIFO), so cancel it and lease `leased`.
  ASSERT_TRUE(Cancel(ready1).ok());
  auto leases = Lease("q");
  ASSERT_TRUE(leases.ok() && leases->size() == 1);
  EXPECT_EQ(leases->at(0).job().id(), leased);
  std::string ready2 = MustEnqueue(Req("q"));

  auto n = Purge("q");
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 2u);  // ready2 and scheduled
  EXPECT_EQ(engine_->GetJob(Id(ready2)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->GetJob(Id(scheduled)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Get(leased).state(), v1::JOB_STATE_LEASED);
  EXPECT_EQ(Get(ready1).state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(Get(other).state(), v1::JOB_STATE_READY);
  EXPECT_THAT(EventTypesOf(ready2), ::testing::Contains(v1::EVENT_TYPE_DELETED));
  auto st = engine_->QueueStats("q");
  EXPECT_EQ(st.ready(), 0u);
  EXPECT_EQ(st.scheduled(), 0u);
  EXPECT_EQ(st.leased(), 1u);
  EXPECT_EQ(st.cancelled(), 1u);
  // Records are gone too.
  Reopen();
  EXPECT_EQ(engine_->GetJob(Id(ready2)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->GetJob(Id(scheduled)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->QueueStats("q").ready(), 1u);  // the leased job is ready after restart
  EXPECT_EQ(*Purge("empty"), 0u);
}

// --- 3. Dead letters -------------------------------------------------------------

TEST_F(LifecycleEngineTest, RedriveMakesDeadJobReadyWithHistoryKept) {
  std::string id = MakeDead("q", "old");
  auto n = Redrive("q", {id}, std::string("new"));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 1u);
  v1::Job j = Get(id);
  EXPECT_EQ(j.state(), v1::JOB_STATE_READY);
  EXPECT_EQ(j.attempts(), 0u);
  EXPECT_EQ(j.payload(), "new");
  EXPECT_EQ(j.history_size(), 1);
  EXPECT_FALSE(j.has_finished_at());
  EXPECT_THAT(EventTypesOf(id), ::testing::Contains(v1::EVENT_TYPE_REDRIVEN));
  auto leases = Lease("q");
  ASSERT_TRUE(leases.ok() && leases->size() == 1);
  EXPECT_EQ(leases->at(0).job().attempts(), 1u);
  EXPECT_EQ(leases->at(0).job().history_size(), 2);
  ASSERT_TRUE(Complete(leases->at(0)).ok());
  EXPECT_EQ(Get(id).state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(LifecycleEngineTest, RedriveWholeQueueAndErrors) {
  std::string a = MakeDead("q");
  std::string b = MakeDead("q");
  std::string live = MustEnqueue(Req("q"));
  auto bad = Redrive("q", {a, live});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("job_ids[1]"));
  EXPECT_EQ(Get(a).state(), v1::JOB_STATE_DEAD);  // nothing changed
  EXPECT_EQ(Redrive("other", {a}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Redrive("q", {store::FormatJobId(99)}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->QueueStats("q").dead(), 2u);
  auto n = Redrive("q", {});
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 2u);
  auto st = engine_->QueueStats("q");
  EXPECT_EQ(st.dead(), 0u);
  EXPECT_EQ(st.ready(), 3u);
  EXPECT_EQ(Get(b).state(), v1::JOB_STATE_READY);
}

TEST_F(LifecycleEngineTest, ListDeadJobsPaginates) {
  std::vector<std::string> dead;
  for (int i = 0; i < 5; ++i) {
    dead.push_back(MakeDead("q"));
    v1::EnqueueRequest later = Req("q");  // not dead (and not leased): skipped
    *later.mutable_delay() = util::DurationToProto(seconds(100));
    MustEnqueue(later);
  }
  ListSpec spec;
  spec.queue = "q";
  spec.state = v1::JOB_STATE_DEAD;
  spec.page_size = 2;
  std::vector<std::string> seen;
  for (int pages = 0; pages < 10; ++pages) {
    ListPage p = engine_->ListJobs(spec);
    for (auto& j : p.jobs) {
      EXPECT_EQ(j.state(), v1::JOB_STATE_DEAD);
      seen.push_back(j.id());
    }
    if (p.next == 0) break;
    spec.after = p.next;
  }
  EXPECT_EQ(seen, dead);
}

// --- 4. ListJobs -------------------------------------------------------------------

TEST_F(LifecycleEngineTest, ListJobsVisitsEveryJobOnceWhileJobsAreAdded) {
  std::vector<std::string> initial;
  for (int i = 0; i < 25; ++i) initial.push_back(MustEnqueue(Req("q", std::to_string(i))));
  for (bool newest : {false, true}) {
    ListSpec spec;
    spec.queue = "q";
    spec.page_size = 4;
    spec.newest_first = newest;
    spec.omit_payload = true;
    std::vector<std::string> seen;
    std::set<std::string> unique;
    for (int pages = 0; pages < 100; ++pages) {
      ListPage p = engine_->ListJobs(spec);
      for (auto& j : p.jobs) {
        EXPECT_TRUE(j.payload().empty());
        seen.push_back(j.id());
        EXPECT_TRUE(unique.insert(j.id()).second) << "visited twice: " << j.id();
      }
      MustEnqueue(Req("q"));  // concurrent writes between pages
      if (p.next == 0) break;
      spec.after = p.next;
    }
    for (const auto& id : initial) EXPECT_EQ(unique.count(id), 1u) << id;
    EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()) ||
                (newest && std::is_sorted(seen.rbegin(), seen.rend())));
  }
}

TEST_F(LifecycleEngineTest, ListJobsFiltersByStateWithBoundedScan) {
  std::vector<std::string> ids;
  for (int i = 0; i < 10; ++i) ids.push_back(MustEnqueue(Req("q")));
  ASSERT_TRUE(Cancel(ids[3]).ok());
  ASSERT_TRUE(Cancel(ids[8]).ok());
  ListSpec spec;
  spec.queue = "q";
  spec.state = v1::JOB_STATE_CANCELLED;
  spec.max_scan = 3;  // forces short pages
  std::vector<std::string> seen;
  for (int pages = 0; pages < 20; ++pages) {
    ListPage p = engine_->ListJobs(spec);
    for (auto& j : p.jobs) seen.push_back(j.id());
    if (p.next == 0) break;
    spec.after = p.next;
  }
  EXPECT_EQ(seen, (std::vector<std::string>{ids[3], ids[8]}));
  spec = ListSpec();
  spec.queue = "nope";
  EXPECT_TRUE(engine_->ListJobs(spec).jobs.empty());
}

// --- 5. Idempotency ------------------------------------------------------------

TEST_F(LifecycleEngineTest, DuplicateKeyReturnsOriginalJob) {
  auto first = Enqueue({Req("q", "a", "k1")});
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->duplicate[0]);
  auto again = Enqueue({Req("q", "b", "k1")});
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->duplicate[0]);
  EXPECT_EQ(again->job_ids[0], first->job_ids[0]);
  EXPECT_EQ(again->jobs[0].payload(), "a");
  EXPECT_EQ(again->jobs[0].state(), v1::JOB_STATE_READY);
  // Another queue: another job.
  auto other = Enqueue({Req("q2", "a", "k1")});
  EXPECT_FALSE(other->duplicate[0]);
  EXPECT_EQ(engine_->job_count(), 2u);
  // The duplicate shows the result once done.
  auto leases = Lease("q");
  ASSERT_TRUE(Complete(leases->at(0), "R").ok());
  auto done = Enqueue({Req("q", "c", "k1")});
  EXPECT_TRUE(done->duplicate[0]);
  EXPECT_EQ(done->jobs[0].state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done->jobs[0].result(), "R");
  // Keys survive a restart.
  Reopen();
  auto after = Enqueue({Req("q", "d", "k1")});
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(after->duplicate[0]);
  EXPECT_EQ(after->job_ids[0], first->job_ids[0]);
  EXPECT_EQ(engine_->job_count(), 2u);
}

TEST_F(LifecycleEngineTest, ConcurrentDuplicatesMakeOneJob) {
  std::vector<absl::StatusOr<EnqueueOutcome>> results;
  int answered = 0;
  for (int i = 0; i < 8; ++i) {
    engine_->Enqueue({Req("q", std::to_string(i), "same")}, v1::DURABILITY_UNSPECIFIED,
                     [&](absl::StatusOr<EnqueueOutcome> r) {
                       results.push_back(std::move(r));
                       answered++;
                     });
  }
  bool all = false;
  auto deadline = std::chrono::steady_clock::now() + seconds(10);
  while (answered < 8 && std::chrono::steady_clock::now() < deadline) {
    io_.restart();
    io_.run_one_for(milliseconds(10));
  }
  all = answered == 8;
  ASSERT_TRUE(all);
  std::set<std::string> ids;
  int originals = 0;
  for (auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.status();
    ids.insert(r->job_ids[0]);
    if (!r->duplicate[0]) originals++;
  }
  EXPECT_EQ(ids.size(), 1u);
  EXPECT_EQ(originals, 1);
  EXPECT_EQ(engine_->job_count(), 1u);
}

TEST_F(LifecycleEngineTest, BatchDuplicatesInsideAndAgainstExistingKeys) {
  ASSERT_TRUE(Enqueue({Req("q", "orig", "old")}).ok());
  auto r = Enqueue({Req("q", "1", "new"), Req("q", "2", "new"), Req("q", "3", "old"),
                    Req("q", "4")});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->duplicate, (std::vector<bool>{false, true, true, false}));
  EXPECT_EQ(r->job_ids[0], r->job_ids[1]);
  EXPECT_EQ(r->jobs[1].payload(), "1");
  EXPECT_EQ(r->jobs[2].payload(), "orig");
  EXPECT_EQ(engine_->job_count(), 3u);
}

TEST_F(LifecycleEngineTest, KeyIsFreeAgainAfterTheWindow) {
  auto a = Enqueue({Req("q", "a", "k")});
  clock_.Advance(hours(25));
  auto b = Enqueue({Req("q", "b", "k")});
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->duplicate[0]);
  EXPECT_NE(a->job_ids[0], b->job_ids[0]);
}

// --- 6. Retry policy and retention ----------------------------------------------

TEST_F(LifecycleEngineTest, PerJobRetryPolicySetsBackoff) {
  v1::EnqueueRequest r = Req("q");
  r.set_max_attempts(3);
  *r.mutable_retry()->mutable_initial_backoff() = util::DurationToProto(seconds(7));
  r.mutable_retry()->set_jitter(1e-9);
  std::string id = MustEnqueue(r);
  auto leases = Lease("q");
  auto f = Fail(leases->at(0));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->state(), v1::JOB_STATE_SCHEDULED);
  auto wait = util::FromProto(f->run_at()) - clock_.Now();
  EXPECT_NEAR(std::chrono::duration_cast<milliseconds>(wait).count(), 7000, 5);
  clock_.Advance(seconds(8));
  engine_->OnTimer();
  leases = Lease("q");
  ASSERT_EQ(leases->size(), 1u);
  f = Fail(leases->at(0));
  wait = util::FromProto(f->run_at()) - clock_.Now();
  EXPECT_NEAR(std::chrono::duration_cast<milliseconds>(wait).count(), 14000, 5);
  clock_.Advance(seconds(15));
  engine_->OnTimer();
  leases = Lease("q");
  f = Fail(leases->at(0));
  EXPECT_EQ(f->state(), v1::JOB_STATE_DEAD);
  EXPECT_EQ(f->history_size(), 3);
}

TEST_F(LifecycleEngineTest, RetentionDeletesOnlyFinishedJobsOlderThanRetention) {
  v1::EnqueueRequest short_keep = Req("q");
  *short_keep.mutable_retention() = util::DurationToProto(seconds(1));
  std::string done_short = MustEnqueue(short_keep);
  std::string done_default = MustEnqueue(Req("q"));
  std::string cancelled_short = MustEnqueue(short_keep);
  std::string pending_short = MustEnqueue(short_keep);  // never finishes
  auto leases = Lease("q", 2);
  ASSERT_EQ(leases->size(), 2u);
  ASSERT_TRUE(Complete(leases->at(0)).ok());
  ASSERT_TRUE(Complete(leases->at(1)).ok());
  ASSERT_TRUE(Cancel(cancelled_short).ok());
  EXPECT_EQ(engine_->retained_jobs(), 3u);

  clock_.Advance(milliseconds(500));
  engine_->OnTimer();
  Settle();
  EXPECT_EQ(engine_->job_count(), 4u);

  clock_.Advance(seconds(2));
  engine_->OnTimer();
  Settle();
  EXPECT_EQ(engine_->GetJob(Id(done_short)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(engine_->GetJob(Id(cancelled_short)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Get(done_default).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Get(pending_short).state(), v1::JOB_STATE_READY);
  EXPECT_THAT(EventTypesOf(done_short), ::testing::Contains(v1::EVENT_TYPE_DELETED));
  auto st = engine_->QueueStats("q");
  EXPECT_EQ(st.succeeded(), 1u);
  EXPECT_EQ(st.cancelled(), 0u);
  EXPECT_EQ(st.ready(), 1u);
  EXPECT_EQ(st.total_succeeded(), 2u);  // totals since start are not rewritten

  // The default retention (7 days) applies to the other one.
  clock_.Advance(hours(24 * 7));
  engine_->OnTimer();
  Settle();
  EXPECT_EQ(engine_->GetJob(Id(done_default)).status().code(), absl::StatusCode::kNotFound);
  Reopen();
  EXPECT_EQ(engine_->job_count(), 1u);
  EXPECT_EQ(engine_->deleted_jobs(), 0u);
}

TEST_F(LifecycleEngineTest, RetentionDeletesInBoundedBatchesAndRequestsCompaction) {
  Close();
  options_.retention_batch = 10;
  options_.compact_after_deletes = 25;
  options_.retention = seconds(1);
  Open();
  std::vector<v1::EnqueueRequest> batch;
  for (int i = 0; i < 40; ++i) batch.push_back(Req("q"));
  ASSERT_TRUE(Enqueue(batch).ok());
  for (int i = 0; i < 4; ++i) {
    auto leases = Lease("q", 10);
    for (auto& l : *leases) ASSERT_TRUE(Complete(l).ok());
  }
  clock_.Advance(seconds(5));
  engine_->OnTimer();
  Settle();
  // One sweep deletes at most 10; the next starts once it committed.
  for (int i = 0; i < 10 && engine_->job_count() > 0; ++i) {
    engine_->OnTimer();
    Settle();
  }
  EXPECT_EQ(engine_->job_count(), 0u);
  EXPECT_EQ(engine_->deleted_jobs(), 40u);
  EXPECT_EQ(compaction_requests_, 1);
}

// --- 7. Stats -----------------------------------------------------------------------

TEST_F(LifecycleEngineTest, StatsStayExactThroughCancelPurgeAndRedrive) {
  std::string a = MustEnqueue(Req("q"));
  clock_.Advance(seconds(10));
  std::string b = MustEnqueue(Req("q"));
  auto st = engine_->QueueStats("q");
  EXPECT_EQ(st.ready(), 2u);
  EXPECT_EQ(st.oldest_ready_age().seconds(), 10);
  ASSERT_TRUE(Cancel(a).ok());
  st = engine_->QueueStats("q");
  EXPECT_EQ(st.ready(), 1u);
  EXPECT_EQ(st.oldest_ready_age().seconds(), 0);  // b is the oldest now
  ASSERT_EQ(*Purge("q"), 1u);
  st = engine_->QueueStats("q");
  EXPECT_EQ(st.ready(), 0u);
  EXPECT_FALSE(st.has_oldest_ready_age());
  std::string d = MakeDead("q");
  st = engine_->QueueStats("q");
  EXPECT_EQ(st.dead(), 1u);
  EXPECT_EQ(st.total_dead(), 1u);
  EXPECT_EQ(st.total_enqueued(), 3u);
  ASSERT_EQ(*Redrive("q", {d}), 1u);
  st = engine_->QueueStats("q");
  EXPECT_EQ(st.dead(), 0u);
  EXPECT_EQ(st.ready(), 1u);
  EXPECT_EQ(st.cancelled(), 1u);
  (void)b;
}

// --- 8. Fairness ------------------------------------------------------------------------

TEST_F(LifecycleEngineTest, LimitOfOnePerKeyAlternatesKeys) {
  ASSERT_TRUE(SetLimit("q", 1).ok());
  for (int i = 0; i < 4; ++i) MustEnqueue(Req("q", "a" + std::to_string(i), "", "A"));
  for (int i = 0; i < 4; ++i) MustEnqueue(Req("q", "b" + std::to_string(i), "", "B"));
  // Asking for many leases at once gets one per key.
  auto many = Lease("q", 10);
  ASSERT_TRUE(many.ok());
  ASSERT_EQ(many->size(), 2u);
  EXPECT_NE(many->at(0).job().concurrency_key(), many->at(1).job().concurrency_key());
  EXPECT_TRUE(Lease("q")->empty());  // both keys at their limit
  for (auto& l : *many) ASSERT_TRUE(Complete(l).ok());
  std::string keys;
  for (int i = 0; i < 6; ++i) {
    auto l = Lease("q");
    ASSERT_EQ(l->size(), 1u);
    keys += l->at(0).job().concurrency_key();
    ASSERT_TRUE(Complete(l->at(0)).ok());
  }
  EXPECT_TRUE(keys == "ABABAB" || keys == "BABABA") << keys;
  // The limit survives a restart.
  Reopen();
  EXPECT_EQ(engine_->QueueStats("q").max_leased_per_key(), 1u);
}

TEST_F(LifecycleEngineTest, KeysTakeTurnsWithoutALimitAndWaitersWakeWhenASlotFrees) {
  for (int i = 0; i < 3; ++i) MustEnqueue(Req("q", "", "", "A"));
  MustEnqueue(Req("q", "", "", "B"));
  auto first = Lease("q", 2);
  ASSERT_EQ(first->size(), 2u);
  EXPECT_NE(first->at(0).job().concurrency_key(), first->at(1).job().concurrency_key());

  ASSERT_TRUE(SetLimit("q", 1).ok());
  // A is at its limit (one leased), B has nothing ready: a lease waits.
  bool answered = false;
  std::optional<absl::StatusOr<std::vector<v1::Lease>>> got;
  LeaseSpec spec;
  spec.queues = {"q"};
  spec.wait = seconds(30);
  engine_->Lease(spec, [&](absl::StatusOr<std::vector<v1::Lease>> r) {
    got.emplace(std::move(r));
    answered = true;
  });
  Settle();
  EXPECT_FALSE(answered);
  const v1::Lease& a_lease =
      first->at(0).job().concurrency_key() == "A" ? first->at(0) : first->at(1);
  ASSERT_TRUE(Complete(a_lease).ok());
  Pump(&answered);
  ASSERT_TRUE(got->ok());
  ASSERT_EQ((*got)->size(), 1u);
  EXPECT_EQ((*got)->at(0).job().concurrency_key(), "A");
}

// --- 9. Limits ------------------------------------------------------------------------------

TEST_F(LifecycleEngineTest, MaxQueueDepthIsResourceExhaustedNamingQueueAndLimit) {
  Close();
  options_.max_queue_depth = 3;
  Open();
  for (int i = 0; i < 3; ++i) MustEnqueue(Req("q"));
  auto r = Enqueue({Req("q")});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("\"q\""));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("3"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("--max-queue-depth"));
  // Other queues are unaffected; finished jobs do not count.
  EXPECT_TRUE(Enqueue({Req("other")}).ok());
  auto leases = Lease("q");
  ASSERT_TRUE(Complete(leases->at(0)).ok());
  EXPECT_TRUE(Enqueue({Req("q")}).ok());
  // A batch that would cross the limit is refused whole.
  EXPECT_EQ(Enqueue({Req("q"), Req("q")}).status().code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace errand::dispatch
