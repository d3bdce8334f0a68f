// End to end: delivery order (priority, then FIFO) and delayed jobs.

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

class OrderingE2E : public BrokerTest {};
class DelayE2E : public BrokerTest {};

TEST_F(OrderingE2E, HigherPriorityFirstFifoWithinPriority) {
  struct Spec {
    const char* name;
    int priority;
  };
  const Spec specs[] = {{"a0", 0}, {"b5", 5}, {"c0", 0},  {"d10", 10},
                        {"e5", 5}, {"f-3", -3}, {"g10", 10}, {"h0", 0}};
  for (const Spec& sp : specs) {
    v1::EnqueueRequest r = NewJob("prio", sp.name);
    r.set_priority(sp.priority);
    client().MustEnqueue(r);
  }
  const std::vector<std::string> want = {"d10", "g10", "b5", "e5", "a0", "c0", "h0", "f-3"};
  // One at a time...
  std::vector<std::string> got;
  for (size_t i = 0; i < 4; ++i) got.push_back(client().MustLeaseOne("prio").job().payload());
  // ...and the rest in one call: the order is the same.
  for (const auto& l : client().MustLease(LeaseReq({"prio"}, 100))) {
    got.push_back(l.job().payload());
  }
  EXPECT_EQ(got, want);
}

TEST_F(OrderingE2E, LeaseFromSeveralQueuesTakesHighestPriorityAcrossThem) {
  v1::EnqueueRequest r = NewJob("low-q", "low-1");
  client().MustEnqueue(r);
  r = NewJob("high-q", "high");
  r.set_priority(7);
  client().MustEnqueue(r);
  r = NewJob("low-q", "low-2");
  client().MustEnqueue(r);
  r = NewJob("other-q", "not-asked-for");
  r.set_priority(100);
  client().MustEnqueue(r);

  auto leases = client().MustLease(LeaseReq({"low-q", "high-q"}, 10));
  std::vector<std::string> got;
  for (const auto& l : leases) got.push_back(l.job().payload());
  EXPECT_EQ(got, (std::vector<std::string>{"high", "low-1", "low-2"}));
  EXPECT_EQ(client().Stats("other-q").ready(), 1u);
}

TEST_F(OrderingE2E, LeaseReturnsWhatIsReadyWithoutWaitingForMaxJobs) {
  for (int i = 0; i < 3; ++i) client().MustEnqueue(NewJob("partial"));
  auto start = Clock::now();
  auto leases = client().MustLease(LeaseReq({"partial"}, 10, 5s));
  EXPECT_EQ(leases.size(), 3u);
  EXPECT_LT(Since(start), 4s) << "a Lease with ready jobs must not wait for max_jobs";
}

TEST_F(DelayE2E, DelayedJobIsScheduledThenLeasableOnlyAfterItsTime) {
  // x: delay; y: run_at; z: a shorter delay whose promotion to READY is
  // observed once x has become leasable.
  v1::EnqueueRequest x = NewJob("delay-x", "x");
  *x.mutable_delay() = Dur(800ms);
  v1::EnqueueResponse xr;
  ASSERT_TRUE(client().Enqueue(x, &xr).ok());
  v1::EnqueueRequest y = NewJob("delay-y", "y");
  *y.mutable_run_at() = Ts(std::chrono::system_clock::now() + 800ms);
  const std::string y_id = client().MustEnqueue(y);
  v1::EnqueueRequest z = NewJob("delay-z", "z");
  *z.mutable_delay() = Dur(300ms);
  const std::string z_id = client().MustEnqueue(z);

  v1::Job xj = client().MustGetJob(xr.job_id());
  EXPECT_EQ(xj.state(), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(Between(xj.created_at(), xj.run_at()), 800ms);
  EXPECT_EQ(client().MustGetJob(y_id).state(), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(client().MustGetJob(z_id).state(), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(client().Stats("delay-x").scheduled(), 1u);
  EXPECT_EQ(client().Stats("delay-x").ready(), 0u);

  // Not leasable before its time.
  EXPECT_TRUE(client().MustLease(LeaseReq({"delay-x", "delay-y"}, 10)).empty());

  // A long poll gets it once its time has come, not before.
  v1::Lease lx = client().MustLeaseOne("delay-x", 5s);
  EXPECT_EQ(lx.job().id(), xr.job_id());
  EXPECT_GE(std::chrono::system_clock::now(), Time(xj.run_at()));
  v1::Lease ly = client().MustLeaseOne("delay-y", 5s);
  EXPECT_EQ(ly.job().id(), y_id);
  EXPECT_GE(std::chrono::system_clock::now(), Time(y.run_at()));

  // z's time passed while we waited for x (on a slow sanitizer build the
  // enqueues may have taken long enough that it passes only now): once it
  // has, z is READY, promoted by the broker's timer within moments.
  v1::Job zj = client().MustGetJob(z_id);
  std::this_thread::sleep_until(Time(zj.run_at()));
  for (auto start = Clock::now();
       zj.state() != v1::JOB_STATE_READY && Since(start) < 2s;
       zj = client().MustGetJob(z_id)) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(zj.state(), v1::JOB_STATE_READY);
  EXPECT_EQ(client().Stats("delay-z").ready(), 1u);
  EXPECT_EQ(client().Stats("delay-z").scheduled(), 0u);
}

TEST_F(DelayE2E, RunAtInThePastOrZeroDelayIsReadyAtOnce) {
  v1::EnqueueRequest past = NewJob("past", "p");
  *past.mutable_run_at() = Ts(std::chrono::system_clock::now() - 1h);
  const std::string past_id = client().MustEnqueue(past);
  v1::EnqueueRequest zero = NewJob("past", "z");
  *zero.mutable_delay() = Dur(0ms);
  const std::string zero_id = client().MustEnqueue(zero);
  EXPECT_EQ(client().MustGetJob(past_id).state(), v1::JOB_STATE_READY);
  EXPECT_EQ(client().MustGetJob(zero_id).state(), v1::JOB_STATE_READY);
  EXPECT_EQ(client().MustLease(LeaseReq({"past"}, 10)).size(), 2u);
}

TEST_F(DelayE2E, DelayedJobDoesNotOvertakeReadyJobsButIsOrderedByPriorityOnceReady) {
  // A delayed high-priority job is not delivered while it waits (the delay
  // must outlast the three enqueues and the lease below, slower under a
  // sanitizer)...
  const auto delay = testing::Scaled(400ms);
  v1::EnqueueRequest hi = NewJob("mix", "hi-delayed");
  hi.set_priority(9);
  *hi.mutable_delay() = Dur(delay);
  client().MustEnqueue(hi);
  // A probe with the same delay, enqueued later, is due no earlier than hi.
  v1::EnqueueRequest probe = NewJob("mix-probe", "probe");
  *probe.mutable_delay() = Dur(delay);
  client().MustEnqueue(probe);
  client().MustEnqueue(NewJob("mix", "lo-1"));
  client().MustEnqueue(NewJob("mix", "lo-2"));
  EXPECT_EQ(client().MustLeaseOne("mix").job().payload(), "lo-1");
  // ...and goes first once ready.
  EXPECT_EQ(client().MustLeaseOne("mix-probe", 5s).job().payload(), "probe");
  EXPECT_EQ(client().MustLeaseOne("mix").job().payload(), "hi-delayed");
  EXPECT_EQ(client().MustLeaseOne("mix").job().payload(), "lo-2");
}

}  // namespace
}  // namespace errand::e2e
