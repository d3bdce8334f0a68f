// errand::Subscription against the real broker: an exact, gap-free event
// sequence across a broker SIGKILL + restart and a network drop.

#include <atomic>
#include <set>
#include <thread>

#include "e2e/client_support.h"
#include "e2e/e2e_support.h"
#include "errand/client.h"
#include "errand/subscription.h"

namespace errand::e2e {
namespace {

class ClientSubscriptionTest : public BrokerTest {};

TEST_F(ClientSubscriptionTest, GapFreeAcrossBrokerKillAndNetworkDrop) {
  TcpProxy proxy;
  proxy.SetTarget(broker_->port());
  ClientOptions o;
  o.address = proxy.address();
  o.retry.max_attempts = 40;
  // An enqueue waits out the broker's restart: longer under the sanitizers.
  o.enqueue_timeout = testing::Scaled(o.enqueue_timeout);
  o.rpc_timeout = testing::Scaled(o.rpc_timeout);
  auto lib = errand::Client::Connect(o);
  ASSERT_TRUE(lib.ok()) << lib.status();

  std::mutex mu;
  std::vector<v1::Event> events;
  SubscriptionOptions so;
  so.queues = {"sub"};
  so.start = SubscriptionOptions::Start::kOldest;
  absl::Status error;
  auto sub = Subscription::Start(
      **lib, so,
      [&](const v1::Event& e) {
        std::lock_guard<std::mutex> l(mu);
        events.push_back(e);
      },
      [&](const absl::Status& s) {
        std::lock_guard<std::mutex> l(mu);
        error = s;
      });
  ASSERT_TRUE(sub.ok()) << sub.status();

  constexpr int kJobs = 600;
  std::vector<std::string> acked;
  std::thread producer([&] {
    for (int i = 0; i < kJobs; ++i) {
      auto id = (*lib)->Enqueue(NewJob("sub", std::to_string(i)));
      ASSERT_TRUE(id.ok()) << id.status();
      acked.push_back(*id);
      if (i % 10 == 0) std::this_thread::sleep_for(5ms);
    }
  });
  auto received = [&] {
    std::lock_guard<std::mutex> l(mu);
    return events.size();
  };
  auto start = Clock::now();
  while (received() < 150 && Since(start) < 30s) std::this_thread::sleep_for(2ms);
  proxy.DropAll();  // a network drop
  while (received() < 300 && Since(start) < 30s) std::this_thread::sleep_for(2ms);
  broker_->Kill();  // a crash
  std::string err;
  bool started = broker_->Start(&err);
  EXPECT_TRUE(started) << err;
  if (!started) {
    producer.join();
    return;
  }
  proxy.SetTarget(broker_->port());
  client_ = NewClient();
  producer.join();
  start = Clock::now();
  while (received() < static_cast<size_t>(kJobs) && Since(start) < 30s) {
    std::this_thread::sleep_for(5ms);
  }
  std::this_thread::sleep_for(200ms);  // anything extra would show up now
  sub->reset();

  std::lock_guard<std::mutex> l(mu);
  EXPECT_TRUE(error.ok()) << error;
  ASSERT_EQ(events.size(), static_cast<size_t>(kJobs));
  std::set<std::string> ids;
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].type(), v1::EVENT_TYPE_ENQUEUED);
    ids.insert(events[i].job_id());
    // Only this queue's enqueues happen here, so the global seq is gap-free.
    if (i > 0) {
      ASSERT_EQ(events[i].seq(), events[i - 1].seq() + 1) << "at " << i;
    }
  }
  EXPECT_EQ(ids, std::set<std::string>(acked.begin(), acked.end()));
}

TEST_F(ClientSubscriptionTest, ResumePointAheadOfTheLogStopsWithOutOfRange) {
  ClientOptions o;
  o.address = broker_->address();
  auto lib = errand::Client::Connect(o);
  ASSERT_TRUE(lib.ok());
  SubscriptionOptions so;
  so.start = SubscriptionOptions::Start::kAfterSeq;
  so.after_seq = 1000000;
  std::promise<absl::Status> failed;
  auto sub = Subscription::Start(
      **lib, so, [](const v1::Event&) {}, [&](const absl::Status& s) { failed.set_value(s); });
  ASSERT_TRUE(sub.ok());
  auto f = failed.get_future();
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(f.get().code(), absl::StatusCode::kOutOfRange);
  EXPECT_TRUE((*sub)->done());
  EXPECT_EQ((*sub)->status().code(), absl::StatusCode::kOutOfRange);
}

TEST_F(ClientSubscriptionTest, FiltersByJobAndStartsNow) {
  ClientOptions o;
  o.address = broker_->address();
  auto lib = errand::Client::Connect(o);
  ASSERT_TRUE(lib.ok());
  auto before = (*lib)->Enqueue(NewJob("f"));
  ASSERT_TRUE(before.ok());
  std::atomic<int> n{0};
  std::atomic<uint64_t> wrong{0};
  auto id = (*lib)->Enqueue(NewJob("f"));
  ASSERT_TRUE(id.ok());
  SubscriptionOptions so;
  so.job_ids = {*id};
  so.start = SubscriptionOptions::Start::kOldest;
  auto sub = Subscription::Start(**lib, so, [&](const v1::Event& e) {
    if (e.job_id() != *id) ++wrong;
    ++n;
  });
  ASSERT_TRUE(sub.ok());
  auto lease = client().MustLeaseOne("f", 1s);
  auto lease2 = client().MustLeaseOne("f", 1s);
  EXPECT_TRUE(client().Complete(lease.job().id(), lease.lease_token(), "").ok());
  EXPECT_TRUE(client().Complete(lease2.job().id(), lease2.lease_token(), "").ok());
  auto start = Clock::now();
  while (n < 3 && Since(start) < 10s) std::this_thread::sleep_for(5ms);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(n.load(), 3);  // ENQUEUED, LEASED, SUCCEEDED of that job only
  EXPECT_EQ(wrong.load(), 0u);
  EXPECT_GT((*sub)->last_seq(), 0u);
}

}  // namespace
}  // namespace errand::e2e
