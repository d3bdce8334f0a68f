// End to end: SIGTERM with every kind of long-lived call open (a
// subscription, an EnqueueAndWatch, a WaitJob long poll, a Connect worker
// holding a job, an idle EnqueueStream): the broker exits 0 promptly and
// each call ends UNAVAILABLE; a later subscriber resumes where it left off.

#include <future>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

// Default flags on purpose: --worker-grace (10 s) must not delay shutdown.
class EventsE2EShutdown : public BrokerTest {};

TEST_F(EventsE2EShutdown, SigtermEndsOpenStreamsUnavailableAndExitsCleanly) {
  const uint64_t head = HeadSeq(client());
  auto c = NewClient();

  // A subscription that saw one event.
  EventStream sub(c->events.get(), SubscribeReq({"sd-q"}, {}, head));
  const std::string waited_id = client().MustEnqueue(NewJob("sd-q"));
  auto first = sub.Next(5s);
  ASSERT_TRUE(first.has_value());

  // An EnqueueAndWatch whose job is still READY.
  grpc::ClientContext wctx;
  wctx.set_deadline(testing::In(30s));
  auto watch = c->jobs->EnqueueAndWatch(&wctx, NewJob("sd-watch"));
  v1::WatchJobResponse accepted;
  ASSERT_TRUE(watch->Read(&accepted));
  ASSERT_TRUE(accepted.has_accepted());

  // A long poll.
  auto waiter = std::async(std::launch::async, [&] {
    v1::WaitJobResponse r;
    return WaitJob(*c, waited_id, 30s, &r);
  });

  // A Connect worker holding a job.
  client().MustEnqueue(NewJob("sd-work"));
  grpc::ClientContext cctx;
  cctx.set_deadline(testing::In(30s));
  auto conn = c->workers->Connect(&cctx);
  v1::ConnectRequest hello;
  hello.mutable_hello()->add_queues("sd-work");
  hello.mutable_hello()->set_credits(1);
  ASSERT_TRUE(conn->Write(hello));
  v1::ConnectResponse delivery;
  ASSERT_TRUE(conn->Read(&delivery));
  ASSERT_TRUE(delivery.has_delivery());

  // An idle EnqueueStream that answered once.
  grpc::ClientContext ectx;
  ectx.set_deadline(testing::In(30s));
  auto es = c->jobs->EnqueueStream(&ectx);
  v1::EnqueueStreamRequest ereq;
  ereq.set_request_id(1);
  *ereq.mutable_job() = NewJob("sd-stream");
  ASSERT_TRUE(es->Write(ereq));
  v1::EnqueueStreamResponse eresp;
  ASSERT_TRUE(es->Read(&eresp));
  ASSERT_EQ(eresp.error_code(), 0);
  std::this_thread::sleep_for(200ms);  // the long poll is parked

  const auto stop_start = Clock::now();
  const int code = broker_->Stop();
  const auto stop_took = Since(stop_start);
  EXPECT_EQ(code, 0) << "errand-broker did not exit cleanly on SIGTERM";
  // Nothing is in flight, so --shutdown-grace (5 s) is not needed either.
  EXPECT_LT(stop_took.count(), 5000) << "shutdown took " << stop_took.count() << " ms";

  grpc::Status s;
  ASSERT_TRUE(sub.WaitEnd(&s, 5s));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << "Subscribe: " << Show(s);
  v1::WatchJobResponse m;
  while (watch->Read(&m)) {
  }
  s = watch->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << "EnqueueAndWatch: " << Show(s);
  ASSERT_EQ(waiter.wait_for(5s), std::future_status::ready);
  s = waiter.get();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << "WaitJob: " << Show(s);
  v1::ConnectResponse cm;
  while (conn->Read(&cm)) {
  }
  conn->WritesDone();
  s = conn->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << "Connect: " << Show(s);
  while (es->Read(&eresp)) {
  }
  es->WritesDone();
  s = es->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << "EnqueueStream: " << Show(s);

  // After the restart the subscriber resumes after what it saw.
  ASSERT_NO_FATAL_FAILURE(StartBroker());
  auto c2 = NewClient();
  EventStream resumed(c2->events.get(), SubscribeReq({"sd-q"}, {}, first->seq()));
  const std::string later = client().MustEnqueue(NewJob("sd-q"));
  auto ev = resumed.Next(5s);
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->job_id(), later);
  EXPECT_EQ(client().Stats("sd-stream").ready(), 1u);
  EXPECT_EQ(client().Stats("sd-watch").ready(), 1u);
}

}  // namespace
}  // namespace errand::e2e
