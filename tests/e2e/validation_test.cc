// End to end: bad input gets INVALID_ARGUMENT naming the field, and nothing
// of a rejected request is accepted.

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

class ValidationE2E : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override {
    return {"--max-payload-bytes=1000", "--max-batch=5"};
  }

  // Expects INVALID_ARGUMENT whose message contains every one of `words`.
  void ExpectInvalid(const grpc::Status& s, std::initializer_list<const char*> words) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
    for (const char* w : words) {
      EXPECT_NE(s.error_message().find(w), std::string::npos)
          << "message \"" << s.error_message() << "\" does not mention \"" << w << "\"";
    }
  }

  grpc::Status Enqueue(const v1::EnqueueRequest& r) {
    v1::EnqueueResponse resp;
    grpc::Status s = client().Enqueue(r, &resp);
    if (!s.ok()) {
      EXPECT_EQ(resp.job_id(), "");
    }
    return s;
  }

  grpc::Status Lease(const v1::LeaseRequest& r) {
    v1::LeaseResponse resp;
    return client().Lease(r, &resp);
  }
};

TEST_F(ValidationE2E, BadQueueNamesAreRejected) {
  ExpectInvalid(Enqueue(NewJob("")), {"queue"});
  ExpectInvalid(Enqueue(NewJob("has space")), {"queue", "has space"});
  ExpectInvalid(Enqueue(NewJob("tab\there")), {"queue"});
  ExpectInvalid(Enqueue(NewJob("caf\xc3\xa9")), {"queue"});
  ExpectInvalid(Enqueue(NewJob(std::string(129, 'q'))), {"queue", "128"});
  // The limits themselves are fine.
  EXPECT_TRUE(Enqueue(NewJob(std::string(128, 'q'))).ok());
  EXPECT_TRUE(Enqueue(NewJob("A-z_0.9:/x")).ok());
}

TEST_F(ValidationE2E, PayloadOverTheLimitIsRejectedAndTheLimitIsAccepted) {
  ExpectInvalid(Enqueue(NewJob("pl", std::string(1001, 'x'))), {"payload", "1000"});
  EXPECT_EQ(TotalJobs(client().Stats("pl")), 0u);
  v1::EnqueueResponse resp;
  grpc::Status s = client().Enqueue(NewJob("pl", std::string(1000, 'x')), &resp);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(client().MustGetJob(resp.job_id()).payload(), std::string(1000, 'x'));
}

TEST_F(ValidationE2E, BadDurationsAndCountsNameTheirField) {
  v1::EnqueueRequest r = NewJob("v");
  r.mutable_delay()->set_seconds(-1);
  ExpectInvalid(Enqueue(r), {"delay"});

  r = NewJob("v");
  r.mutable_delay()->set_seconds(366LL * 24 * 3600);
  ExpectInvalid(Enqueue(r), {"delay"});

  r = NewJob("v");
  *r.mutable_lease_duration() = Dur(25h);
  ExpectInvalid(Enqueue(r), {"lease_duration"});

  r = NewJob("v");
  *r.mutable_lease_duration() = Dur(500ms);
  ExpectInvalid(Enqueue(r), {"lease_duration"});

  r = NewJob("v");
  r.set_max_attempts(1001);
  ExpectInvalid(Enqueue(r), {"max_attempts", "1000"});

  r = NewJob("v");
  *r.mutable_delay() = Dur(1s);
  *r.mutable_run_at() = Ts(std::chrono::system_clock::now() + 1s);
  ExpectInvalid(Enqueue(r), {"run_at", "delay"});

  r = NewJob("v");
  *r.mutable_retry()->mutable_initial_backoff() = Dur(-1s);
  ExpectInvalid(Enqueue(r), {"retry.initial_backoff"});

  r = NewJob("v");
  r.mutable_retry()->set_jitter(2);
  ExpectInvalid(Enqueue(r), {"retry.jitter"});

  r = NewJob("v");
  r.set_durability(static_cast<v1::Durability>(42));
  ExpectInvalid(Enqueue(r), {"durability"});

  // Limits that are fine.
  r = NewJob("v");
  *r.mutable_lease_duration() = Dur(24h);
  r.set_max_attempts(1000);
  EXPECT_TRUE(Enqueue(r).ok());
  v1::QueueStats st = client().Stats("v");
  EXPECT_EQ(TotalJobs(st), 1u) << "a rejected enqueue left a job behind";
}

TEST_F(ValidationE2E, BadLeaseRequestsNameTheirField) {
  ExpectInvalid(Lease(LeaseReq({})), {"queues"});
  ExpectInvalid(Lease(LeaseReq({"ok", "not ok"})), {"queues[1]"});
  ExpectInvalid(Lease(LeaseReq({"q"}, 1001)), {"max_jobs", "1000"});
  v1::LeaseRequest r = LeaseReq({"q"});
  *r.mutable_wait() = Dur(6min);
  ExpectInvalid(Lease(r), {"wait"});
  r = LeaseReq({"q"});
  r.mutable_wait()->set_seconds(-1);
  ExpectInvalid(Lease(r), {"wait"});
  r = LeaseReq({"q"});
  *r.mutable_lease_duration() = Dur(25h);
  ExpectInvalid(Lease(r), {"lease_duration"});
}

TEST_F(ValidationE2E, BatchLimitsAreEnforced) {
  v1::EnqueueBatchRequest batch;
  v1::EnqueueBatchResponse resp;
  ExpectInvalid(client().EnqueueBatch(batch, &resp), {"jobs"});
  for (int i = 0; i < 6; ++i) *batch.add_jobs() = NewJob("b");
  ExpectInvalid(client().EnqueueBatch(batch, &resp), {"jobs", "5"});
  EXPECT_EQ(TotalJobs(client().Stats("b")), 0u);

  // An oversized payload inside a batch names the job's index.
  batch.mutable_jobs()->RemoveLast();
  batch.mutable_jobs(3)->set_payload(std::string(1001, 'x'));
  ExpectInvalid(client().EnqueueBatch(batch, &resp), {"jobs[3].payload", "1000"});
  EXPECT_EQ(TotalJobs(client().Stats("b")), 0u);

  batch.mutable_jobs(3)->set_payload("fine");
  grpc::Status s = client().EnqueueBatch(batch, &resp);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(resp.results_size(), 5);
  EXPECT_EQ(client().Stats("b").ready(), 5u);
}

TEST_F(ValidationE2E, BadOutcomeRequestsNameTheirField) {
  const std::string id = client().MustEnqueue(NewJob("o"));
  v1::Lease lease = client().MustLeaseOne("o");
  ASSERT_EQ(lease.job().id(), id);

  v1::ExtendRequest ext;
  ext.set_job_id(id);
  ext.set_lease_token(lease.lease_token());
  *ext.mutable_extend_by() = Dur(25h);
  v1::ExtendResponse ext_resp;
  ExpectInvalid(client().Extend(ext, &ext_resp), {"extend_by"});
  ext.clear_extend_by();
  ext.mutable_progress()->set_fraction(1.5);
  ExpectInvalid(client().Extend(ext, &ext_resp), {"progress.fraction"});

  v1::FailRequest fail;
  fail.set_job_id(id);
  fail.set_lease_token(lease.lease_token());
  fail.mutable_retry_after()->set_seconds(-3);
  ExpectInvalid(client().Fail(fail), {"retry_after"});

  // None of it touched the lease.
  v1::Job job = client().MustGetJob(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_LEASED);
  EXPECT_FALSE(job.has_progress());
  EXPECT_TRUE(client().Complete(id, lease.lease_token(), "ok").ok());
}

TEST_F(ValidationE2E, GetQueueStatsRejectsABadQueueName) {
  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(10s));
  v1::GetQueueStatsRequest req;
  req.set_queue("no good");
  v1::GetQueueStatsResponse resp;
  ExpectInvalid(client().admin->GetQueueStats(&ctx, req, &resp), {"queue"});
}

}  // namespace
}  // namespace errand::e2e
