// End to end: limits on calls that stay open. A client that opens more
// streams, subscribers or long polls than the broker allows gets
// RESOURCE_EXHAUSTED naming the limit's flag; a slot is free again once its
// call ends; other connections and the broker itself are unaffected.

#include <atomic>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

using EnqueueStreamRw =
    grpc::ClientReaderWriter<v1::EnqueueStreamRequest, v1::EnqueueStreamResponse>;

// Whether `s` is RESOURCE_EXHAUSTED and names `flag`.
::testing::AssertionResult RefusedBy(const grpc::Status& s, const std::string& flag) {
  if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
      s.error_message().find(flag) != std::string::npos) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "expected RESOURCE_EXHAUSTED naming " << flag
                                       << ", got " << Show(s);
}

// Subscribes after `head` to `topic` and waits until a message published
// after the call started arrives: from then on the broker holds the stream.
std::unique_ptr<EventStream> OpenSubscriber(Client& c, Client& publisher, const std::string& topic,
                                            uint64_t head) {
  auto s = std::make_unique<EventStream>(c.events.get(), SubscribeReq({}, {topic}, head));
  MustPublish(publisher, topic, "ping");
  auto ev = s->Next(20s);
  EXPECT_TRUE(ev.has_value()) << "subscriber on " << topic << " got nothing";
  return s;
}

// A Subscribe call that is expected to end at once; its final status.
grpc::Status SubscribeStatus(Client& c, const std::string& topic) {
  EventStream s(c.events.get(), SubscribeReq({}, {topic}));
  grpc::Status status;
  if (!s.WaitEnd(&status, 20s)) return grpc::Status(grpc::StatusCode::UNKNOWN, "still open");
  return status;
}

// An EnqueueStream that has enqueued one job and read its answer.
struct OpenEnqueueStream {
  grpc::ClientContext ctx;
  std::unique_ptr<EnqueueStreamRw> rw;
};

std::unique_ptr<OpenEnqueueStream> StartEnqueueStream(Client& c, const std::string& queue) {
  auto s = std::make_unique<OpenEnqueueStream>();
  s->ctx.set_deadline(testing::In(120s));
  s->rw = c.jobs->EnqueueStream(&s->ctx);
  v1::EnqueueStreamRequest req;
  req.set_request_id(1);
  *req.mutable_job() = NewJob(queue, "x");
  EXPECT_TRUE(s->rw->Write(req));
  v1::EnqueueStreamResponse resp;
  EXPECT_TRUE(s->rw->Read(&resp)) << "EnqueueStream gave no answer";
  EXPECT_EQ(resp.request_id(), 1u);
  EXPECT_EQ(resp.error_code(), 0) << resp.error_message();
  return s;
}

// One job over a fresh EnqueueStream, then the stream's final status.
grpc::Status EnqueueStreamRoundTrip(Client& c) {
  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(20s));
  auto rw = c.jobs->EnqueueStream(&ctx);
  v1::EnqueueStreamRequest req;
  req.set_request_id(7);
  *req.mutable_job() = NewJob("limits.q", "y");
  rw->Write(req);
  rw->WritesDone();
  v1::EnqueueStreamResponse resp;
  int answers = 0;
  while (rw->Read(&resp)) answers += resp.error_code() == 0 ? 1 : 0;
  grpc::Status s = rw->Finish();
  if (s.ok() && answers != 1) return grpc::Status(grpc::StatusCode::UNKNOWN, "no answer");
  return s;
}

// The final status of an EnqueueStream the broker refuses: the client reads
// until the end without writing.
grpc::Status RefusedEnqueueStream(Client& c) {
  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(20s));
  auto rw = c.jobs->EnqueueStream(&ctx);
  v1::EnqueueStreamResponse resp;
  while (rw->Read(&resp)) {
  }
  return rw->Finish();
}

grpc::Status RefusedConnect(Client& c) {
  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(20s));
  auto rw = c.workers->Connect(&ctx);
  v1::ConnectResponse resp;
  while (rw->Read(&resp)) {
  }
  return rw->Finish();
}

grpc::Status RefusedWatch(Client& c, const std::string& queue) {
  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(20s));
  auto r = c.jobs->EnqueueAndWatch(&ctx, NewJob(queue, "w"));
  v1::WatchJobResponse resp;
  while (r->Read(&resp)) {
  }
  return r->Finish();
}

// A WaitJob (or Lease) long poll running on a thread of its own until it is
// cancelled or its wait ends.
class LongPoll {
 public:
  // WaitJob on `job_id` for up to `wait`.
  static std::unique_ptr<LongPoll> WaitJob(Client& c, const std::string& job_id,
                                           std::chrono::milliseconds wait = 120s) {
    auto p = std::unique_ptr<LongPoll>(new LongPoll());
    p->ctx_.set_deadline(testing::In(wait + 30s));
    v1::WaitJobRequest req;
    req.set_job_id(job_id);
    *req.mutable_timeout() = Dur(wait);
    LongPoll* raw = p.get();
    p->thread_ = std::thread([raw, &c, req] {
      v1::WaitJobResponse resp;
      grpc::Status s = c.jobs->WaitJob(&raw->ctx_, req, &resp);
      raw->Done(std::move(s));
    });
    return p;
  }
  // Lease from `queue` (kept empty by the test) waiting up to `wait`.
  static std::unique_ptr<LongPoll> Lease(Client& c, const std::string& queue,
                                         std::chrono::milliseconds wait = 120s) {
    auto p = std::unique_ptr<LongPoll>(new LongPoll());
    p->ctx_.set_deadline(testing::In(wait + 30s));
    v1::LeaseRequest req = LeaseReq({queue}, 1, wait, "poller");
    LongPoll* raw = p.get();
    p->thread_ = std::thread([raw, &c, req] {
      v1::LeaseResponse resp;
      grpc::Status s = c.workers->Lease(&raw->ctx_, req, &resp);
      raw->Done(std::move(s));
    });
    return p;
  }
  ~LongPoll() {
    ctx_.TryCancel();
    thread_.join();
  }
  void Cancel() { ctx_.TryCancel(); }
  // The call's status once it ended (within `timeout`); UNKNOWN "still open"
  // otherwise.
  grpc::Status Wait(std::chrono::milliseconds timeout = 20s) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return done_; });
    if (!done_) return grpc::Status(grpc::StatusCode::UNKNOWN, "still open");
    return status_;
  }
  bool done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

 private:
  LongPoll() = default;
  void Done(grpc::Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = std::move(s);
    done_ = true;
    cv_.notify_all();
  }
  grpc::ClientContext ctx_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  grpc::Status status_;
};

// A WaitJob that answers at once (timeout 0) unless it is refused.
grpc::Status QuickWaitJob(Client& c, const std::string& id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(Client::kRpcTimeout));
  v1::WaitJobRequest req;
  req.set_job_id(id);
  *req.mutable_timeout() = Dur(1ms);
  v1::WaitJobResponse resp;
  return c.jobs->WaitJob(&ctx, req, &resp);
}

// Repeats `call` (a cheap call) until it returns `want`, at most 500 times
// 20 ms apart: the broker admits and releases calls asynchronously.
grpc::Status Until(grpc::StatusCode want, const std::function<grpc::Status()>& call) {
  grpc::Status s;
  for (int i = 0; i < 500; ++i) {
    s = call();
    if (s.error_code() == want) return s;
    std::this_thread::sleep_for(20ms);
  }
  return s;
}

// Waits until the broker counts `n` waiting long polls (GetServerInfo).
::testing::AssertionResult LongPollsOpen(Client& c, uint64_t n) {
  uint64_t seen = 0;
  for (int i = 0; i < 500; ++i) {
    seen = c.ServerInfo().open_long_polls();
    if (seen == n) return ::testing::AssertionSuccess();
    std::this_thread::sleep_for(20ms);
  }
  return ::testing::AssertionFailure() << "open_long_polls is " << seen << ", expected " << n;
}

class LimitsStreamsPerConnection : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override {
    return {"--max-streams-per-connection=2"};
  }
};

TEST_F(LimitsStreamsPerConnection, ThirdStreamOnOneConnectionIsRefusedAndFreedWhenOneEnds) {
  auto a = NewClient();
  const uint64_t head = HeadSeq(client());
  auto s1 = OpenSubscriber(*a, client(), "limits.t1", head);
  auto s2 = OpenSubscriber(*a, client(), "limits.t2", head);

  // Every kind of stream counts on this connection.
  EXPECT_TRUE(RefusedBy(SubscribeStatus(*a, "limits.t3"), "--max-streams-per-connection"));
  EXPECT_TRUE(RefusedBy(RefusedEnqueueStream(*a), "--max-streams-per-connection"));
  EXPECT_TRUE(RefusedBy(RefusedConnect(*a), "--max-streams-per-connection"));
  EXPECT_TRUE(RefusedBy(RefusedWatch(*a, "limits.q"), "--max-streams-per-connection"));
  // Unary calls on the same connection are not streams.
  EXPECT_FALSE(a->MustEnqueue(NewJob("limits.q")).empty());

  // Another connection has its own allowance.
  auto b = NewClient();
  auto other = OpenSubscriber(*b, client(), "limits.t4", head);
  auto es = StartEnqueueStream(*b, "limits.q");

  // Ending one stream frees its slot.
  s1.reset();
  grpc::Status st = Until(grpc::StatusCode::OK, [&] { return EnqueueStreamRoundTrip(*a); });
  EXPECT_TRUE(st.ok()) << Show(st);
  ExpectHealthy("limits.after", "still here");
}

class LimitsStreamsTotal : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override { return {"--max-streams=3"}; }
};

TEST_F(LimitsStreamsTotal, StreamsBeyondTheTotalAreRefusedOnAnyConnection) {
  const uint64_t head = HeadSeq(client());
  auto c1 = NewClient();
  auto c2 = NewClient();
  auto c3 = NewClient();
  auto c4 = NewClient();
  auto s1 = OpenSubscriber(*c1, client(), "limits.t1", head);
  auto e2 = StartEnqueueStream(*c2, "limits.q");
  auto s3 = OpenSubscriber(*c3, client(), "limits.t3", head);

  EXPECT_TRUE(RefusedBy(SubscribeStatus(*c4, "limits.t4"), "(--max-streams)"));
  EXPECT_TRUE(RefusedBy(RefusedConnect(*c4), "(--max-streams)"));
  EXPECT_TRUE(RefusedBy(RefusedEnqueueStream(*c1), "(--max-streams)"));

  // The EnqueueStream ends (half-close, answers read): one slot is free.
  e2->rw->WritesDone();
  v1::EnqueueStreamResponse r;
  while (e2->rw->Read(&r)) {
  }
  ASSERT_TRUE(e2->rw->Finish().ok());
  grpc::Status st = Until(grpc::StatusCode::OK, [&] {
    // A subscriber that gets its first message was admitted; cancel it after.
    const uint64_t h = HeadSeq(client());
    EventStream s(c4->events.get(), SubscribeReq({}, {"limits.t5"}, h));
    MustPublish(client(), "limits.t5", "ping");
    if (s.Next(20s).has_value()) return grpc::Status::OK;
    grpc::Status end;
    s.WaitEnd(&end, 1s);
    return end;
  });
  EXPECT_TRUE(st.ok()) << Show(st);
  ExpectHealthy("limits.after", "still here");
}

class LimitsSubscribers : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override { return {"--max-subscribers=2"}; }
};

TEST_F(LimitsSubscribers, SubscribersBeyondTheLimitAreRefusedOtherStreamsAreNot) {
  const uint64_t head = HeadSeq(client());
  auto c1 = NewClient();
  auto c2 = NewClient();
  auto c3 = NewClient();
  auto s1 = OpenSubscriber(*c1, client(), "limits.t1", head);
  auto s2 = OpenSubscriber(*c2, client(), "limits.t2", head);
  EXPECT_EQ(client().ServerInfo().open_subscribers(), 2u);

  EXPECT_TRUE(RefusedBy(SubscribeStatus(*c3, "limits.t3"), "--max-subscribers"));
  // EnqueueAndWatch subscribes too; the refused call enqueued nothing.
  EXPECT_TRUE(RefusedBy(RefusedWatch(*c3, "limits.watch"), "--max-subscribers"));
  EXPECT_EQ(TotalJobs(client().Stats("limits.watch")), 0u);
  // An EnqueueStream is a stream but no subscriber.
  auto es = StartEnqueueStream(*c3, "limits.q");

  // A subscriber that leaves frees its place.
  s2->Cancel();
  grpc::Status end;
  ASSERT_TRUE(s2->WaitEnd(&end, 20s));
  grpc::Status st = Until(grpc::StatusCode::OK, [&] {
    const uint64_t h = HeadSeq(client());
    EventStream s(c3->events.get(), SubscribeReq({}, {"limits.t6"}, h));
    MustPublish(client(), "limits.t6", "ping");
    if (s.Next(20s).has_value()) return grpc::Status::OK;
    grpc::Status e;
    s.WaitEnd(&e, 1s);
    return e;
  });
  EXPECT_TRUE(st.ok()) << Show(st);
  ExpectHealthy("limits.after", "still here");
}

class LimitsLongPollsPerConnection : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override {
    return {"--max-long-polls-per-connection=2"};
  }
};

TEST_F(LimitsLongPollsPerConnection, ThirdLongPollIsRefusedAndFreedWhenOneEnds) {
  const std::string id = client().MustEnqueue(NewJob("limits.wait"));
  auto a = NewClient();
  auto w1 = LongPoll::WaitJob(*a, id);
  auto w2 = LongPoll::Lease(*a, "limits.empty");
  ASSERT_TRUE(LongPollsOpen(client(), 2));

  grpc::Status st = QuickWaitJob(*a, id);
  EXPECT_TRUE(RefusedBy(st, "--max-long-polls-per-connection"));
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(Client::kRpcTimeout));
    v1::LeaseResponse resp;
    st = a->workers->Lease(&ctx, LeaseReq({"limits.empty"}, 1, 50ms), &resp);
    EXPECT_TRUE(RefusedBy(st, "--max-long-polls-per-connection"));
  }
  // A Lease that does not wait is no long poll; other connections have their
  // own allowance.
  v1::LeaseResponse none;
  st = a->Lease(LeaseReq({"limits.empty"}), &none);
  EXPECT_TRUE(st.ok()) << Show(st);
  auto b = NewClient();
  EXPECT_TRUE(QuickWaitJob(*b, id).ok());
  EXPECT_FALSE(w1->done());
  EXPECT_FALSE(w2->done());

  // Cancelling one frees its place.
  w2->Cancel();
  EXPECT_EQ(w2->Wait().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(LongPollsOpen(client(), 1));
  st = Until(grpc::StatusCode::OK, [&] { return QuickWaitJob(*a, id); });
  EXPECT_TRUE(st.ok()) << Show(st);
  ExpectHealthy("limits.after", "still here");
}

class LimitsLongPollsTotal : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override { return {"--max-long-polls=2"}; }
};

TEST_F(LimitsLongPollsTotal, LongPollsBeyondTheTotalAreRefusedAndFreedWhenOneAnswers) {
  const std::string id = client().MustEnqueue(NewJob("limits.wait"));
  auto c1 = NewClient();
  auto c2 = NewClient();
  auto c3 = NewClient();
  auto w1 = LongPoll::WaitJob(*c1, id);
  auto w2 = LongPoll::Lease(*c2, "limits.empty");
  ASSERT_TRUE(LongPollsOpen(client(), 2));

  grpc::Status st = QuickWaitJob(*c3, id);
  EXPECT_TRUE(RefusedBy(st, "(--max-long-polls)"));
  EXPECT_EQ(st.error_message().find("per-connection"), std::string::npos) << st.error_message();

  // A job for the waiting Lease answers it: its place is free again.
  client().MustEnqueue(NewJob("limits.empty"));
  EXPECT_TRUE(w2->Wait().ok());
  EXPECT_TRUE(LongPollsOpen(client(), 1));
  st = Until(grpc::StatusCode::OK, [&] { return QuickWaitJob(*c3, id); });
  EXPECT_TRUE(st.ok()) << Show(st);
  EXPECT_FALSE(w1->done());
  ExpectHealthy("limits.after", "still here");
}

}  // namespace
}  // namespace errand::e2e
