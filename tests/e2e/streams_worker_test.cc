// End to end: Workers.Connect, the worker stream. Credits bound deliveries;
// complete/fail/extend are acknowledged with their request_id (a stale token
// gets error_code FAILED_PRECONDITION, the stream goes on); a cancel of a held
// job is pushed; a dropped stream's jobs come back after --worker-grace, not
// after the lease; the first message must be hello.

#include <functional>
#include <set>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

constexpr int kFailedPrecondition = 9;
constexpr int kNotFound = 5;

// A Connect stream: the test thread writes; a reader thread queues what the
// broker sends.
class WorkerConn {
 public:
  explicit WorkerConn(v1::Workers::Stub* stub) {
    ctx_.set_deadline(testing::In(60s));
    rw_ = stub->Connect(&ctx_);
    thread_ = std::thread([this] {
      v1::ConnectResponse m;
      while (rw_->Read(&m)) q_.Push(m);
      q_.Close(grpc::Status::OK);  // the status comes from Finish, in WaitEnd
    });
  }
  ~WorkerConn() {
    ctx_.TryCancel();
    thread_.join();
    if (!finished_) rw_->Finish();
  }

  bool Send(const v1::ConnectRequest& r) { return rw_->Write(r); }
  bool Hello(const std::vector<std::string>& queues, uint32_t credits,
             std::chrono::milliseconds lease = 0ms, const std::string& worker_id = "",
             bool packed_acks = false) {
    v1::ConnectRequest r;
    auto* h = r.mutable_hello();
    for (const auto& q : queues) h->add_queues(q);
    h->set_credits(credits);
    h->set_worker_id(worker_id);
    h->set_packed_acks(packed_acks);
    if (lease.count() > 0) *h->mutable_lease_duration() = Dur(lease);
    return Send(r);
  }
  bool Credits(uint32_t n) {
    v1::ConnectRequest r;
    r.set_credits(n);
    return Send(r);
  }
  bool Complete(uint64_t rid, const std::string& id, uint64_t token, const std::string& result) {
    v1::ConnectRequest r;
    r.set_request_id(rid);
    r.mutable_complete()->set_job_id(id);
    r.mutable_complete()->set_lease_token(token);
    r.mutable_complete()->set_result(result);
    return Send(r);
  }
  // A complete of `lease` that grants `more_credits` in the same message.
  bool CompleteAndGrant(uint64_t rid, const v1::Lease& lease, uint32_t more_credits) {
    v1::ConnectRequest r;
    r.set_request_id(rid);
    r.mutable_complete()->set_job_id(lease.job().id());
    r.mutable_complete()->set_lease_token(lease.lease_token());
    r.set_more_credits(more_credits);
    return Send(r);
  }
  bool Fail(uint64_t rid, const std::string& id, uint64_t token, const std::string& error,
            std::chrono::milliseconds retry_after = 0ms) {
    v1::ConnectRequest r;
    r.set_request_id(rid);
    r.mutable_fail()->set_job_id(id);
    r.mutable_fail()->set_lease_token(token);
    r.mutable_fail()->set_error(error);
    if (retry_after.count() > 0) *r.mutable_fail()->mutable_retry_after() = Dur(retry_after);
    return Send(r);
  }
  bool Extend(uint64_t rid, const std::string& id, uint64_t token,
              std::optional<double> fraction = std::nullopt) {
    v1::ConnectRequest r;
    r.set_request_id(rid);
    r.mutable_extend()->set_job_id(id);
    r.mutable_extend()->set_lease_token(token);
    *r.mutable_extend()->mutable_extend_by() = Dur(30s);
    if (fraction) r.mutable_extend()->mutable_progress()->set_fraction(*fraction);
    return Send(r);
  }

  std::optional<v1::ConnectResponse> Next(std::chrono::milliseconds timeout = 5s) {
    return q_.Next(timeout);
  }
  // The next message, which must be a delivery.
  v1::Lease NextDelivery(std::chrono::milliseconds timeout = 5s) {
    auto m = Next(timeout);
    EXPECT_TRUE(m.has_value()) << "no delivery";
    if (!m) return {};
    EXPECT_TRUE(m->has_delivery()) << m->DebugString();
    return m->delivery();
  }
  // The next message, which must be an ack.
  v1::ConnectAck NextAck(std::chrono::milliseconds timeout = 5s) {
    auto m = Next(timeout);
    EXPECT_TRUE(m.has_value()) << "no ack";
    if (!m) return {};
    EXPECT_TRUE(m->has_ack()) << m->DebugString();
    return m->ack();
  }
  // Waits for the broker to end the stream; its status.
  grpc::Status WaitEnd(std::chrono::milliseconds timeout = 5s) {
    grpc::Status unused;
    if (!q_.WaitClosed(timeout, &unused)) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the stream did not end");
    }
    finished_ = true;
    return rw_->Finish();
  }
  void Cancel() { ctx_.TryCancel(); }
  void HalfClose() { rw_->WritesDone(); }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ConnectRequest, v1::ConnectResponse>> rw_;
  TimedQueue<v1::ConnectResponse> q_;
  std::thread thread_;
  bool finished_ = false;
};

class StreamsE2EWorker : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override { return {"--worker-grace=1s"}; }

  grpc::Status Cancel(const std::string& id, v1::Job* job = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(10s));
    v1::CancelJobRequest req;
    req.set_job_id(id);
    v1::CancelJobResponse resp;
    grpc::Status s = client().jobs->CancelJob(&ctx, req, &resp);
    if (job != nullptr) *job = resp.job();
    return s;
  }

  // A job held by a Connect worker whose stream then goes away (`drop`) is
  // leased again after the 1 s grace, long before its 60 s lease ends.
  void ExpectRedeliveredAfterGrace(const std::function<void(WorkerConn&)>& drop) {
    const std::string id = client().MustEnqueue(NewJob("grace-q", "work"));
    auto wc = NewClient();
    auto conn = std::make_unique<WorkerConn>(wc->workers.get());
    ASSERT_TRUE(conn->Hello({"grace-q"}, 1, 60s, "lost-worker"));
    v1::Lease l = conn->NextDelivery();
    ASSERT_EQ(l.job().id(), id);
    EXPECT_GT(Time(l.deadline()) - std::chrono::system_clock::now(), 50s)
        << "the hello's 60 s lease was not applied";
    EXPECT_EQ(client().MustGetJob(id).state(), v1::JOB_STATE_LEASED);

    const auto dropped = Clock::now();
    drop(*conn);
    v1::Lease again = client().MustLeaseOne("grace-q", 10s, "second-worker");
    const auto took = Since(dropped);
    ASSERT_EQ(again.job().id(), id);
    EXPECT_LT(took.count(), 5000) << "redelivered only after " << took.count() << " ms";
    EXPECT_GE(took.count(), 700) << "released before --worker-grace=1s";
    EXPECT_GT(again.lease_token(), l.lease_token());
    EXPECT_EQ(again.job().attempts(), 2u);
    ASSERT_GE(again.job().history_size(), 2);
    EXPECT_EQ(again.job().history(0).outcome(), v1::ATTEMPT_OUTCOME_WORKER_LOST);
    EXPECT_EQ(again.job().history(0).worker_id(), "lost-worker");
    // The lost worker's token is dead.
    grpc::Status s = client().Complete(id, l.lease_token(), "late");
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);
    ASSERT_TRUE(client().Complete(id, again.lease_token(), "done").ok());
    conn.reset();
  }
};

TEST_F(StreamsE2EWorker, HelloCreditsBoundDeliveries) {
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back(client().MustEnqueue(NewJob("credit-q", std::to_string(i))));
  }
  auto wc = NewClient();
  WorkerConn conn(wc->workers.get());
  ASSERT_TRUE(conn.Hello({"credit-q"}, 2, 30s, "credit-worker"));
  v1::Lease l0 = conn.NextDelivery();
  v1::Lease l1 = conn.NextDelivery();
  EXPECT_EQ(l0.job().id(), ids[0]);
  EXPECT_EQ(l1.job().id(), ids[1]);
  EXPECT_EQ(l0.job().payload(), "0");
  EXPECT_EQ(l0.job().state(), v1::JOB_STATE_LEASED);
  EXPECT_EQ(l0.job().attempts(), 1u);
  EXPECT_GT(l0.lease_token(), 0u);
  EXPECT_TRUE(l0.has_deadline());
  // Two credits, two jobs: nothing more.
  auto extra = conn.Next(500ms);
  EXPECT_FALSE(extra.has_value()) << extra->DebugString();
  EXPECT_EQ(client().Stats("credit-q").leased(), 2u);

  ASSERT_TRUE(conn.Credits(1));
  EXPECT_EQ(conn.NextDelivery().job().id(), ids[2]);
  extra = conn.Next(300ms);
  EXPECT_FALSE(extra.has_value()) << extra->DebugString();

  // Completing does not grant a credit by itself.
  ASSERT_TRUE(conn.Complete(101, l0.job().id(), l0.lease_token(), "r0"));
  v1::ConnectAck ack = conn.NextAck();
  EXPECT_EQ(ack.request_id(), 101u);
  EXPECT_EQ(ack.error_code(), 0) << ack.error_message();
  extra = conn.Next(300ms);
  EXPECT_FALSE(extra.has_value()) << extra->DebugString();
  v1::Job done = client().MustGetJob(ids[0]);
  EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.result(), "r0");
  EXPECT_EQ(done.history(0).worker_id(), "credit-worker");

  // Five credits: the two left now, the next one when it is enqueued.
  ASSERT_TRUE(conn.Credits(5));
  EXPECT_EQ(conn.NextDelivery().job().id(), ids[3]);
  EXPECT_EQ(conn.NextDelivery().job().id(), ids[4]);
  extra = conn.Next(300ms);
  EXPECT_FALSE(extra.has_value()) << extra->DebugString();
  const std::string late = client().MustEnqueue(NewJob("credit-q", "late"));
  EXPECT_EQ(conn.NextDelivery().job().id(), late);
  v1::QueueStats st = client().Stats("credit-q");
  EXPECT_EQ(st.leased(), 5u);
  EXPECT_EQ(st.succeeded(), 1u);
  EXPECT_EQ(st.ready(), 0u);
}

// The next credit rides in the complete (ConnectRequest.more_credits): one
// message fewer per job. The ack and the next delivery both come, in either
// order (the delivery need not wait for the complete's fsync).
TEST_F(StreamsE2EWorker, MoreCreditsRideOnACompleteEvenAFailedOne) {
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(client().MustEnqueue(NewJob("ride-q", "r")));
  auto wc = NewClient();
  WorkerConn conn(wc->workers.get());
  ASSERT_TRUE(conn.Hello({"ride-q"}, 1, 30s, "ride-worker"));
  v1::Lease l0 = conn.NextDelivery();
  ASSERT_EQ(l0.job().id(), ids[0]);

  // Takes the next two messages: one ack, one delivery.
  auto ack_and_delivery = [&](v1::ConnectAck* ack, v1::Lease* delivery) {
    for (int i = 0; i < 2; ++i) {
      auto m = conn.Next();
      ASSERT_TRUE(m.has_value()) << "message " << i << " missing";
      EXPECT_EQ(m->acks_size(), 0) << "packed without hello.packed_acks: " << m->DebugString();
      if (m->has_ack()) {
        *ack = m->ack();
      } else {
        ASSERT_TRUE(m->has_delivery()) << m->DebugString();
        *delivery = m->delivery();
      }
    }
  };
  ASSERT_TRUE(conn.CompleteAndGrant(201, l0, 1));
  v1::ConnectAck ack;
  v1::Lease l1;
  ack_and_delivery(&ack, &l1);
  EXPECT_EQ(ack.request_id(), 201u);
  EXPECT_EQ(ack.error_code(), 0) << ack.error_message();
  EXPECT_EQ(l1.job().id(), ids[1]);
  EXPECT_EQ(client().MustGetJob(ids[0]).state(), v1::JOB_STATE_SUCCEEDED);

  // A complete that fails (stale token) still grants its credit.
  ASSERT_TRUE(conn.CompleteAndGrant(202, l0, 1));
  v1::Lease l2;
  ack = {};
  ack_and_delivery(&ack, &l2);
  EXPECT_EQ(ack.request_id(), 202u);
  EXPECT_EQ(ack.error_code(), kFailedPrecondition) << ack.error_message();
  EXPECT_EQ(l2.job().id(), ids[2]);

  // Those were all the credits: a new job waits.
  const std::string late = client().MustEnqueue(NewJob("ride-q", "late"));
  auto extra = conn.Next(300ms);
  EXPECT_FALSE(extra.has_value()) << extra->DebugString();
  // On a credits message the two add up.
  v1::ConnectRequest grant;
  grant.set_credits(1);
  grant.set_more_credits(1);
  ASSERT_TRUE(conn.Send(grant));
  EXPECT_EQ(conn.NextDelivery().job().id(), late);
  const std::string later = client().MustEnqueue(NewJob("ride-q", "later"));
  EXPECT_EQ(conn.NextDelivery().job().id(), later);
  EXPECT_EQ(client().Stats("ride-q").leased(), 4u);
}

// hello.packed_acks, on a broker in async mode (in sync mode the delivery
// goes out before the complete's fsync, so ahead of its ack): the ack of a
// complete and the delivery its more_credits brought come in one message,
// the ack in `acks`; an ack with nothing after it comes alone in `acks`.
// Without packed_acks the same exchange is two messages.
class StreamsE2EWorkerAsync : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override { return {"--commit=async"}; }
};

TEST_F(StreamsE2EWorkerAsync, PackedAcksPutTheAckAndTheNextDeliveryInOneMessage) {
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(client().MustEnqueue(NewJob("pack-q", "p")));
  auto wc = NewClient();
  WorkerConn conn(wc->workers.get());
  ASSERT_TRUE(conn.Hello({"pack-q"}, 1, 30s, "packed", /*packed_acks=*/true));
  v1::Lease l0 = conn.NextDelivery();
  ASSERT_EQ(l0.job().id(), ids[0]);

  ASSERT_TRUE(conn.CompleteAndGrant(201, l0, 1));
  auto m = conn.Next();
  ASSERT_TRUE(m.has_value()) << "no answer to the complete";
  ASSERT_EQ(m->acks_size(), 1) << m->DebugString();
  EXPECT_EQ(m->acks(0).request_id(), 201u);
  EXPECT_EQ(m->acks(0).error_code(), 0) << m->acks(0).error_message();
  ASSERT_TRUE(m->has_delivery()) << m->DebugString();
  const v1::Lease l1 = m->delivery();
  EXPECT_EQ(l1.job().id(), ids[1]);
  EXPECT_EQ(client().MustGetJob(ids[0]).state(), v1::JOB_STATE_SUCCEEDED);

  // An extend's ack has nothing to ride with.
  ASSERT_TRUE(conn.Extend(301, l1.job().id(), l1.lease_token()));
  m = conn.Next();
  ASSERT_TRUE(m.has_value()) << "no answer to the extend";
  ASSERT_EQ(m->acks_size(), 1) << m->DebugString();
  EXPECT_EQ(m->acks(0).request_id(), 301u);
  EXPECT_EQ(m->acks(0).error_code(), 0) << m->acks(0).error_message();
  EXPECT_TRUE(m->acks(0).has_deadline());
  EXPECT_EQ(m->kind_case(), v1::ConnectResponse::KIND_NOT_SET) << m->DebugString();

  // A worker without packed_acks gets the same exchange as two messages.
  WorkerConn plain(wc->workers.get());
  ASSERT_TRUE(plain.Hello({"pack-q"}, 1, 30s, "plain"));
  v1::Lease l2 = plain.NextDelivery();
  ASSERT_EQ(l2.job().id(), ids[2]);
  ASSERT_TRUE(plain.CompleteAndGrant(202, l2, 1));
  bool acked = false, delivered = false;
  for (int i = 0; i < 2; ++i) {
    auto p = plain.Next();
    ASSERT_TRUE(p.has_value()) << "message " << i << " missing";
    EXPECT_EQ(p->acks_size(), 0) << p->DebugString();
    if (p->has_ack()) {
      EXPECT_EQ(p->ack().request_id(), 202u);
      acked = true;
    } else if (p->has_delivery()) {
      EXPECT_EQ(p->delivery().job().id(), ids[3]);
      delivered = true;
    }
  }
  EXPECT_TRUE(acked && delivered);
}

TEST_F(StreamsE2EWorker, MoreCreditsOnHelloAddToItsCredits) {
  for (int i = 0; i < 4; ++i) client().MustEnqueue(NewJob("hello-ride-q", "h"));
  auto wc = NewClient();
  WorkerConn conn(wc->workers.get());
  v1::ConnectRequest r;
  r.mutable_hello()->add_queues("hello-ride-q");
  r.mutable_hello()->set_credits(1);
  r.set_more_credits(2);
  ASSERT_TRUE(conn.Send(r));
  for (int i = 0; i < 3; ++i) conn.NextDelivery();
  auto extra = conn.Next(300ms);
  EXPECT_FALSE(extra.has_value()) << extra->DebugString();
  EXPECT_EQ(client().Stats("hello-ride-q").leased(), 3u);
}

TEST_F(StreamsE2EWorker, AcksEchoRequestIdAndStaleTokenIsFailedPrecondition) {
  v1::EnqueueRequest req = NewJob("ack-q", "x");
  req.set_max_attempts(3);
  const std::string id = client().MustEnqueue(req);
  auto wc = NewClient();
  WorkerConn conn(wc->workers.get());
  ASSERT_TRUE(conn.Hello({"ack-q"}, 1));
  v1::Lease first = conn.NextDelivery();
  ASSERT_EQ(first.job().id(), id);
  const uint64_t t1 = first.lease_token();

  // Extend with progress.
  ASSERT_TRUE(conn.Extend(7, id, t1, 0.25));
  v1::ConnectAck ack = conn.NextAck();
  EXPECT_EQ(ack.request_id(), 7u);
  EXPECT_EQ(ack.error_code(), 0) << ack.error_message();
  EXPECT_FALSE(ack.cancel_requested());
  EXPECT_GT(Time(ack.deadline()) - std::chrono::system_clock::now(), 20s);
  EXPECT_DOUBLE_EQ(client().MustGetJob(id).progress().fraction(), 0.25);

  // Fail: retried.
  ASSERT_TRUE(conn.Fail(8, id, t1, "flaky", 10ms));
  ack = conn.NextAck();
  EXPECT_EQ(ack.request_id(), 8u);
  EXPECT_EQ(ack.error_code(), 0) << ack.error_message();
  v1::Job job = client().MustGetJob(id);
  EXPECT_TRUE(job.state() == v1::JOB_STATE_SCHEDULED || job.state() == v1::JOB_STATE_READY)
      << job.DebugString();

  // Redelivered under a new token; the old one is stale everywhere.
  ASSERT_TRUE(conn.Credits(1));
  v1::Lease second = conn.NextDelivery();
  ASSERT_EQ(second.job().id(), id);
  const uint64_t t2 = second.lease_token();
  EXPECT_GT(t2, t1);
  EXPECT_EQ(second.job().attempts(), 2u);
  ASSERT_TRUE(conn.Complete(9, id, t1, "stale"));
  ack = conn.NextAck();
  EXPECT_EQ(ack.request_id(), 9u);
  EXPECT_EQ(ack.error_code(), kFailedPrecondition) << ack.error_message();
  EXPECT_FALSE(ack.error_message().empty());
  ASSERT_TRUE(conn.Extend(10, id, t1));
  ack = conn.NextAck();
  EXPECT_EQ(ack.request_id(), 10u);
  EXPECT_EQ(ack.error_code(), kFailedPrecondition) << ack.error_message();
  ASSERT_TRUE(conn.Fail(11, id, t1, "stale"));
  ack = conn.NextAck();
  EXPECT_EQ(ack.request_id(), 11u);
  EXPECT_EQ(ack.error_code(), kFailedPrecondition) << ack.error_message();
  EXPECT_EQ(client().MustGetJob(id).state(), v1::JOB_STATE_LEASED);

  // The stream went on: the current token completes.
  ASSERT_TRUE(conn.Complete(12, id, t2, "good"));
  ack = conn.NextAck();
  EXPECT_EQ(ack.request_id(), 12u);
  EXPECT_EQ(ack.error_code(), 0) << ack.error_message();
  job = client().MustGetJob(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job.result(), "good");
  // Twice: the job is no longer leased.
  ASSERT_TRUE(conn.Complete(13, id, t2, "again"));
  ack = conn.NextAck();
  EXPECT_EQ(ack.request_id(), 13u);
  EXPECT_EQ(ack.error_code(), kFailedPrecondition) << ack.error_message();
  // Unknown job.
  ASSERT_TRUE(conn.Complete(14, "00000000000000ff", t2, "?"));
  ack = conn.NextAck();
  EXPECT_EQ(ack.request_id(), 14u);
  EXPECT_EQ(ack.error_code(), kNotFound) << ack.error_message();
  EXPECT_EQ(client().MustGetJob(id).result(), "good");
}

TEST_F(StreamsE2EWorker, CancelOfHeldJobIsPushedToTheStream) {
  const std::string id = client().MustEnqueue(NewJob("cancel-q"));
  const std::string other = client().MustEnqueue(NewJob("cancel-q"));
  auto wc = NewClient();
  WorkerConn conn(wc->workers.get());
  ASSERT_TRUE(conn.Hello({"cancel-q"}, 2));
  v1::Lease l = conn.NextDelivery();
  v1::Lease l2 = conn.NextDelivery();
  ASSERT_EQ(l.job().id(), id);
  ASSERT_EQ(l2.job().id(), other);

  v1::Job job;
  grpc::Status s = Cancel(id, &job);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_TRUE(job.cancel_requested());
  auto m = conn.Next(5s);
  ASSERT_TRUE(m.has_value()) << "no cancel pushed";
  ASSERT_EQ(m->kind_case(), v1::ConnectResponse::kCancelJobId) << m->DebugString();
  EXPECT_EQ(m->cancel_job_id(), id);
  // Only for that job.
  auto extra = conn.Next(300ms);
  EXPECT_FALSE(extra.has_value()) << extra->DebugString();

  ASSERT_TRUE(conn.Extend(1, id, l.lease_token()));
  v1::ConnectAck ack = conn.NextAck();
  EXPECT_EQ(ack.request_id(), 1u);
  EXPECT_TRUE(ack.cancel_requested());
  ASSERT_TRUE(conn.Extend(2, other, l2.lease_token()));
  ack = conn.NextAck();
  EXPECT_EQ(ack.request_id(), 2u);
  EXPECT_FALSE(ack.cancel_requested());
  ASSERT_TRUE(conn.Fail(3, id, l.lease_token(), "stopped on request"));
  ack = conn.NextAck();
  EXPECT_EQ(ack.request_id(), 3u);
  EXPECT_EQ(ack.error_code(), 0) << ack.error_message();
  EXPECT_EQ(client().MustGetJob(id).state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(client().MustGetJob(other).state(), v1::JOB_STATE_LEASED);
}

TEST_F(StreamsE2EWorker, CancelledStreamRedeliversAfterGraceNotLease) {
  ExpectRedeliveredAfterGrace([](WorkerConn& c) { c.Cancel(); });
}

TEST_F(StreamsE2EWorker, HalfClosedStreamRedeliversAfterGraceNotLease) {
  ExpectRedeliveredAfterGrace([](WorkerConn& c) {
    c.HalfClose();
    grpc::Status s = c.WaitEnd(5s);
    EXPECT_TRUE(s.ok()) << Show(s);
  });
}

TEST_F(StreamsE2EWorker, FirstMessageMustBeHello) {
  auto wc = NewClient();
  {
    SCOPED_TRACE("credits first");
    WorkerConn conn(wc->workers.get());
    ASSERT_TRUE(conn.Credits(5));
    grpc::Status s = conn.WaitEnd();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);
    EXPECT_NE(s.error_message().find("hello"), std::string::npos) << Show(s);
  }
  {
    SCOPED_TRACE("hello without queues");
    WorkerConn conn(wc->workers.get());
    ASSERT_TRUE(conn.Hello({}, 1));
    grpc::Status s = conn.WaitEnd();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
  }
  {
    SCOPED_TRACE("hello with a bad queue");
    WorkerConn conn(wc->workers.get());
    ASSERT_TRUE(conn.Hello({"good", "bad queue"}, 1));
    grpc::Status s = conn.WaitEnd();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
    EXPECT_NE(s.error_message().find("hello.queues[1]"), std::string::npos) << Show(s);
  }
}

// The contract: "Errors (ending the stream): ... FAILED_PRECONDITION (no
// hello first)" -- whatever the first message is, not only `credits`.
TEST_F(StreamsE2EWorker, CompleteBeforeHelloEndsStreamWithFailedPrecondition) {
  const std::string id = client().MustEnqueue(NewJob("hello-q"));
  v1::Lease l = client().MustLeaseOne("hello-q");
  auto wc = NewClient();
  WorkerConn conn(wc->workers.get());
  ASSERT_TRUE(conn.Complete(1, id, l.lease_token(), "no hello"));
  grpc::Status s = conn.WaitEnd(3s);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);
  EXPECT_EQ(client().MustGetJob(id).state(), v1::JOB_STATE_LEASED)
      << "a complete sent before hello was applied";
}

}  // namespace
}  // namespace errand::e2e
