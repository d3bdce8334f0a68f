// End to end: a job's round trip (Enqueue, Lease, Complete, GetJob), batch
// atomicity, and what an enqueue acknowledgement reports.

#include <set>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

class JobsE2E : public BrokerTest {};

bool IsJobId(const std::string& id) {
  if (id.size() != 16) return false;
  for (char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

TEST_F(JobsE2E, EnqueueLeaseCompleteRoundTripEndsSucceededWithResult) {
  auto before = std::chrono::system_clock::now();
  v1::EnqueueRequest req = NewJob("emails", "hello");
  (*req.mutable_headers())["trace"] = "abc";
  req.set_priority(3);
  v1::EnqueueResponse enq;
  grpc::Status s = client().Enqueue(req, &enq);
  ASSERT_TRUE(s.ok()) << Show(s);
  const std::string id = enq.job_id();
  EXPECT_TRUE(IsJobId(id)) << id;
  EXPECT_FALSE(enq.duplicate());

  v1::Job job = client().MustGetJob(id);
  EXPECT_EQ(job.id(), id);
  EXPECT_EQ(job.queue(), "emails");
  EXPECT_EQ(job.state(), v1::JOB_STATE_READY);
  EXPECT_EQ(job.payload(), "hello");
  EXPECT_EQ(job.attempts(), 0u);
  EXPECT_EQ(job.history_size(), 0);
  EXPECT_GE(Time(job.created_at()), before - 1s);

  v1::Lease lease = client().MustLeaseOne("emails", 0ms, "worker-1");
  ASSERT_EQ(lease.job().id(), id);
  EXPECT_NE(lease.lease_token(), 0u);
  EXPECT_EQ(lease.job().state(), v1::JOB_STATE_LEASED);
  EXPECT_EQ(lease.job().attempts(), 1u);
  EXPECT_EQ(lease.job().payload(), "hello");
  EXPECT_EQ(lease.job().headers().at("trace"), "abc");
  EXPECT_EQ(lease.job().priority(), 3);
  EXPECT_GT(Time(lease.deadline()), std::chrono::system_clock::now());
  ASSERT_EQ(lease.job().history_size(), 1);
  EXPECT_EQ(lease.job().history(0).number(), 1u);
  EXPECT_EQ(lease.job().history(0).worker_id(), "worker-1");
  EXPECT_EQ(lease.job().history(0).outcome(), v1::ATTEMPT_OUTCOME_RUNNING);

  job = client().MustGetJob(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_LEASED);
  EXPECT_TRUE(job.has_lease_deadline());

  v1::Job completed;
  s = client().Complete(id, lease.lease_token(), "world", &completed);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(completed.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(completed.result(), "world");

  job = client().MustGetJob(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job.result(), "world");
  EXPECT_EQ(job.payload(), "hello");
  EXPECT_EQ(job.headers().at("trace"), "abc");
  EXPECT_EQ(job.attempts(), 1u);
  EXPECT_TRUE(job.has_finished_at());
  ASSERT_EQ(job.history_size(), 1);
  EXPECT_EQ(job.history(0).outcome(), v1::ATTEMPT_OUTCOME_SUCCEEDED);
  EXPECT_EQ(job.history(0).worker_id(), "worker-1");
  EXPECT_TRUE(job.history(0).has_ended_at());

  // Done means done: it is not delivered again.
  EXPECT_TRUE(client().MustLease(LeaseReq({"emails"})).empty());
  v1::QueueStats st = client().Stats("emails");
  EXPECT_EQ(st.succeeded(), 1u);
  EXPECT_EQ(st.ready(), 0u);
  EXPECT_EQ(st.leased(), 0u);
}

TEST_F(JobsE2E, EnqueueReportsSyncDurabilityByDefaultAndIncreasingCommitSeq) {
  uint64_t last_seq = 0;
  std::string last_id;
  for (int i = 0; i < 5; ++i) {
    v1::EnqueueResponse resp;
    grpc::Status s = client().Enqueue(NewJob("seq", "p" + std::to_string(i)), &resp);
    ASSERT_TRUE(s.ok()) << Show(s);
    EXPECT_EQ(resp.durability(), v1::DURABILITY_SYNC);
    EXPECT_GT(resp.commit_seq(), last_seq);
    // Ids sort by creation.
    EXPECT_GT(resp.job_id(), last_id);
    last_seq = resp.commit_seq();
    last_id = resp.job_id();
  }
  // An explicit DURABILITY_SYNC request is synced as well.
  v1::EnqueueRequest req = NewJob("seq");
  req.set_durability(v1::DURABILITY_SYNC);
  v1::EnqueueResponse resp;
  ASSERT_TRUE(client().Enqueue(req, &resp).ok());
  EXPECT_EQ(resp.durability(), v1::DURABILITY_SYNC);
  EXPECT_GT(resp.commit_seq(), last_seq);
}

TEST_F(JobsE2E, AsyncRequestOnSyncBrokerReportsAsync) {
  // Nothing else is in flight, so no other write's fsync covers this one.
  v1::EnqueueRequest req = NewJob("async");
  req.set_durability(v1::DURABILITY_ASYNC);
  v1::EnqueueResponse resp;
  grpc::Status s = client().Enqueue(req, &resp);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(resp.durability(), v1::DURABILITY_ASYNC);
  EXPECT_EQ(client().MustGetJob(resp.job_id()).state(), v1::JOB_STATE_READY);
}

class AsyncBrokerE2E : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override {
    return {"--commit=async", "--sync-interval=50"};
  }
};

TEST_F(AsyncBrokerE2E, DefaultIsAsyncAndSyncRequestIsHonoured) {
  v1::EnqueueResponse resp;
  ASSERT_TRUE(client().Enqueue(NewJob("q"), &resp).ok());
  EXPECT_EQ(resp.durability(), v1::DURABILITY_ASYNC);
  uint64_t seq = resp.commit_seq();

  v1::EnqueueRequest req = NewJob("q");
  req.set_durability(v1::DURABILITY_SYNC);
  ASSERT_TRUE(client().Enqueue(req, &resp).ok());
  EXPECT_EQ(resp.durability(), v1::DURABILITY_SYNC);
  EXPECT_GT(resp.commit_seq(), seq);

  EXPECT_EQ(client().ServerInfo().commit_mode(), "async");
}

TEST_F(JobsE2E, EnqueueBatchCreatesAllJobsInOrderWithOneCommit) {
  v1::EnqueueBatchRequest batch;
  for (int i = 0; i < 3; ++i) *batch.add_jobs() = NewJob("batch", "b" + std::to_string(i));
  v1::EnqueueBatchResponse resp;
  grpc::Status s = client().EnqueueBatch(batch, &resp);
  ASSERT_TRUE(s.ok()) << Show(s);
  ASSERT_EQ(resp.results_size(), 3);
  EXPECT_EQ(resp.durability(), v1::DURABILITY_SYNC);
  EXPECT_GT(resp.commit_seq(), 0u);
  std::set<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    const auto& r = resp.results(i);
    EXPECT_TRUE(IsJobId(r.job_id()));
    EXPECT_EQ(r.commit_seq(), resp.commit_seq());
    if (i > 0) {
      EXPECT_GT(r.job_id(), resp.results(i - 1).job_id());
    }
    ids.insert(r.job_id());
    EXPECT_EQ(client().MustGetJob(r.job_id()).payload(), "b" + std::to_string(i));
  }
  EXPECT_EQ(ids.size(), 3u);
  EXPECT_EQ(client().Stats("batch").ready(), 3u);

  // Delivered FIFO in batch order.
  auto leases = client().MustLease(LeaseReq({"batch"}, 10));
  ASSERT_EQ(leases.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(leases[i].job().id(), resp.results(i).job_id());
}

TEST_F(JobsE2E, EnqueueBatchWithOneInvalidJobCreatesNone) {
  v1::EnqueueBatchRequest batch;
  *batch.add_jobs() = NewJob("atomic", "ok-0");
  *batch.add_jobs() = NewJob("atomic", "ok-1");
  *batch.add_jobs() = NewJob("atomic", "bad");
  batch.mutable_jobs(2)->mutable_delay()->set_seconds(-5);
  *batch.add_jobs() = NewJob("atomic", "ok-3");
  v1::EnqueueBatchResponse resp;
  grpc::Status s = client().EnqueueBatch(batch, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
  EXPECT_NE(s.error_message().find("jobs[2].delay"), std::string::npos) << s.error_message();
  EXPECT_EQ(resp.results_size(), 0);

  // A bad queue name in the middle of the batch names its index too.
  v1::EnqueueBatchRequest batch2;
  *batch2.add_jobs() = NewJob("atomic");
  *batch2.add_jobs() = NewJob("not a queue");
  s = client().EnqueueBatch(batch2, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
  EXPECT_NE(s.error_message().find("jobs[1].queue"), std::string::npos) << s.error_message();

  v1::QueueStats st = client().Stats("atomic");
  EXPECT_EQ(TotalJobs(st), 0u);
  EXPECT_EQ(st.total_enqueued(), 0u);
  EXPECT_TRUE(client().MustLease(LeaseReq({"atomic"}, 10)).empty());
}

TEST_F(JobsE2E, GetQueueStatsCountsEveryState) {
  for (int i = 0; i < 4; ++i) client().MustEnqueue(NewJob("counts"));
  v1::EnqueueRequest later = NewJob("counts");
  *later.mutable_delay() = Dur(1h);
  client().MustEnqueue(later);
  auto leases = client().MustLease(LeaseReq({"counts"}, 2));
  ASSERT_EQ(leases.size(), 2u);
  ASSERT_TRUE(client().Complete(leases[0].job().id(), leases[0].lease_token(), "").ok());

  v1::QueueStats st = client().Stats("counts");
  EXPECT_EQ(st.queue(), "counts");
  EXPECT_EQ(st.scheduled(), 1u);
  EXPECT_EQ(st.ready(), 2u);
  EXPECT_EQ(st.leased(), 1u);
  EXPECT_EQ(st.succeeded(), 1u);
  EXPECT_EQ(st.dead(), 0u);
  EXPECT_EQ(st.total_enqueued(), 5u);
  EXPECT_EQ(st.total_succeeded(), 1u);

  // ListQueues shows the same queue.
  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(10s));
  v1::ListQueuesResponse list;
  ASSERT_TRUE(client().admin->ListQueues(&ctx, v1::ListQueuesRequest(), &list).ok());
  bool found = false;
  for (const auto& q : list.queues()) {
    if (q.queue() == "counts") {
      found = true;
      EXPECT_EQ(q.ready(), 2u);
    }
  }
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace errand::e2e
