// End to end: the event log's retention window. A subscribe starting before
// the oldest retained event (or after the head) is OUT_OF_RANGE with a
// message naming the oldest retained seq, never a silent gap; so is a slow
// subscriber that fell behind the retention while it was not reading.

#include <string>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

constexpr uint64_t kRetained = 50;

class EventsE2ERetention : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override {
    return {"--event-retention-count=" + std::to_string(kRetained),
            "--event-retention-age=1h"};
  }

  // Subscribes and returns the first message or the stream's status.
  grpc::Status TrySubscribe(const v1::SubscribeRequest& req, v1::Event* first,
                            std::chrono::milliseconds wait = 3s) {
    auto c = NewClient();
    EventStream s(c->events.get(), req);
    auto ev = s.Next(wait);
    if (ev) {
      if (first != nullptr) *first = *ev;
      return grpc::Status::OK;
    }
    grpc::Status end;
    if (!s.WaitEnd(&end, 1ms)) return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "nothing");
    return end;
  }

  // Waits (bounded) until the log was trimmed past `seq`: subscribing after
  // it is OUT_OF_RANGE.
  bool WaitTrimmedPast(uint64_t seq, grpc::Status* last) {
    const auto until = Clock::now() + testing::Scaled(10s);
    while (Clock::now() < until) {
      v1::SubscribeRequest req;
      req.set_after_seq(seq);
      *last = TrySubscribe(req, nullptr, 200ms);
      if (last->error_code() == grpc::StatusCode::OUT_OF_RANGE) return true;
      std::this_thread::sleep_for(100ms);
    }
    return false;
  }
};

TEST_F(EventsE2ERetention, TrimmedSeqIsOutOfRangeNamingOldestRetained) {
  const uint64_t head0 = HeadSeq(client());
  for (int i = 0; i < 200; ++i) MustPublish(client(), "ret.topic", std::to_string(i));
  const uint64_t head = HeadSeq(client());
  ASSERT_EQ(head, head0 + 201);
  // The broker trims about once a second, to the count at that moment: a
  // trim may have run while the events were published (under a sanitizer
  // publishing 200 takes longer than that), which leaves more than
  // kRetained until the next one. Wait for the trim that follows the last
  // publish: the one past head - kRetained.
  grpc::Status last;
  ASSERT_TRUE(WaitTrimmedPast(head - kRetained - 1, &last)) << "never trimmed: " << Show(last);

  // The oldest retained event, read from the start of the log.
  auto c = NewClient();
  v1::SubscribeRequest oldest_req;
  oldest_req.set_from_oldest(true);
  EventStream oldest(c->events.get(), oldest_req);
  std::vector<v1::Event> retained = oldest.Take(kRetained, testing::Scaled(5s));
  ASSERT_EQ(retained.size(), kRetained) << "the log keeps --event-retention-count events";
  const uint64_t first = retained.front().seq();
  EXPECT_EQ(first, head - kRetained + 1);
  for (size_t i = 0; i < retained.size(); ++i) EXPECT_EQ(retained[i].seq(), first + i);
  EXPECT_EQ(retained.back().seq(), head);
  EXPECT_FALSE(oldest.Next(200ms).has_value());

  // Older than that: OUT_OF_RANGE, naming the oldest retained seq.
  for (uint64_t after : {uint64_t{1}, head0, first - 2}) {
    SCOPED_TRACE("after_seq " + std::to_string(after));
    v1::SubscribeRequest req = SubscribeReq({}, {"ret.topic"}, after);
    grpc::Status s = TrySubscribe(req, nullptr);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::OUT_OF_RANGE) << Show(s);
    EXPECT_NE(s.error_message().find(std::to_string(first)), std::string::npos)
        << "message does not name the oldest retained seq " << first << ": " << s.error_message();
  }
  // Right before the oldest retained event: fine, starts with it.
  v1::Event ev;
  grpc::Status s = TrySubscribe(SubscribeReq({}, {"ret.topic"}, first - 1), &ev);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(ev.seq(), first);
}

TEST_F(EventsE2ERetention, AfterSeqAheadOfHeadIsOutOfRange) {
  const uint64_t head = HeadSeq(client());
  grpc::Status s = TrySubscribe(SubscribeReq({"q"}, {}, head + 1), nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::OUT_OF_RANGE) << Show(s);
  EXPECT_NE(s.error_message().find(std::to_string(head)), std::string::npos) << Show(s);
  s = TrySubscribe(SubscribeReq({"q"}, {}, head + 1000000), nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::OUT_OF_RANGE) << Show(s);

  // At the head exactly: a live subscription.
  auto c = NewClient();
  EventStream live(c->events.get(), SubscribeReq({"q"}, {}, head));
  const std::string id = client().MustEnqueue(NewJob("q"));
  auto ev = live.Next(5s);
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->job_id(), id);
  EXPECT_EQ(ev->seq(), head + 1);

  // after_seq with from_oldest: INVALID_ARGUMENT.
  v1::SubscribeRequest both = SubscribeReq({"q"}, {}, head);
  both.set_from_oldest(true);
  s = TrySubscribe(both, nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
}

// A subscriber that reads nothing while far more than the retention is
// written: when it reads again it gets a gap-free prefix, then OUT_OF_RANGE.
TEST_F(EventsE2ERetention, StalledSubscriberBehindRetentionEndsOutOfRangeWithoutGap) {
  const uint64_t head0 = HeadSeq(client());
  Client c(SmallWindowChannel(broker_->address()));
  EventStream stalled(c.events.get(), SubscribeReq({}, {"fill"}, head0), /*read_now=*/false);
  std::this_thread::sleep_for(200ms);  // let the subscription register
  // 3,000 messages of 1 KiB: far beyond the client's flow-control window
  // and the hub's per-subscriber buffer.
  const std::string payload(1024, 'x');
  constexpr int kMessages = 3000;
  std::vector<std::thread> pubs;
  auto pc = NewClient();
  for (int t = 0; t < 4; ++t) {
    pubs.emplace_back([&] {
      for (int i = 0; i < kMessages / 4; ++i) {
        MustPublish(*pc, "fill", payload, v1::DURABILITY_ASYNC);
      }
    });
  }
  for (auto& th : pubs) th.join();
  const uint64_t head = HeadSeq(client());
  grpc::Status last;
  ASSERT_TRUE(WaitTrimmedPast(head0 + 1000, &last)) << "never trimmed: " << Show(last);

  stalled.StartReading();
  std::vector<v1::Event> got = stalled.Take(kMessages, 20s);
  grpc::Status end;
  ASSERT_TRUE(stalled.WaitEnd(&end, 10s)) << "got " << got.size() << " events and no end";
  EXPECT_EQ(end.error_code(), grpc::StatusCode::OUT_OF_RANGE) << Show(end);
  EXPECT_LT(got.size(), static_cast<size_t>(kMessages));
  // What it got is the exact beginning of the sequence: no silent gap.
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].seq(), head0 + 1 + i) << "gap at index " << i;
    EXPECT_EQ(got[i].topic(), "fill");
  }
  EXPECT_LT(head0 + got.size(), head);
}

class EventsE2ERetentionAge : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override { return {"--event-retention-age=1s"}; }
};

// Seqs are "global, gap-free, strictly increasing" and resume works "across
// broker restarts": that must hold even when age retention trimmed all it
// may before the restart (a broker idle for longer than
// --event-retention-age). The newest event is always kept, so the log's head
// survives.
TEST_F(EventsE2ERetentionAge, SeqsKeepIncreasingAfterWholeLogAgedOutAndRestart) {
  uint64_t last = 0;
  for (int i = 0; i < 5; ++i) last = MustPublish(client(), "aged", std::to_string(i));
  ASSERT_GT(last, 0u);
  // Wait (bounded) until every event but the newest aged out: resuming
  // after last-2 is OUT_OF_RANGE, after `last` is fine.
  bool trimmed = false;
  grpc::Status s;
  for (auto until = Clock::now() + 10s; !trimmed && Clock::now() < until;) {
    std::this_thread::sleep_for(250ms);
    auto c = NewClient();
    EventStream probe(c->events.get(), SubscribeReq({}, {"aged"}, last - 2));
    auto ev = probe.Next(150ms);
    trimmed = !ev && probe.WaitEnd(&s, 1ms) && s.error_code() == grpc::StatusCode::OUT_OF_RANGE;
  }
  ASSERT_TRUE(trimmed) << "events never aged out: " << Show(s);

  ASSERT_NO_FATAL_FAILURE(RestartBroker());
  // A subscriber resuming after the last seq it saw is not told it is ahead
  // of the log, and the next message continues the sequence.
  auto c = NewClient();
  EventStream resumed(c->events.get(), SubscribeReq({}, {"aged"}, last));
  std::this_thread::sleep_for(200ms);
  grpc::Status end;
  EXPECT_FALSE(resumed.WaitEnd(&end, 1ms)) << "resume after the restart failed: " << Show(end);
  const uint64_t next = MustPublish(client(), "aged", "after restart");
  EXPECT_GT(next, last) << "event seqs restarted after the log aged out: seq " << next
                        << " reused (last before restart " << last << ")";
  auto ev = resumed.Next(3s);
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->seq(), next);
  EXPECT_EQ(ev->payload(), "after restart");
}

}  // namespace
}  // namespace errand::e2e
