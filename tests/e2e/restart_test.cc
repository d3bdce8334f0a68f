// End to end: a clean restart (SIGTERM, then start on the same data
// directory) keeps every job; leases do not survive it; graceful shutdown.

#include <algorithm>
#include <future>
#include <map>
#include <set>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

class RestartE2E : public BrokerTest {};
class ShutdownE2E : public BrokerTest {};

TEST_F(RestartE2E, JobsSurviveRestartAndLeasesEndWithBrokerRestart) {
  // 8 jobs: 2 completed, 2 leased and unfinished, 2 never leased, 1 dead,
  // 1 scheduled far ahead.
  std::map<std::string, std::string> payload_of;
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    v1::EnqueueRequest r = NewJob("persist", "payload-" + std::to_string(i));
    (*r.mutable_headers())["n"] = std::to_string(i);
    ids.push_back(client().MustEnqueue(r));
    payload_of[ids.back()] = r.payload();
  }
  v1::EnqueueRequest dead_req = NewJob("persist-dead", "dead-payload");
  const std::string dead_id = client().MustEnqueue(dead_req);
  v1::EnqueueRequest later_req = NewJob("persist", "later-payload");
  *later_req.mutable_delay() = Dur(1h);
  const std::string later_id = client().MustEnqueue(later_req);
  payload_of[later_id] = "later-payload";

  auto done = client().MustLease(LeaseReq({"persist"}, 2, 0ms, "finisher"));
  ASSERT_EQ(done.size(), 2u);
  for (const auto& l : done) {
    ASSERT_TRUE(client().Complete(l.job().id(), l.lease_token(), "result-" + l.job().id()).ok());
  }
  auto held = client().MustLease(LeaseReq({"persist"}, 2, 0ms, "holder"));
  ASSERT_EQ(held.size(), 2u);
  uint64_t max_token = 0;
  for (const auto& l : held) max_token = std::max(max_token, l.lease_token());
  for (const auto& l : done) max_token = std::max(max_token, l.lease_token());
  v1::Lease dl = client().MustLeaseOne("persist-dead");
  max_token = std::max(max_token, dl.lease_token());
  v1::FailRequest fail;
  fail.set_job_id(dead_id);
  fail.set_lease_token(dl.lease_token());
  fail.set_error("fatal");
  fail.set_non_retryable(true);
  ASSERT_TRUE(client().Fail(fail).ok());
  const uint64_t epoch_before = client().ServerInfo().boot_epoch();

  ASSERT_NO_FATAL_FAILURE(RestartBroker());

  EXPECT_GT(client().ServerInfo().boot_epoch(), epoch_before);
  // Every job is there with its payload and headers.
  for (size_t i = 0; i < ids.size(); ++i) {
    v1::Job job = client().MustGetJob(ids[i]);
    EXPECT_EQ(job.payload(), payload_of[ids[i]]);
    EXPECT_EQ(job.headers().at("n"), std::to_string(i));
    EXPECT_EQ(job.queue(), "persist");
  }
  // Completed jobs stay completed.
  for (const auto& l : done) {
    v1::Job job = client().MustGetJob(l.job().id());
    EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
    EXPECT_EQ(job.result(), "result-" + l.job().id());
    EXPECT_EQ(job.attempts(), 1u);
  }
  // Leased jobs are ready again; their attempt ended with the restart.
  std::set<std::string> expect_ready;
  for (const auto& l : held) {
    v1::Job job = client().MustGetJob(l.job().id());
    EXPECT_EQ(job.state(), v1::JOB_STATE_READY);
    EXPECT_EQ(job.attempts(), 1u);
    EXPECT_FALSE(job.has_lease_deadline());
    ASSERT_EQ(job.history_size(), 1);
    EXPECT_EQ(job.history(0).outcome(), v1::ATTEMPT_OUTCOME_BROKER_RESTART);
    EXPECT_EQ(job.history(0).worker_id(), "holder");
    EXPECT_TRUE(job.history(0).has_ended_at());
    // The old lease's token is dead.
    grpc::Status s = client().Complete(l.job().id(), l.lease_token(), "stale");
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);
    v1::ExtendResponse ext;
    s = client().Extend(l.job().id(), l.lease_token(), &ext);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);
    expect_ready.insert(l.job().id());
  }
  v1::Job dead = client().MustGetJob(dead_id);
  EXPECT_EQ(dead.state(), v1::JOB_STATE_DEAD);
  EXPECT_EQ(dead.error(), "fatal");
  EXPECT_EQ(dead.payload(), "dead-payload");
  v1::Job later = client().MustGetJob(later_id);
  EXPECT_EQ(later.state(), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(later.payload(), "later-payload");

  v1::QueueStats st = client().Stats("persist");
  EXPECT_EQ(st.succeeded(), 2u);
  EXPECT_EQ(st.ready(), 4u);
  EXPECT_EQ(st.leased(), 0u);
  EXPECT_EQ(st.scheduled(), 1u);
  EXPECT_EQ(client().Stats("persist-dead").dead(), 1u);

  // The 2 formerly leased and the 2 never leased jobs are delivered again,
  // under tokens larger than any issued before the restart.
  for (const auto& id : ids) {
    if (client().MustGetJob(id).attempts() == 0) expect_ready.insert(id);
  }
  EXPECT_EQ(expect_ready.size(), 4u);
  auto again = client().MustLease(LeaseReq({"persist"}, 10, 0ms, "after"));
  std::set<std::string> got;
  for (const auto& l : again) {
    got.insert(l.job().id());
    EXPECT_GT(l.lease_token(), max_token);
    EXPECT_EQ(l.job().payload(), payload_of[l.job().id()]);
    const bool was_held = l.job().attempts() == 2;
    EXPECT_EQ(l.job().history_size(), was_held ? 2 : 1);
    grpc::Status s = client().Complete(l.job().id(), l.lease_token(), "after-restart");
    EXPECT_TRUE(s.ok()) << Show(s);
  }
  EXPECT_EQ(got, expect_ready);
  EXPECT_EQ(client().Stats("persist").succeeded(), 6u);
}

TEST_F(RestartE2E, NewJobIdsAfterRestartDoNotCollideAndStillSort) {
  std::string last;
  for (int i = 0; i < 3; ++i) last = client().MustEnqueue(NewJob("ids"));
  ASSERT_NO_FATAL_FAILURE(RestartBroker());
  const std::string next = client().MustEnqueue(NewJob("ids"));
  EXPECT_GT(next, last);
  EXPECT_EQ(client().Stats("ids").ready(), 4u);
}

TEST_F(RestartE2E, RestartTwiceKeepsTokensMonotonic) {
  uint64_t last_token = 0;
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    if (round == 0) client().MustEnqueue(NewJob("mono", "x"));
    v1::Lease l = client().MustLeaseOne("mono", 0ms, "w");
    EXPECT_GT(l.lease_token(), last_token);
    EXPECT_EQ(l.job().attempts(), static_cast<uint32_t>(round + 1));
    last_token = l.lease_token();
    if (round < 2) {
      ASSERT_NO_FATAL_FAILURE(RestartBroker());
    }
  }
}

// ---------------------------------------------------------------------------

TEST_F(ShutdownE2E, WaitingLeaseIsAnsweredUnavailableOnSigtermAndBrokerExitsZero) {
  client_.reset();  // the worker's is the only connection
  auto worker = NewClient();
  auto pending = std::async(std::launch::async, [&] {
    v1::LeaseResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(40s));
    grpc::Status s = worker->workers->Lease(&ctx, LeaseReq({"idle"}, 1, 30s, "waiter"), &resp);
    return std::make_pair(s, Clock::now());
  });
  ASSERT_EQ(pending.wait_for(300ms), std::future_status::timeout);

  const auto sigterm_at = Clock::now();
  auto stopped = std::async(std::launch::async, [&] {
    int code = broker_->Stop(20s);
    return std::make_pair(code, Clock::now());
  });
  ASSERT_EQ(pending.wait_for(10s), std::future_status::ready) << "the waiting Lease got no answer";
  auto [s, answered_at] = pending.get();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << Show(s);
  // Promptly: long before its 30s wait (and the broker's 5s shutdown grace).
  const auto answered_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(answered_at - sigterm_at).count();
  EXPECT_LT(answered_ms, 4000) << "ms from SIGTERM to the Lease's answer";

  // The worker goes away as it would on UNAVAILABLE. (gRPC waits for open
  // client connections until the shutdown grace; a sync client that has no
  // call in flight reads the server's GOAWAY only at its 5s backup poll.)
  worker.reset();
  ASSERT_EQ(stopped.wait_for(15s), std::future_status::ready);
  auto [code, exited_at] = stopped.get();
  EXPECT_EQ(code, 0) << "errand-broker did not exit cleanly on SIGTERM";
  const auto exit_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(exited_at - sigterm_at).count();
  EXPECT_LT(exit_ms, 4000) << "ms from SIGTERM to the exit";
  const std::string log = broker_->Log();
  EXPECT_NE(log.find("shutting down"), std::string::npos) << log;
}

TEST_F(ShutdownE2E, AcknowledgedWorkBeforeSigtermIsKept) {
  const std::string id = client().MustEnqueue(NewJob("kept", "k"));
  v1::Lease l = client().MustLeaseOne("kept");
  ASSERT_TRUE(client().Complete(id, l.lease_token(), "r").ok());
  const std::string id2 = client().MustEnqueue(NewJob("kept", "k2"));
  ASSERT_NO_FATAL_FAILURE(RestartBroker());
  EXPECT_EQ(client().MustGetJob(id).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(client().MustGetJob(id).result(), "r");
  EXPECT_EQ(client().MustGetJob(id2).state(), v1::JOB_STATE_READY);
}

}  // namespace
}  // namespace errand::e2e
