// Connection liveness against the real broker: a silent partition (the
// proxy stops forwarding, no FIN, no RST) is noticed by HTTP/2 keepalive
// pings on both sides. An idle library Worker or Subscription reconnects and
// goes on; the broker drops the dead worker's stream and releases its lease
// after --worker-grace instead of the lease; clients pinging at the allowed
// interval are not sent GOAWAY too_many_pings; bad ClientOptions are refused.

#include <atomic>
#include <fstream>
#include <mutex>
#include <thread>

#include "e2e/client_support.h"
#include "e2e/e2e_support.h"
#include "errand/client.h"
#include "errand/subscription.h"
#include "errand/worker.h"

namespace errand::e2e {
namespace {

// Waits (up to `timeout`, scaled) until `pred` holds.
bool WaitFor(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto start = Clock::now();
  while (Since(start) < testing::Scaled(timeout)) {
    if (pred()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return pred();
}

// Clients through the proxy ping every second and give up after a second
// without an answer; the broker lets them (it would send GOAWAY
// too_many_pings to clients pinging faster than its default 5s), and pings
// and gives up as fast itself.
class KeepaliveTest : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override {
    return {"--keepalive-min-client-interval=500ms", "--keepalive-time=1s",
            "--keepalive-timeout=1s", "--worker-grace=1s"};
  }
  std::unique_ptr<errand::Client> ConnectThrough(const TcpProxy& proxy) {
    ClientOptions co;
    co.address = proxy.address();
    co.keepalive_time = 1s;
    co.keepalive_timeout = 1s;
    auto c = errand::Client::Connect(co);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }
};

// An idle Worker (Connect stream, empty queue) behind a silent partition
// notices it, reconnects through a new connection and takes the next job.
TEST_F(KeepaliveTest, IdleWorkerReconnectsAfterASilentPartition) {
  TcpProxy proxy;
  proxy.SetTarget(broker_->port());
  auto via_proxy = ConnectThrough(proxy);
  ASSERT_NE(via_proxy, nullptr);
  ClientOptions direct_opts;
  direct_opts.address = broker_->address();
  auto direct = errand::Client::Connect(direct_opts);
  ASSERT_TRUE(direct.ok()) << direct.status();

  std::atomic<int> handled{0};
  WorkerOptions o;
  o.queues = {"idle"};
  auto worker = Worker::Start(*via_proxy, o, [&](const v1::Job& job, JobContext&)
                                                 -> absl::StatusOr<std::string> {
    ++handled;
    return job.payload() + " done";
  });
  ASSERT_TRUE(worker.ok()) << worker.status();
  // The stream is up: a first job goes through it.
  auto warm = (*direct)->Enqueue(NewJob("idle", "warm-up"));
  ASSERT_TRUE(warm.ok()) << warm.status();
  auto warm_done = (*direct)->Wait(*warm, testing::Scaled(20s));
  ASSERT_TRUE(warm_done.ok()) << warm_done.status();
  ASSERT_EQ(warm_done->state(), v1::JOB_STATE_SUCCEEDED);
  // Idle on the empty queue for a while: a few pings go unanswered by data.
  std::this_thread::sleep_for(3s);
  ASSERT_EQ(proxy.accepted(), 1) << "the connection broke before the partition";

  proxy.SilenceAll();
  // The worker notices within its keepalive (1s + 1s); without pings on its
  // idle stream it would wait forever.
  ASSERT_TRUE(WaitFor([&] { return proxy.accepted() >= 2; }, 20s))
      << "the worker did not reconnect after the partition";
  auto after = (*direct)->Enqueue(NewJob("idle", "after"));
  ASSERT_TRUE(after.ok()) << after.status();
  auto done = (*direct)->Wait(*after, testing::Scaled(30s));
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done->result(), "after done");
  (*worker)->Stop();
  EXPECT_EQ(handled.load(), 2);
}

// An idle Subscription on a quiet topic behind a silent partition resubscribes
// and resumes after its last event: the event published during the partition
// and the one after it both arrive, in order, with no gap.
TEST_F(KeepaliveTest, IdleSubscriptionResubscribesAfterASilentPartitionGapFree) {
  TcpProxy proxy;
  proxy.SetTarget(broker_->port());
  auto via_proxy = ConnectThrough(proxy);
  ASSERT_NE(via_proxy, nullptr);

  std::mutex mu;
  std::vector<v1::Event> events;
  SubscriptionOptions so;
  so.topics = {"quiet"};
  so.start = SubscriptionOptions::Start::kAfterSeq;
  so.after_seq = HeadSeq(client());
  auto sub = Subscription::Start(*via_proxy, so, [&](const v1::Event& e) {
    std::lock_guard<std::mutex> l(mu);
    events.push_back(e);
  });
  ASSERT_TRUE(sub.ok()) << sub.status();
  auto received = [&] {
    std::lock_guard<std::mutex> l(mu);
    return events.size();
  };
  uint64_t first = MustPublish(client(), "quiet", "before");
  ASSERT_TRUE(WaitFor([&] { return received() == 1; }, 20s));
  // Idle on the quiet topic, pinging every second: the broker allows it
  // (--keepalive-min-client-interval=500ms), so no GOAWAY too_many_pings
  // breaks the connection.
  std::this_thread::sleep_for(5s);
  ASSERT_EQ(proxy.accepted(), 1) << "the idle connection was closed before the partition";

  proxy.SilenceAll();
  uint64_t during = MustPublish(client(), "quiet", "during");  // lost on the dead connection
  ASSERT_TRUE(WaitFor([&] { return proxy.accepted() >= 2; }, 20s))
      << "the subscription did not reconnect after the partition";
  ASSERT_TRUE(WaitFor([&] { return received() >= 2; }, 30s));
  uint64_t last = MustPublish(client(), "quiet", "after");
  ASSERT_TRUE(WaitFor([&] { return received() >= 3; }, 30s));
  std::this_thread::sleep_for(200ms);  // anything extra would show up now
  EXPECT_TRUE((*sub)->status().ok()) << (*sub)->status();
  sub->reset();

  std::lock_guard<std::mutex> l(mu);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].seq(), first);
  EXPECT_EQ(events[1].seq(), during);
  EXPECT_EQ(events[2].seq(), last);
  EXPECT_EQ(events[0].payload(), "before");
  EXPECT_EQ(events[1].payload(), "during");
  EXPECT_EQ(events[2].payload(), "after");
}

// An enqueue caught by a silent partition on the client's EnqueueStream is
// sent again on a new connection once keepalive finds the old one dead, well
// within its timeout, and makes exactly one job.
TEST_F(KeepaliveTest, EnqueueOnASilentlyDeadConnectionIsResentOnANewOne) {
  TcpProxy proxy;
  proxy.SetTarget(broker_->port());
  auto via_proxy = ConnectThrough(proxy);
  ASSERT_NE(via_proxy, nullptr);
  auto first = via_proxy->Enqueue(NewJob("resend", "first"));  // the stream is up
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(proxy.accepted(), 1);

  proxy.SilenceAll();
  EnqueueOptions eo;
  eo.timeout = testing::Scaled(20s);
  auto second = via_proxy->Enqueue(NewJob("resend", "second"), eo);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_GE(proxy.accepted(), 2);
  EXPECT_EQ(client().MustGetJob(*second).payload(), "second");
  EXPECT_EQ(client().Stats("resend").ready(), 2u) << "the resent enqueue made a second job";
}

// Broker side: a worker holding a job with a 30 minute lease goes silent
// behind the partition. The broker (keepalive set in its TOML config file)
// finds the connection dead, drops its Connect stream and releases the job
// after --worker-grace, to a worker connected directly.
TEST(KeepaliveBrokerE2E, SilentWorkersLeaseIsReleasedAfterTheGraceNotTheLease) {
  testing::TempDir dir;
  const std::string file = dir.path() + "/errand.toml";
  std::ofstream(file) << "keepalive-time = \"1s\"\n"
                         "keepalive-timeout = \"1s\"\n"
                         "worker-grace = \"1s\"\n";
  testing::BrokerProcess broker(dir.path() + "/data", {"--config", file});
  std::string error;
  ASSERT_TRUE(broker.Start(&error)) << error;
  Client direct(broker.Channel());

  TcpProxy proxy;
  proxy.SetTarget(broker.port());
  ClientOptions co;
  co.address = proxy.address();
  // This worker never gives up on its side: only the broker can notice.
  co.keepalive_time = std::chrono::hours(1);
  co.keepalive_timeout = std::chrono::hours(1);
  auto via_proxy = errand::Client::Connect(co);
  ASSERT_TRUE(via_proxy.ok()) << via_proxy.status();

  auto job = NewJob("held", "x");
  *job.mutable_lease_duration() = Dur(std::chrono::minutes(30));
  std::string id = direct.MustEnqueue(job);
  std::atomic<bool> started{false}, release{false};
  WorkerOptions o;
  o.queues = {"held"};
  o.worker_id = "silent";
  auto worker = Worker::Start(**via_proxy, o, [&](const v1::Job&, JobContext&)
                                                  -> absl::StatusOr<std::string> {
    started = true;
    auto t0 = Clock::now();
    while (!release && Since(t0) < 120s) std::this_thread::sleep_for(5ms);
    return std::string("late");
  });
  ASSERT_TRUE(worker.ok()) << worker.status();
  ASSERT_TRUE(WaitFor([&] { return started.load(); }, 20s));
  ASSERT_EQ(direct.MustGetJob(id).state(), v1::JOB_STATE_LEASED);

  proxy.SilenceAll();
  std::vector<v1::Lease> got;
  auto t0 = Clock::now();
  while (got.empty() && Since(t0) < testing::Scaled(30s)) {
    got = direct.MustLease(LeaseReq({"held"}, 1, 1s, "direct"));
  }
  ASSERT_EQ(got.size(), 1u) << "the broker kept the silent worker's lease\n" << broker.Log();
  EXPECT_EQ(got[0].job().id(), id);
  EXPECT_EQ(got[0].job().attempts(), 2u);
  ASSERT_GE(got[0].job().history_size(), 1);
  EXPECT_EQ(got[0].job().history(0).outcome(), v1::ATTEMPT_OUTCOME_WORKER_LOST);
  EXPECT_EQ(got[0].job().history(0).worker_id(), "silent");
  // Heal the partition the quick way (its worker would wait for answers on
  // the dead connection), then stop.
  proxy.DropAll();
  release = true;
  (*worker)->Stop();
  EXPECT_EQ(broker.Stop(), 0);
}

TEST(KeepaliveClientOptions, OutOfRangeKeepaliveIsInvalidArgumentNamingTheField) {
  ClientOptions defaults;
  EXPECT_EQ(defaults.keepalive_time, 10s);
  EXPECT_EQ(defaults.keepalive_timeout, 10s);
  // At or above the broker's default --keepalive-min-client-interval (5s).
  EXPECT_GE(defaults.keepalive_time, 5s);

  struct Bad {
    std::chrono::milliseconds time, timeout;
    const char* field;
  };
  const Bad cases[] = {
      {0ms, 10s, "ClientOptions.keepalive_time "},
      {999ms, 10s, "ClientOptions.keepalive_time "},
      {std::chrono::hours(24) + 1ms, 10s, "ClientOptions.keepalive_time "},
      {-1s, 10s, "ClientOptions.keepalive_time "},
      {10s, 0ms, "ClientOptions.keepalive_timeout "},
      {10s, 99ms, "ClientOptions.keepalive_timeout "},
      {10s, std::chrono::hours(1) + 1ms, "ClientOptions.keepalive_timeout "},
  };
  for (const Bad& bad : cases) {
    ClientOptions o;
    o.address = "127.0.0.1:1";  // never reached: the options are refused first
    o.connect_timeout = 0ms;
    o.keepalive_time = bad.time;
    o.keepalive_timeout = bad.timeout;
    auto c = errand::Client::Connect(o);
    ASSERT_FALSE(c.ok()) << bad.field << bad.time.count() << "/" << bad.timeout.count();
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
    EXPECT_CONTAINS(std::string(c.status().message()), bad.field);
  }
  // The bounds themselves are accepted (a lazy connection: nothing listens).
  for (auto [time, timeout] : {std::pair{1000ms, 100ms},
                               std::pair{std::chrono::milliseconds(std::chrono::hours(24)),
                                         std::chrono::milliseconds(std::chrono::hours(1))}}) {
    ClientOptions o;
    o.address = "127.0.0.1:1";
    o.connect_timeout = 0ms;
    o.keepalive_time = time;
    o.keepalive_timeout = timeout;
    auto c = errand::Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
  }
}

}  // namespace
}  // namespace errand::e2e
