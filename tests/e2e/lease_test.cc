// End to end: lease expiry and redelivery, Extend, and the Lease long poll.

#include <future>
#include <thread>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

class LeaseE2E : public BrokerTest {};
class ExtendE2E : public BrokerTest {};
class LongPollE2E : public BrokerTest {};

v1::EnqueueRequest ShortLeaseJob(const std::string& queue, const std::string& payload,
                                 uint32_t max_attempts = 5) {
  v1::EnqueueRequest r = NewJob(queue, payload);
  *r.mutable_lease_duration() = Dur(1s);  // the shortest allowed
  r.set_max_attempts(max_attempts);
  return r;
}

// ---------------------------------------------------------------------------
// Expiry.

TEST_F(LeaseE2E, ExpiredLeaseIsRedeliveredToSecondWorker) {
  const std::string id = client().MustEnqueue(ShortLeaseJob("expiry", "work"));
  auto worker_a = NewClient();
  auto worker_b = NewClient();

  v1::Lease a = worker_a->MustLeaseOne("expiry", 0ms, "worker-A");
  ASSERT_EQ(a.job().id(), id);
  EXPECT_EQ(a.job().attempts(), 1u);
  EXPECT_EQ(Between(a.job().updated_at(), a.deadline()), 1s);

  // A does nothing. B's long poll gets the job once A's lease expired.
  auto start = Clock::now();
  v1::Lease b = worker_b->MustLeaseOne("expiry", 5s, "worker-B");
  ASSERT_EQ(b.job().id(), id);
  EXPECT_LT(Since(start), 4500ms);
  EXPECT_GE(std::chrono::system_clock::now(), Time(a.deadline()));
  EXPECT_EQ(b.job().attempts(), 2u);
  EXPECT_GT(b.lease_token(), a.lease_token());
  EXPECT_EQ(b.job().payload(), "work");
  ASSERT_EQ(b.job().history_size(), 2);
  EXPECT_EQ(b.job().history(0).number(), 1u);
  EXPECT_EQ(b.job().history(0).worker_id(), "worker-A");
  EXPECT_EQ(b.job().history(0).outcome(), v1::ATTEMPT_OUTCOME_LEASE_EXPIRED);
  EXPECT_TRUE(b.job().history(0).has_ended_at());
  EXPECT_EQ(b.job().history(1).number(), 2u);
  EXPECT_EQ(b.job().history(1).worker_id(), "worker-B");
  EXPECT_EQ(b.job().history(1).outcome(), v1::ATTEMPT_OUTCOME_RUNNING);

  // A wakes up: its token is stale for Complete, Fail and Extend alike.
  grpc::Status s = worker_a->Complete(id, a.lease_token(), "from-A");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);
  EXPECT_FALSE(s.error_message().empty());
  s = worker_a->Fail(id, a.lease_token(), "A failed");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);
  v1::ExtendResponse ext;
  s = worker_a->Extend(id, a.lease_token(), &ext);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);

  v1::Job job = client().MustGetJob(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_LEASED);
  EXPECT_EQ(job.attempts(), 2u);
  EXPECT_EQ(job.result(), "");
  ASSERT_EQ(job.history_size(), 2);
  EXPECT_EQ(job.history(1).outcome(), v1::ATTEMPT_OUTCOME_RUNNING);

  // B's token still works.
  s = worker_b->Complete(id, b.lease_token(), "from-B");
  ASSERT_TRUE(s.ok()) << Show(s);
  job = client().MustGetJob(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job.result(), "from-B");
  EXPECT_EQ(job.history(1).outcome(), v1::ATTEMPT_OUTCOME_SUCCEEDED);
}

TEST_F(LeaseE2E, ExpiredLeaseOnLastAttemptMakesJobDead) {
  const std::string id = client().MustEnqueue(ShortLeaseJob("expiry-dead", "w", 1));
  v1::Lease a = client().MustLeaseOne("expiry-dead", 0ms, "w1");
  ASSERT_EQ(a.job().id(), id);
  // WaitJob long-polls until the job is terminal.
  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(10s));
  v1::WaitJobRequest wait;
  wait.set_job_id(id);
  *wait.mutable_timeout() = Dur(5s);
  v1::WaitJobResponse waited;
  grpc::Status s = client().jobs->WaitJob(&ctx, wait, &waited);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_TRUE(waited.done());
  v1::Job job = waited.job();
  EXPECT_EQ(job.state(), v1::JOB_STATE_DEAD);
  EXPECT_GE(std::chrono::system_clock::now(), Time(a.deadline()));
  EXPECT_EQ(job.attempts(), 1u);
  ASSERT_EQ(job.history_size(), 1);
  EXPECT_EQ(job.history(0).outcome(), v1::ATTEMPT_OUTCOME_LEASE_EXPIRED);
  EXPECT_FALSE(job.error().empty());
  EXPECT_TRUE(client().MustLease(LeaseReq({"expiry-dead"})).empty());
  EXPECT_EQ(client().Stats("expiry-dead").dead(), 1u);
}

TEST_F(LeaseE2E, LeaseDurationOfTheRequestOverridesTheJobs) {
  // The job's own lease is 30s (the default); the worker asks for 1s.
  const std::string id = client().MustEnqueue(NewJob("override", "x"));
  v1::LeaseRequest req = LeaseReq({"override"}, 1, 0ms, "short");
  *req.mutable_lease_duration() = Dur(1s);
  auto leases = client().MustLease(req);
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_EQ(Between(leases[0].job().updated_at(), leases[0].deadline()), 1s);
  v1::Lease again = NewClient()->MustLeaseOne("override", 5s, "second");
  EXPECT_EQ(again.job().id(), id);
  EXPECT_EQ(again.job().attempts(), 2u);
}

// ---------------------------------------------------------------------------
// Extend.

TEST_F(ExtendE2E, ExtendPushesTheDeadlineSoTheJobIsNotRedelivered) {
  const std::string id = client().MustEnqueue(ShortLeaseJob("extend", "long-task"));
  v1::Lease a = client().MustLeaseOne("extend", 0ms, "A");
  ASSERT_EQ(a.job().id(), id);

  v1::ExtendRequest ext = v1::ExtendRequest();
  ext.set_job_id(id);
  ext.set_lease_token(a.lease_token());
  *ext.mutable_extend_by() = Dur(4s);
  v1::ExtendResponse resp;
  grpc::Status s = client().Extend(ext, &resp);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_FALSE(resp.cancel_requested());
  EXPECT_GE(Between(a.deadline(), resp.deadline()), 2900ms);
  EXPECT_EQ(Time(client().MustGetJob(id).lease_deadline()), Time(resp.deadline()));

  // Well past the original 1s deadline, still before the extended one: no
  // other worker gets the job.
  auto b = NewClient();
  EXPECT_TRUE(b->MustLease(LeaseReq({"extend"}, 1, 1800ms, "B")).empty());
  EXPECT_GT(std::chrono::system_clock::now(), Time(a.deadline()) + 500ms);
  v1::Job job = client().MustGetJob(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_LEASED);
  EXPECT_EQ(job.attempts(), 1u);

  s = client().Complete(id, a.lease_token(), "done");
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(client().MustGetJob(id).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(client().MustGetJob(id).attempts(), 1u);
}

TEST_F(ExtendE2E, ExtendWithoutExtendByUsesTheJobsLeaseAndRecordsProgress) {
  v1::EnqueueRequest r = NewJob("extend-default", "x");
  *r.mutable_lease_duration() = Dur(90s);
  const std::string id = client().MustEnqueue(r);
  v1::Lease a = client().MustLeaseOne("extend-default");
  ASSERT_EQ(a.job().id(), id);

  v1::ExtendRequest ext;
  ext.set_job_id(id);
  ext.set_lease_token(a.lease_token());
  ext.mutable_progress()->set_fraction(0.5);
  ext.mutable_progress()->set_message("half way");
  auto before = std::chrono::system_clock::now();
  v1::ExtendResponse resp;
  grpc::Status s = client().Extend(ext, &resp);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_FALSE(resp.cancel_requested());
  EXPECT_GE(Time(resp.deadline()), before + 89s);
  EXPECT_LE(Time(resp.deadline()), std::chrono::system_clock::now() + 90s);

  v1::Job job = client().MustGetJob(id);
  EXPECT_EQ(job.progress().fraction(), 0.5);
  EXPECT_EQ(job.progress().message(), "half way");
  EXPECT_TRUE(job.progress().has_updated_at());
  EXPECT_EQ(job.state(), v1::JOB_STATE_LEASED);
}

// ---------------------------------------------------------------------------
// Long poll.

TEST_F(LongPollE2E, WaitingLeaseReturnsSoonAfterAnotherClientEnqueues) {
  auto worker = NewClient();
  auto start = Clock::now();
  auto pending = std::async(std::launch::async, [&] {
    v1::LeaseResponse resp;
    grpc::Status s = worker->Lease(LeaseReq({"lp"}, 1, 10s, "waiter"), &resp);
    return std::make_pair(s, resp);
  });
  // Give the Lease time to reach the broker and wait there (if it were not
  // waiting yet it would find the job at once: the test would still pass).
  EXPECT_EQ(pending.wait_for(300ms), std::future_status::timeout)
      << "Lease with wait=10s on an empty queue returned early";
  auto enqueued_at = Clock::now();
  const std::string id = client().MustEnqueue(NewJob("lp", "wake"));
  ASSERT_EQ(pending.wait_for(8s), std::future_status::ready) << "the waiting Lease did not wake";
  auto [s, resp] = pending.get();
  ASSERT_TRUE(s.ok()) << Show(s);
  ASSERT_EQ(resp.leases_size(), 1);
  EXPECT_EQ(resp.leases(0).job().id(), id);
  EXPECT_LT(Since(enqueued_at), 5s);
  EXPECT_LT(Since(start), 9s) << "returned only when the wait ended";
}

TEST_F(LongPollE2E, LeaseOnEmptyQueueReturnsEmptyWhenTheWaitEnds) {
  auto start = Clock::now();
  v1::LeaseResponse resp;
  grpc::Status s = client().Lease(LeaseReq({"nothing-here"}, 1, 300ms), &resp);
  auto took = Since(start);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(resp.leases_size(), 0);
  EXPECT_GE(took, 280ms);
  EXPECT_LT(took, 5s);

  // wait=0 returns at once.
  start = Clock::now();
  s = client().Lease(LeaseReq({"nothing-here"}), &resp);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(resp.leases_size(), 0);
  EXPECT_LT(Since(start), 1s);
}

TEST_F(LongPollE2E, TwoWaitersEachGetOneJob) {
  auto w1 = NewClient();
  auto w2 = NewClient();
  auto lease_async = [](Client* c, const char* name) {
    return std::async(std::launch::async, [c, name] {
      v1::LeaseResponse resp;
      grpc::Status s = c->Lease(LeaseReq({"two"}, 5, 10s, name), &resp);
      EXPECT_TRUE(s.ok()) << Show(s);
      return resp;
    });
  };
  auto f1 = lease_async(w1.get(), "w1");
  auto f2 = lease_async(w2.get(), "w2");
  EXPECT_EQ(f1.wait_for(300ms), std::future_status::timeout);
  const std::string first = client().MustEnqueue(NewJob("two", "1"));
  // Exactly one waiter gets the first job; the other keeps waiting.
  auto deadline = Clock::now() + 8s;
  while (f1.wait_for(10ms) != std::future_status::ready &&
         f2.wait_for(10ms) != std::future_status::ready && Clock::now() < deadline) {
  }
  bool one_ready = f1.wait_for(0ms) == std::future_status::ready;
  bool two_ready = f2.wait_for(0ms) == std::future_status::ready;
  ASSERT_TRUE(one_ready || two_ready) << "no waiter woke";
  EXPECT_FALSE(one_ready && two_ready) << "both waiters returned for one job";
  auto& done = one_ready ? f1 : f2;
  auto& still = one_ready ? f2 : f1;
  v1::LeaseResponse r = done.get();
  ASSERT_EQ(r.leases_size(), 1);
  EXPECT_EQ(r.leases(0).job().id(), first);

  const std::string second = client().MustEnqueue(NewJob("two", "2"));
  ASSERT_EQ(still.wait_for(8s), std::future_status::ready);
  r = still.get();
  ASSERT_EQ(r.leases_size(), 1);
  EXPECT_EQ(r.leases(0).job().id(), second);
}

TEST_F(LongPollE2E, CancelledLeaseDoesNotSwallowALaterJob) {
  // 1. The client cancels its waiting Lease.
  auto worker = NewClient();
  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(20s));
  v1::LeaseResponse resp;
  auto pending = std::async(std::launch::async, [&] {
    return worker->workers->Lease(&ctx, LeaseReq({"cancel"}, 1, 10s, "quitter"), &resp);
  });
  ASSERT_EQ(pending.wait_for(300ms), std::future_status::timeout);
  ctx.TryCancel();
  ASSERT_EQ(pending.wait_for(5s), std::future_status::ready);
  grpc::Status s = pending.get();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED) << Show(s);

  // 2. A Lease whose client deadline passes before its wait does.
  grpc::ClientContext short_ctx;
  short_ctx.set_deadline(testing::In(300ms));
  s = worker->workers->Lease(&short_ctx, LeaseReq({"cancel"}, 1, 10s, "impatient"), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << Show(s);

  // The broker learns of both asynchronously (RST_STREAM); give it a moment
  // so that this checks withdrawal rather than a race with it.
  std::this_thread::sleep_for(200ms);

  // The job's lease is 30s: had a dead waiter taken it, the next Lease
  // would not see it within its wait.
  const std::string id = client().MustEnqueue(NewJob("cancel", "keep-me"));
  v1::Lease l = NewClient()->MustLeaseOne("cancel", 3s, "survivor");
  EXPECT_EQ(l.job().id(), id);
  EXPECT_EQ(l.job().attempts(), 1u);
  ASSERT_EQ(l.job().history_size(), 1);
  EXPECT_EQ(l.job().history(0).worker_id(), "survivor");
}

}  // namespace
}  // namespace errand::e2e
