// End to end: a subscriber that disconnects mid-stream and resubscribes with
// after_seq = the last seq it saw receives exactly the rest of the sequence:
// no gap, no duplicate; also across a broker SIGKILL and restart (the event
// log and its seqs are durable).

#include <map>
#include <set>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

class EventsE2EResume : public BrokerTest {
 protected:
  // Enqueues `n` jobs into `queue` in batches of at most 100.
  void EnqueueMany(const std::string& queue, int n) {
    for (int done = 0; done < n;) {
      v1::EnqueueBatchRequest req;
      for (int i = 0; i < 100 && done < n; ++i, ++done) {
        *req.add_jobs() = NewJob(queue, "job-" + std::to_string(done));
      }
      v1::EnqueueBatchResponse resp;
      grpc::Status s = client().EnqueueBatch(req, &resp);
      ASSERT_TRUE(s.ok()) << Show(s);
    }
  }
  // Leases `n` jobs of `queue` and completes them (2n events).
  void LeaseAndComplete(const std::string& queue, int n) {
    auto leases = client().MustLease(LeaseReq({queue}, n, 0ms, "resume-worker"));
    ASSERT_EQ(leases.size(), static_cast<size_t>(n));
    for (const auto& l : leases) {
      grpc::Status s = client().Complete(l.job().id(), l.lease_token(), "ok");
      ASSERT_TRUE(s.ok()) << Show(s);
    }
  }
  void PublishMany(const std::string& topic, int n, const std::string& tag) {
    for (int i = 0; i < n; ++i) MustPublish(client(), topic, tag + std::to_string(i));
  }

  // Same seqs, types, jobs and topics, in the same order.
  static void ExpectSameEvents(const std::vector<v1::Event>& got,
                               const std::vector<v1::Event>& want) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i].seq(), want[i].seq()) << "at index " << i;
      EXPECT_EQ(got[i].type(), want[i].type()) << "seq " << got[i].seq();
      EXPECT_EQ(got[i].job_id(), want[i].job_id()) << "seq " << got[i].seq();
      EXPECT_EQ(got[i].topic(), want[i].topic()) << "seq " << got[i].seq();
      EXPECT_EQ(got[i].payload(), want[i].payload()) << "seq " << got[i].seq();
    }
  }
  static void ExpectIncreasing(const std::vector<v1::Event>& evs) {
    for (size_t i = 1; i < evs.size(); ++i) {
      ASSERT_GT(evs[i].seq(), evs[i - 1].seq()) << "at index " << i;
    }
  }
};

TEST_F(EventsE2EResume, ResubscribeAfterLastSeqGetsExactRemainder) {
  const std::string q = "resume-q";
  const std::string t = "resume.topic";
  const uint64_t head0 = HeadSeq(client());
  auto ref_client = NewClient();
  EventStream ref(ref_client->events.get(), SubscribeReq({q}, {t}, head0));
  auto c1 = NewClient();
  auto first = std::make_unique<EventStream>(c1->events.get(), SubscribeReq({q}, {t}, head0));

  // Phase 1: 200 enqueued, 50 messages, 50 leased and completed: 350 events.
  ASSERT_NO_FATAL_FAILURE(EnqueueMany(q, 200));
  PublishMany(t, 50, "a");
  ASSERT_NO_FATAL_FAILURE(LeaseAndComplete(q, 50));
  // Read part of it, then drop the stream.
  std::vector<v1::Event> seen = first->Take(137, 10s);
  ASSERT_EQ(seen.size(), 137u);
  first.reset();

  // Phase 2, while disconnected: 100 enqueued, 30 messages.
  ASSERT_NO_FATAL_FAILURE(EnqueueMany(q, 100));
  PublishMany(t, 30, "b");

  // Resume, then phase 3 is delivered live: 20 enqueued, 10 messages.
  auto c2 = NewClient();
  EventStream resumed(c2->events.get(), SubscribeReq({q}, {t}, seen.back().seq()));
  ASSERT_NO_FATAL_FAILURE(EnqueueMany(q, 20));
  PublishMany(t, 10, "c");

  constexpr size_t kTotal = 350 + 130 + 30;
  std::vector<v1::Event> all = ref.Take(kTotal, 20s);
  ASSERT_EQ(all.size(), kTotal);
  std::vector<v1::Event> rest = resumed.Take(kTotal - seen.size(), 20s);
  ASSERT_EQ(rest.size(), kTotal - seen.size());
  // No more than that (no duplicate at the seam, nothing extra).
  auto extra = resumed.Next(300ms);
  EXPECT_FALSE(extra.has_value()) << extra->DebugString();
  extra = ref.Next(1ms);
  EXPECT_FALSE(extra.has_value()) << extra->DebugString();

  ExpectIncreasing(all);
  EXPECT_GT(all.front().seq(), head0);
  std::vector<v1::Event> joined = seen;
  joined.insert(joined.end(), rest.begin(), rest.end());
  ExpectSameEvents(joined, all);
  EXPECT_EQ(rest.front().seq() > seen.back().seq(), true);

  std::map<int, int> by_type;
  for (const auto& e : all) by_type[e.type()]++;
  EXPECT_EQ(by_type[v1::EVENT_TYPE_ENQUEUED], 320);
  EXPECT_EQ(by_type[v1::EVENT_TYPE_MESSAGE], 90);
  EXPECT_EQ(by_type[v1::EVENT_TYPE_LEASED], 50);
  EXPECT_EQ(by_type[v1::EVENT_TYPE_SUCCEEDED], 50);
}

TEST_F(EventsE2EResume, ResumeAcrossBrokerSigkillAndRestart) {
  const std::string q = "crash-q";
  const std::string t = "crash.topic";
  const uint64_t head0 = HeadSeq(client());
  auto c1 = NewClient();
  auto sub = std::make_unique<EventStream>(c1->events.get(), SubscribeReq({q}, {t}, head0));

  // 150 enqueued, 30 messages, 40 leased and completed: 260 acknowledged
  // (fsynced) events.
  ASSERT_NO_FATAL_FAILURE(EnqueueMany(q, 150));
  PublishMany(t, 30, "before-");
  ASSERT_NO_FATAL_FAILURE(LeaseAndComplete(q, 40));
  std::vector<v1::Event> seen = sub->Take(100, 10s);
  ASSERT_EQ(seen.size(), 100u);

  ASSERT_NO_FATAL_FAILURE(CrashAndRestartBroker());
  // The old stream ended with an error, not OK.
  grpc::Status end;
  ASSERT_TRUE(sub->WaitEnd(&end, 10s)) << "subscription survived a SIGKILL";
  EXPECT_FALSE(end.ok());
  sub.reset();

  auto c2 = NewClient();
  EventStream resumed(c2->events.get(), SubscribeReq({q}, {t}, seen.back().seq()));
  // After the restart: 50 enqueued, 10 messages.
  ASSERT_NO_FATAL_FAILURE(EnqueueMany(q, 50));
  PublishMany(t, 10, "after-");

  constexpr size_t kTotal = 260 + 60;
  std::vector<v1::Event> rest = resumed.Take(kTotal - seen.size(), 20s);
  ASSERT_EQ(rest.size(), kTotal - seen.size());
  auto extra = resumed.Next(300ms);
  EXPECT_FALSE(extra.has_value()) << extra->DebugString();

  // The whole log from before the crash, read after it: the same seqs.
  auto c3 = NewClient();
  EventStream ref(c3->events.get(), SubscribeReq({q}, {t}, head0));
  std::vector<v1::Event> all = ref.Take(kTotal, 20s);
  ASSERT_EQ(all.size(), kTotal);
  ExpectIncreasing(all);
  std::vector<v1::Event> joined = seen;
  joined.insert(joined.end(), rest.begin(), rest.end());
  ExpectSameEvents(joined, all);

  std::map<int, int> by_type;
  std::set<std::string> payloads;
  for (const auto& e : all) {
    by_type[e.type()]++;
    if (e.type() == v1::EVENT_TYPE_MESSAGE) payloads.insert(e.payload());
  }
  EXPECT_EQ(by_type[v1::EVENT_TYPE_ENQUEUED], 200);
  EXPECT_EQ(by_type[v1::EVENT_TYPE_MESSAGE], 40);
  EXPECT_EQ(by_type[v1::EVENT_TYPE_LEASED], 40);
  EXPECT_EQ(by_type[v1::EVENT_TYPE_SUCCEEDED], 40);
  EXPECT_EQ(payloads.count("before-29"), 1u);
  EXPECT_EQ(payloads.count("after-9"), 1u);
}

// In async mode acknowledged writes survive a process crash too, and so do
// their events: the resume after SIGKILL is just as exact.
class EventsE2EResumeAsync : public EventsE2EResume {
 protected:
  std::vector<std::string> BrokerFlags() const override {
    return {"--commit=async", "--sync-interval=5000"};
  }
};

TEST_F(EventsE2EResumeAsync, ResumeAcrossSigkillKeepsAcknowledgedAsyncEvents) {
  const std::string q = "async-q";
  const uint64_t head0 = HeadSeq(client());
  auto c1 = NewClient();
  auto sub = std::make_unique<EventStream>(c1->events.get(), SubscribeReq({q}, {"async.t"}, head0));
  ASSERT_NO_FATAL_FAILURE(EnqueueMany(q, 100));
  PublishMany("async.t", 20, "m");
  std::vector<v1::Event> seen = sub->Take(50, 10s);
  ASSERT_EQ(seen.size(), 50u);
  ASSERT_NO_FATAL_FAILURE(CrashAndRestartBroker());
  sub.reset();
  auto c2 = NewClient();
  EventStream resumed(c2->events.get(), SubscribeReq({q}, {"async.t"}, seen.back().seq()));
  std::vector<v1::Event> rest = resumed.Take(70, 10s);
  ASSERT_EQ(rest.size(), 70u) << "acknowledged async events lost in a process crash";
  EXPECT_FALSE(resumed.Next(300ms).has_value());
  std::vector<v1::Event> joined = seen;
  joined.insert(joined.end(), rest.begin(), rest.end());
  ExpectIncreasing(joined);
  EXPECT_EQ(joined.back().payload(), "m19");
}

}  // namespace
}  // namespace errand::e2e
