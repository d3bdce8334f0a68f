// End to end: Fail, retries with backoff, retry_after, and DEAD jobs.

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

class RetryE2E : public BrokerTest {};

v1::EnqueueRequest RetryJob(const std::string& queue, uint32_t max_attempts,
                            std::chrono::milliseconds initial_backoff, double multiplier = 0) {
  v1::EnqueueRequest r = NewJob(queue, "payload-" + queue);
  r.set_max_attempts(max_attempts);
  *r.mutable_retry()->mutable_initial_backoff() = Dur(initial_backoff);
  r.mutable_retry()->set_jitter(1e-9);  // practically none
  if (multiplier > 0) r.mutable_retry()->set_multiplier(multiplier);
  return r;
}

// The wait a retry was scheduled with: run_at - the time of the failure.
std::chrono::microseconds Backoff(const v1::Job& job) {
  return Between(job.updated_at(), job.run_at());
}

TEST_F(RetryE2E, FailedJobIsRetriedAfterBackoffThenDeadWhenAttemptsRunOut) {
  const std::string id = client().MustEnqueue(RetryJob("retry", 2, 100ms));

  v1::Lease first = client().MustLeaseOne("retry", 0ms, "w1");
  ASSERT_EQ(first.job().id(), id);
  v1::Job failed;
  grpc::Status s = client().Fail(id, first.lease_token(), "boom-1", &failed);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(failed.state(), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(failed.error(), "boom-1");
  EXPECT_EQ(failed.attempts(), 1u);
  EXPECT_GE(Backoff(failed), 99900us);
  EXPECT_LE(Backoff(failed), 100ms);
  EXPECT_EQ(client().MustGetJob(id).state(), v1::JOB_STATE_SCHEDULED);

  // Leasable again once the backoff passed.
  v1::Lease second = client().MustLeaseOne("retry", 5s, "w2");
  ASSERT_EQ(second.job().id(), id);
  EXPECT_GE(std::chrono::system_clock::now(), Time(failed.run_at()));
  EXPECT_EQ(second.job().attempts(), 2u);
  EXPECT_GT(second.lease_token(), first.lease_token());
  ASSERT_EQ(second.job().history_size(), 2);
  EXPECT_EQ(second.job().history(0).outcome(), v1::ATTEMPT_OUTCOME_FAILED);
  EXPECT_EQ(second.job().history(0).error(), "boom-1");

  s = client().Fail(id, second.lease_token(), "boom-2", &failed);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(failed.state(), v1::JOB_STATE_DEAD);

  v1::Job dead = client().MustGetJob(id);
  EXPECT_EQ(dead.state(), v1::JOB_STATE_DEAD);
  EXPECT_EQ(dead.error(), "boom-2");
  EXPECT_EQ(dead.attempts(), 2u);
  EXPECT_TRUE(dead.has_finished_at());
  EXPECT_EQ(dead.payload(), "payload-retry");
  ASSERT_EQ(dead.history_size(), 2);
  EXPECT_EQ(dead.history(0).number(), 1u);
  EXPECT_EQ(dead.history(0).worker_id(), "w1");
  EXPECT_EQ(dead.history(0).outcome(), v1::ATTEMPT_OUTCOME_FAILED);
  EXPECT_EQ(dead.history(0).error(), "boom-1");
  EXPECT_EQ(dead.history(1).number(), 2u);
  EXPECT_EQ(dead.history(1).worker_id(), "w2");
  EXPECT_EQ(dead.history(1).outcome(), v1::ATTEMPT_OUTCOME_FAILED);
  EXPECT_EQ(dead.history(1).error(), "boom-2");

  // Dead is terminal: not delivered, not failed again.
  EXPECT_TRUE(client().MustLease(LeaseReq({"retry"}, 1, 300ms)).empty());
  s = client().Fail(id, second.lease_token(), "boom-3");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);
  v1::QueueStats st = client().Stats("retry");
  EXPECT_EQ(st.dead(), 1u);
  EXPECT_EQ(st.scheduled() + st.ready() + st.leased(), 0u);
  EXPECT_EQ(st.total_dead(), 1u);
}

TEST_F(RetryE2E, NonRetryableFailureIsDeadAtOnce) {
  const std::string id = client().MustEnqueue(RetryJob("fatal", 5, 100ms));
  v1::Lease lease = client().MustLeaseOne("fatal");
  ASSERT_EQ(lease.job().id(), id);
  v1::FailRequest req;
  req.set_job_id(id);
  req.set_lease_token(lease.lease_token());
  req.set_error("bad input");
  req.set_non_retryable(true);
  v1::Job job;
  grpc::Status s = client().Fail(req, &job);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(job.state(), v1::JOB_STATE_DEAD);
  job = client().MustGetJob(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_DEAD);
  EXPECT_EQ(job.attempts(), 1u);
  EXPECT_EQ(job.error(), "bad input");
  ASSERT_EQ(job.history_size(), 1);
  EXPECT_EQ(job.history(0).outcome(), v1::ATTEMPT_OUTCOME_FAILED);
  EXPECT_TRUE(client().MustLease(LeaseReq({"fatal"}, 1, 300ms)).empty());
}

TEST_F(RetryE2E, RetryAfterOverridesTheBackoff) {
  // The job's own backoff would be 100ms; the worker asks for 1.2s.
  const std::string id = client().MustEnqueue(RetryJob("later", 3, 100ms));
  v1::Lease lease = client().MustLeaseOne("later");
  ASSERT_EQ(lease.job().id(), id);
  v1::FailRequest req;
  req.set_job_id(id);
  req.set_lease_token(lease.lease_token());
  req.set_error("rate limited");
  *req.mutable_retry_after() = Dur(1200ms);
  v1::Job job;
  grpc::Status s = client().Fail(req, &job);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(job.state(), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(Backoff(job), 1200ms);

  // Not before retry_after (the job's own 100ms backoff would have passed)...
  EXPECT_TRUE(client().MustLease(LeaseReq({"later"}, 1, 500ms)).empty());
  // ...but after it.
  v1::Lease again = client().MustLeaseOne("later", 5s);
  EXPECT_EQ(again.job().id(), id);
  EXPECT_GE(std::chrono::system_clock::now(), Time(job.run_at()));
  EXPECT_EQ(again.job().attempts(), 2u);
}

TEST_F(RetryE2E, BackoffGrowsByTheMultiplier) {
  const std::string id = client().MustEnqueue(RetryJob("grow", 4, 100ms, 3.0));
  std::vector<std::chrono::microseconds> waits;
  for (int i = 0; i < 3; ++i) {
    v1::Lease lease = client().MustLeaseOne("grow", 5s);
    ASSERT_EQ(lease.job().id(), id);
    v1::Job job;
    ASSERT_TRUE(client().Fail(id, lease.lease_token(), "again", &job).ok());
    waits.push_back(Backoff(job));
  }
  ASSERT_EQ(waits.size(), 3u);
  EXPECT_NEAR(waits[0].count(), 100000, 10);
  EXPECT_NEAR(waits[1].count(), 300000, 10);
  EXPECT_EQ(client().MustGetJob(id).state(), v1::JOB_STATE_SCHEDULED);
  EXPECT_NEAR(waits[2].count(), 900000, 10);
}

TEST_F(RetryE2E, DefaultBackoffIsAboutOneSecondWithJitter) {
  const std::string id = client().MustEnqueue(NewJob("default-backoff"));
  v1::Lease lease = client().MustLeaseOne("default-backoff");
  v1::Job job;
  ASSERT_TRUE(client().Fail(id, lease.lease_token(), "x", &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(job.max_attempts(), 5u);  // --default-max-attempts
  // 1s * (1 - 0.5 * U[0,1)).
  EXPECT_GT(Backoff(job), 500ms);
  EXPECT_LE(Backoff(job), 1s);
}

}  // namespace
}  // namespace errand::e2e
