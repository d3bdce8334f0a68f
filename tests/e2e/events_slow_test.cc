// End to end: slow subscribers. One that reads nothing for a while does not
// delay a fast one, and later reads everything in order with no gap (caught
// up from the log on disk); fifty stalled subscribers keep the broker's
// memory bounded.

#include <algorithm>
#include <atomic>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {


class EventsE2ESlow : public BrokerTest {};

using SysClock = std::chrono::system_clock;

// Reads `n` events from `s`, recording the worst lag between an event's time
// and its arrival.
std::vector<v1::Event> ReadTimed(EventStream& s, size_t n, std::chrono::milliseconds timeout,
                                 std::chrono::milliseconds* max_lag) {
  std::vector<v1::Event> out;
  *max_lag = 0ms;
  const auto until = Clock::now() + timeout;
  while (out.size() < n && Clock::now() < until) {
    auto ev = s.Next(std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()));
    if (!ev) break;
    auto lag = std::chrono::duration_cast<std::chrono::milliseconds>(SysClock::now() -
                                                                     Time(ev->time()));
    *max_lag = std::max(*max_lag, lag);
    out.push_back(std::move(*ev));
  }
  return out;
}

std::vector<uint64_t> Seqs(const std::vector<v1::Event>& evs) {
  std::vector<uint64_t> out;
  out.reserve(evs.size());
  for (const auto& e : evs) out.push_back(e.seq());
  return out;
}

TEST_F(EventsE2ESlow, StalledSubscriberDoesNotDelayFastOneAndCatchesUpFromDisk) {
  const std::string q = "flow";
  constexpr int kJobs = 700;  // enqueued, leased, succeeded: 2,100 events
  constexpr size_t kEvents = 3 * kJobs;
  const uint64_t head0 = HeadSeq(client());
  Client slow_client(SmallWindowChannel(broker_->address()));
  EventStream slow(slow_client.events.get(), SubscribeReq({q}, {}, head0), /*read_now=*/false);
  auto fast_client = NewClient();
  EventStream fast(fast_client->events.get(), SubscribeReq({q}, {}, head0));

  // Jobs flow: a producer enqueues in batches, a worker leases and completes.
  // Each event carries the job's 2 KiB header, so the stalled stream is far
  // beyond its flow-control window and the hub's buffer.
  const std::string big(2048, 'h');
  std::atomic<bool> failed{false};
  std::thread producer([&] {
    auto pc = NewClient();
    for (int done = 0; done < kJobs && !failed;) {
      v1::EnqueueBatchRequest req;
      for (int i = 0; i < 50 && done < kJobs; ++i, ++done) {
        v1::EnqueueRequest j = NewJob(q, "p");
        (*j.mutable_headers())["big"] = big;
        *req.add_jobs() = std::move(j);
      }
      v1::EnqueueBatchResponse resp;
      if (!pc->EnqueueBatch(req, &resp).ok()) failed = true;
    }
  });
  std::atomic<int> completed{0};
  std::thread worker([&] {
    auto wc = NewClient();
    const auto until = Clock::now() + 30s;
    while (completed < kJobs && !failed && Clock::now() < until) {
      v1::LeaseResponse resp;
      if (!wc->Lease(LeaseReq({q}, 50, 200ms, "w"), &resp).ok()) {
        failed = true;
        break;
      }
      for (const auto& l : resp.leases()) {
        if (!wc->Complete(l.job().id(), l.lease_token(), "r").ok()) failed = true;
        completed++;
      }
    }
  });

  std::chrono::milliseconds max_lag;
  std::vector<v1::Event> fast_events = ReadTimed(fast, kEvents, 30s, &max_lag);
  const auto fast_done = Clock::now();
  producer.join();
  worker.join();
  ASSERT_FALSE(failed);
  ASSERT_EQ(completed.load(), kJobs);
  ASSERT_EQ(fast_events.size(), kEvents);
  EXPECT_LT(max_lag, testing::Scaled(2000ms)) << "the fast subscriber fell behind";
  EXPECT_FALSE(fast.Next(200ms).has_value());
  auto seqs = Seqs(fast_events);
  EXPECT_TRUE(std::is_sorted(seqs.begin(), seqs.end()));
  EXPECT_EQ(std::adjacent_find(seqs.begin(), seqs.end()), seqs.end());

  // The stalled subscriber has been sitting there; now it reads it all.
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(slow.ended());
  slow.StartReading();
  std::vector<v1::Event> slow_events = slow.Take(kEvents, 30s);
  ASSERT_EQ(slow_events.size(), kEvents) << "the stalled subscriber lost events";
  EXPECT_EQ(Seqs(slow_events), seqs) << "the stalled subscriber's sequence differs";
  for (size_t i = 0; i < slow_events.size(); ++i) {
    ASSERT_EQ(slow_events[i].type(), fast_events[i].type());
    ASSERT_EQ(slow_events[i].job_id(), fast_events[i].job_id());
  }
  EXPECT_FALSE(slow.Next(200ms).has_value());
  // And it is live again: a new job reaches both.
  const std::string id = client().MustEnqueue(NewJob(q));
  auto a = slow.Next(5s);
  auto b = fast.Next(5s);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->job_id(), id);
  EXPECT_EQ(b->job_id(), id);
  EXPECT_EQ(a->seq(), b->seq());
  (void)fast_done;
}

TEST_F(EventsE2ESlow, FiftyStalledSubscribersKeepBrokerMemoryBounded) {
  constexpr int kStalled = 50;
  constexpr int kMessages = 4000;
  const std::string topic = "big.topic";
  // 4 KiB per message: if the broker buffered every event for every stalled
  // subscriber it would hold 50 x 4000 x 4 KiB = 800 MB.
  const std::string payload(4096, 'm');

  // Warm up (allocator, thread pools) before the baseline.
  for (int i = 0; i < 200; ++i) MustPublish(client(), "warmup", payload, v1::DURABILITY_ASYNC);
  const uint64_t head0 = HeadSeq(client());
  const uint64_t rss0 = VmRssKb(broker_->pid());
  ASSERT_GT(rss0, 0u);

  std::vector<std::unique_ptr<Client>> clients;
  std::vector<std::unique_ptr<EventStream>> stalled;
  for (int i = 0; i < kStalled; ++i) {
    clients.push_back(std::make_unique<Client>(SmallWindowChannel(broker_->address())));
    stalled.push_back(std::make_unique<EventStream>(clients.back()->events.get(),
                                                    SubscribeReq({}, {topic}, head0),
                                                    /*read_now=*/false));
  }
  auto fast_client = NewClient();
  EventStream fast(fast_client->events.get(), SubscribeReq({}, {topic}, head0));
  std::this_thread::sleep_for(300ms);

  std::atomic<bool> failed{false};
  std::vector<std::thread> pubs;
  for (int t = 0; t < 4; ++t) {
    pubs.emplace_back([&, t] {
      auto pc = NewClient();
      for (int i = 0; i < kMessages / 4 && !failed; ++i) {
        grpc::ClientContext ctx;
        ctx.set_deadline(testing::In(10s));
        v1::PublishRequest req;
        req.set_topic(topic);
        req.set_payload(payload);
        (*req.mutable_headers())["n"] = std::to_string(t) + "/" + std::to_string(i);
        req.set_durability(v1::DURABILITY_ASYNC);
        v1::PublishResponse resp;
        if (!pc->events->Publish(&ctx, req, &resp).ok()) failed = true;
      }
    });
  }
  std::chrono::milliseconds max_lag;
  std::vector<v1::Event> fast_events = ReadTimed(fast, kMessages, 40s, &max_lag);
  for (auto& th : pubs) th.join();
  ASSERT_FALSE(failed);
  ASSERT_EQ(fast_events.size(), static_cast<size_t>(kMessages));
  EXPECT_LT(max_lag.count(), 3000) << "the fast subscriber was held back by stalled ones";
  for (size_t i = 0; i < fast_events.size(); ++i) {
    ASSERT_EQ(fast_events[i].seq(), head0 + 1 + i);
    ASSERT_EQ(fast_events[i].payload().size(), payload.size());
  }

  std::this_thread::sleep_for(500ms);
  const uint64_t rss1 = VmRssKb(broker_->pid());
  const int64_t growth_mb = (static_cast<int64_t>(rss1) - static_cast<int64_t>(rss0)) / 1024;
  std::cout << "[ broker RSS ] before " << rss0 / 1024 << " MB, with " << kStalled
            << " stalled subscribers after " << kMessages << " x 4 KiB messages " << rss1 / 1024
            << " MB (growth " << growth_mb << " MB)\n";
  // Sanitizer builds keep freed memory in quarantine: RSS says nothing there.
  if (kRssIsMeaningful) {
    EXPECT_LT(growth_mb, 200) << "broker memory grows with stalled subscribers";
  }

  // A few of the stalled ones now read everything, in order, with no gap.
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE("stalled subscriber " + std::to_string(i));
    EXPECT_FALSE(stalled[i]->ended());
    stalled[i]->StartReading();
    std::vector<v1::Event> got = stalled[i]->Take(kMessages, 30s);
    ASSERT_EQ(got.size(), static_cast<size_t>(kMessages));
    EXPECT_EQ(Seqs(got), Seqs(fast_events));
  }
  stalled.clear();
}

}  // namespace
// The scale: 1,000 subscribers of which 950 never read. Each
// subscriber's buffer in the broker is bounded, so memory stays bounded and
// the readers keep up.
TEST_F(EventsE2ESlow, ThousandSubscribersOfWhichMostNeverReadStayBounded) {
  constexpr int kSubscribers = 1000;
  constexpr int kReaders = 50;
  constexpr int kPerChannel = 50;
  constexpr int kMessages = 3000;
  const std::string topic = "fanout";
  const std::string payload(256, 'f');

  for (int i = 0; i < 200; ++i) MustPublish(client(), "warmup", payload, v1::DURABILITY_ASYNC);
  const uint64_t head0 = HeadSeq(client());
  const uint64_t rss0 = VmRssKb(broker_->pid());
  ASSERT_GT(rss0, 0u);

  std::vector<std::unique_ptr<Client>> channels;
  std::vector<std::unique_ptr<EventStream>> subs;
  for (int i = 0; i < kSubscribers; ++i) {
    if (i % kPerChannel == 0) {
      channels.push_back(std::make_unique<Client>(SmallWindowChannel(broker_->address())));
    }
    subs.push_back(std::make_unique<EventStream>(channels.back()->events.get(),
                                                 SubscribeReq({}, {topic}, head0),
                                                 /*read_now=*/i < kReaders));
  }
  std::this_thread::sleep_for(500ms);

  std::atomic<bool> failed{false};
  std::vector<std::thread> pubs;
  for (int t = 0; t < 4; ++t) {
    pubs.emplace_back([&] {
      auto pc = NewClient();
      for (int i = 0; i < kMessages / 4 && !failed; ++i) {
        grpc::ClientContext ctx;
        ctx.set_deadline(testing::In(10s));
        v1::PublishRequest req;
        req.set_topic(topic);
        req.set_payload(payload);
        req.set_durability(v1::DURABILITY_ASYNC);
        v1::PublishResponse resp;
        if (!pc->events->Publish(&ctx, req, &resp).ok()) failed = true;
      }
    });
  }
  for (auto& th : pubs) th.join();
  ASSERT_FALSE(failed);
  // Every reading subscriber gets every message, in order.
  for (int i = 0; i < kReaders; ++i) {
    SCOPED_TRACE("reader " + std::to_string(i));
    std::vector<v1::Event> got = subs[i]->Take(kMessages, 60s);
    ASSERT_EQ(got.size(), static_cast<size_t>(kMessages));
    for (size_t k = 0; k < got.size(); ++k) ASSERT_EQ(got[k].seq(), head0 + 1 + k);
  }
  const uint64_t rss1 = VmRssKb(broker_->pid());
  const int64_t growth_mb = (static_cast<int64_t>(rss1) - static_cast<int64_t>(rss0)) / 1024;
  std::cout << "[ broker RSS ] " << kSubscribers << " subscribers (" << kSubscribers - kReaders
            << " never read), " << kMessages << " x 256 B messages: " << rss0 / 1024 << " MB -> "
            << rss1 / 1024 << " MB\n";
  if (kRssIsMeaningful) {
    EXPECT_LT(growth_mb, 250) << "broker memory grows with subscribers that never read";
  }
  subs.clear();
}

}  // namespace errand::e2e
