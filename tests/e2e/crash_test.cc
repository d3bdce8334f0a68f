// End to end: SIGKILL the broker while producers enqueue; every acknowledged
// job must be there after a restart, exactly once, with its payload.

#include <algorithm>
#include <atomic>
#include <map>
#include <set>
#include <thread>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

class CrashE2E : public BrokerTest {
 protected:
  struct Acked {
    std::string id;
    std::string payload;
  };

  struct Outcome {
    std::vector<Acked> acked;
    uint64_t attempted = 0;  // requests sent, acknowledged or not
  };

  // Runs `threads` producers that enqueue into `queue` at `durability` until
  // the broker dies (or a bound is hit), SIGKILLs the broker after
  // `kill_after`, and returns what was acknowledged.
  Outcome EnqueueWhileKilling(const std::string& queue, v1::Durability durability, int threads,
                              std::chrono::milliseconds kill_after) {
    constexpr int kMaxPerThread = 20000;
    const auto give_up = Clock::now() + 15s;
    std::vector<std::vector<Acked>> acked(threads);
    std::vector<uint64_t> attempted(threads, 0);
    std::atomic<int> started{0};
    std::vector<std::thread> producers;
    for (int t = 0; t < threads; ++t) {
      producers.emplace_back([&, t] {
        Client c(broker_->Channel());  // a connection per producer
        started++;
        for (int n = 0; n < kMaxPerThread && Clock::now() < give_up; ++n) {
          v1::EnqueueRequest r = NewJob(queue, "t" + std::to_string(t) + "-n" + std::to_string(n));
          r.set_durability(durability);
          v1::EnqueueResponse resp;
          grpc::ClientContext ctx;
          ctx.set_deadline(testing::In(5s));
          attempted[t]++;
          grpc::Status s = c.jobs->Enqueue(&ctx, r, &resp);
          if (!s.ok()) break;  // the broker is gone
          acked[t].push_back({resp.job_id(), r.payload()});
        }
      });
    }
    while (started.load() < threads) std::this_thread::sleep_for(1ms);
    std::this_thread::sleep_for(kill_after);
    broker_->Kill();
    for (auto& p : producers) p.join();
    Outcome out;
    for (int t = 0; t < threads; ++t) {
      out.attempted += attempted[t];
      out.acked.insert(out.acked.end(), acked[t].begin(), acked[t].end());
    }
    return out;
  }

  // Every acknowledged job exists once, with its payload.
  void ExpectAllAckedPresent(const std::string& queue, const Outcome& out) {
    std::set<std::string> distinct;
    for (const auto& a : out.acked) distinct.insert(a.id);
    EXPECT_EQ(distinct.size(), out.acked.size()) << "two acknowledged enqueues got the same id";
    size_t missing = 0, wrong = 0;
    for (const auto& a : out.acked) {
      v1::Job job;
      grpc::Status s = client().GetJob(a.id, &job);
      if (!s.ok()) {
        if (++missing <= 5) {
          ADD_FAILURE() << "acknowledged job " << a.id << " lost: " << Show(s);
        }
        continue;
      }
      if (job.payload() != a.payload || job.queue() != queue ||
          job.state() != v1::JOB_STATE_READY) {
        if (++wrong <= 5) {
          ADD_FAILURE() << "job " << a.id << " came back as " << job.ShortDebugString()
                        << ", expected payload " << a.payload;
        }
      }
    }
    EXPECT_EQ(missing, 0u);
    EXPECT_EQ(wrong, 0u);
    // Unacknowledged requests may or may not have committed, but nothing is
    // there twice and nothing appears from nowhere.
    v1::QueueStats st = client().Stats(queue);
    EXPECT_GE(TotalJobs(st), out.acked.size());
    EXPECT_LE(TotalJobs(st), out.attempted);

    // Every payload (unique per request) is stored at most once, and every
    // acknowledged one exactly once.
    std::map<std::string, int> copies;
    std::string token;
    for (int page = 0; page < 1000; ++page) {
      grpc::ClientContext ctx;
      ctx.set_deadline(testing::In(10s));
      v1::ListJobsRequest req;
      req.set_queue(queue);
      req.set_page_size(1000);
      req.set_page_token(token);
      v1::ListJobsResponse resp;
      grpc::Status s = client().jobs->ListJobs(&ctx, req, &resp);
      ASSERT_TRUE(s.ok()) << "ListJobs: " << Show(s);
      for (const v1::Job& job : resp.jobs()) copies[job.payload()]++;
      token = resp.next_page_token();
      if (token.empty()) break;
    }
    EXPECT_TRUE(token.empty()) << "ListJobs did not end";
    EXPECT_EQ(copies.size(), TotalJobs(st));
    for (const auto& [payload, n] : copies) EXPECT_EQ(n, 1) << "payload " << payload;
    for (const auto& a : out.acked) EXPECT_EQ(copies[a.payload], 1) << "payload " << a.payload;
  }
};

TEST_F(CrashE2E, EveryAcknowledgedSyncEnqueueSurvivesSigkill) {
  Outcome out = EnqueueWhileKilling("crash", v1::DURABILITY_SYNC, 4, 500ms);
  ASSERT_GT(out.acked.size(), 0u) << "no enqueue was acknowledged before the kill";
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  ExpectAllAckedPresent("crash", out);
  std::cerr << "[          ] " << out.acked.size() << " acknowledged of " << out.attempted
            << " sent before SIGKILL\n";
}

class AsyncCrashE2E : public CrashE2E {
 protected:
  std::vector<std::string> BrokerFlags() const override {
    return {"--commit=async", "--sync-interval=1000"};
  }
};

// --commit=async promises that an acknowledged write survives a process
// crash (it reached the WAL in the kernel), only not a power loss.
TEST_F(AsyncCrashE2E, EveryAcknowledgedAsyncEnqueueSurvivesSigkill) {
  Outcome out = EnqueueWhileKilling("crash-async", v1::DURABILITY_UNSPECIFIED, 4, 500ms);
  ASSERT_GT(out.acked.size(), 0u) << "no enqueue was acknowledged before the kill";
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  ExpectAllAckedPresent("crash-async", out);
}

TEST_F(CrashE2E, LeasedJobIsRedeliveredAndCompletedJobStaysSucceededAfterSigkill) {
  const std::string leased_id = client().MustEnqueue(NewJob("crash-state", "leased"));
  const std::string done_id = client().MustEnqueue(NewJob("crash-state", "done"));
  const std::string ready_id = client().MustEnqueue(NewJob("crash-state", "ready"));
  v1::Lease held = client().MustLeaseOne("crash-state", 0ms, "doomed");
  ASSERT_EQ(held.job().id(), leased_id);
  v1::Lease finished = client().MustLeaseOne("crash-state", 0ms, "quick");
  ASSERT_EQ(finished.job().id(), done_id);
  ASSERT_TRUE(client().Complete(done_id, finished.lease_token(), "kept").ok());

  ASSERT_NO_FATAL_FAILURE(CrashAndRestartBroker());

  v1::Job done = client().MustGetJob(done_id);
  EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.result(), "kept");
  v1::Job was_leased = client().MustGetJob(leased_id);
  EXPECT_EQ(was_leased.state(), v1::JOB_STATE_READY);
  ASSERT_EQ(was_leased.history_size(), 1);
  EXPECT_EQ(was_leased.history(0).outcome(), v1::ATTEMPT_OUTCOME_BROKER_RESTART);
  EXPECT_EQ(client().MustGetJob(ready_id).state(), v1::JOB_STATE_READY);

  grpc::Status s = client().Complete(leased_id, held.lease_token(), "stale");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);

  // Delivered again, with a newer token. (It goes behind the jobs that were
  // READY at the crash, as after any lease expiry.)
  auto again = client().MustLease(LeaseReq({"crash-state"}, 10, 0ms, "survivor"));
  ASSERT_EQ(again.size(), 2u);
  const bool leased_first = again[0].job().id() == leased_id;
  const v1::Lease& redelivered = leased_first ? again[0] : again[1];
  EXPECT_EQ(redelivered.job().id(), leased_id);
  EXPECT_EQ(redelivered.job().attempts(), 2u);
  EXPECT_EQ(redelivered.job().payload(), "leased");
  EXPECT_GT(redelivered.lease_token(), std::max(held.lease_token(), finished.lease_token()));
  EXPECT_EQ((leased_first ? again[1] : again[0]).job().id(), ready_id);
  s = client().Complete(leased_id, redelivered.lease_token(), "second try");
  EXPECT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(client().MustGetJob(leased_id).state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(CrashE2E, LeasedJobOnItsLastAttemptIsDeadAfterSigkill) {
  // The attempt count is written before the job is handed out: a job whose
  // last attempt was running when the broker crashed has used it up.
  v1::EnqueueRequest r = NewJob("crash-last", "once");
  r.set_max_attempts(1);
  const std::string id = client().MustEnqueue(r);
  v1::Lease l = client().MustLeaseOne("crash-last");
  ASSERT_EQ(l.job().id(), id);
  ASSERT_NO_FATAL_FAILURE(CrashAndRestartBroker());
  v1::Job job = client().MustGetJob(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_DEAD);
  EXPECT_EQ(job.attempts(), 1u);
  ASSERT_EQ(job.history_size(), 1);
  EXPECT_EQ(job.history(0).outcome(), v1::ATTEMPT_OUTCOME_BROKER_RESTART);
  EXPECT_TRUE(client().MustLease(LeaseReq({"crash-last"})).empty());
}

}  // namespace
}  // namespace errand::e2e
