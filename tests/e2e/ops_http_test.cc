// End to end: the broker's HTTP endpoints (/metrics, /healthz, /readyz) on
// the real process over 127.0.0.1: values move with the work done, the
// scrape passes `promtool check metrics`, readiness reports a nearly full
// disk, and the server answers bad requests and idle connections correctly.

#include <cmath>
#include <cstdio>
#include <fstream>
#include <thread>

#include "e2e/e2e_support.h"
#include "e2e/http_support.h"

namespace errand::e2e {
namespace {

class OpsHttpE2E : public BrokerTest {
 protected:
  std::string Scrape() {
    HttpAnswer a = HttpGet(broker_->http_port(), "/metrics");
    EXPECT_EQ(a.status, 200) << a.head << a.body;
    EXPECT_CONTAINS(a.head, ("Content-Type: text/plain; version=0.0.4"));
    return a.body;
  }
  // Scrapes until `series` has `value` (bounded: state changes reach the
  // metrics asynchronously only for long polls and subscribers).
  bool WaitForMetric(const std::string& series, double value) {
    for (int i = 0; i < 200; ++i) {
      if (MetricValue(Scrape(), series) == value) return true;
      std::this_thread::sleep_for(25ms);
    }
    return false;
  }
};

TEST_F(OpsHttpE2E, ServesOnTheHttpPortOnlyOverLoopback) {
  ASSERT_GT(broker_->http_port(), 0);
  EXPECT_NE(broker_->http_port(), broker_->port());
  EXPECT_CONTAINS(broker_->Log(), ("HTTP /metrics, /healthz and /readyz on port " +
                                        std::to_string(broker_->http_port())));
}

TEST_F(OpsHttpE2E, MetricsMoveWithEnqueueLeaseCompleteFailAndDead) {
  const std::string q = "metrics-q";
  std::string before = Scrape();
  EXPECT_TRUE(std::isnan(MetricValue(before, "errand_jobs_enqueued_total{queue=\"" + q + "\"}")));
  const double writes_before = MetricValue(before, "errand_commit_mutations_total");
  const double fsync_count_before = MetricValue(before, "errand_fsync_duration_seconds_count");

  for (int i = 0; i < 3; ++i) client().MustEnqueue(NewJob(q, "p"));
  v1::Lease first = client().MustLeaseOne(q);
  v1::Lease second = client().MustLeaseOne(q);
  ASSERT_TRUE(client().Complete(first.job().id(), first.lease_token(), "ok").ok());
  v1::FailRequest fail;
  fail.set_job_id(second.job().id());
  fail.set_lease_token(second.lease_token());
  fail.set_error("broken");
  fail.set_non_retryable(true);
  ASSERT_TRUE(client().Fail(fail).ok());

  std::string after = Scrape();
  auto v = [&](const std::string& series) { return MetricValue(after, series); };
  const std::string ql = "queue=\"" + q + "\"";
  EXPECT_EQ(v("errand_jobs{" + ql + ",state=\"ready\"}"), 1);
  EXPECT_EQ(v("errand_jobs{" + ql + ",state=\"leased\"}"), 0);
  EXPECT_EQ(v("errand_jobs{" + ql + ",state=\"succeeded\"}"), 1);
  EXPECT_EQ(v("errand_jobs{" + ql + ",state=\"dead\"}"), 1);
  EXPECT_EQ(v("errand_jobs_enqueued_total{" + ql + "}"), 3);
  EXPECT_EQ(v("errand_jobs_leased_total{" + ql + "}"), 2);
  EXPECT_EQ(v("errand_jobs_completed_total{" + ql + "}"), 1);
  EXPECT_EQ(v("errand_jobs_failed_total{" + ql + "}"), 1);
  EXPECT_EQ(v("errand_jobs_dead_total{" + ql + "}"), 1);
  EXPECT_EQ(v("errand_queue_paused{" + ql + "}"), 0);
  // 3 enqueues + 2 leases + complete + fail, each a committed mutation.
  EXPECT_GE(v("errand_commit_mutations_total") - writes_before, 7);
  EXPECT_GT(v("errand_fsync_duration_seconds_count"), fsync_count_before);
  EXPECT_GT(v("errand_commit_batch_size_mutations_count"), 0);
  EXPECT_EQ(v("errand_commit_mode{mode=\"sync\"}"), 1);
  EXPECT_GE(v("errand_event_log_head_seq"), 7);
  EXPECT_GT(v("errand_rocksdb_memtable_bytes{cf=\"jobs\"}"), 0);
  EXPECT_GT(v("process_resident_memory_bytes"), 1 << 20);
  EXPECT_EQ(v("errand_ready"), 1);
  // The dead job is logged, without its payload or error text.
  EXPECT_CONTAINS(broker_->Log(), ("job " + second.job().id() + " in queue " + q +
                                        " is DEAD after 1 attempts"));
  EXPECT_NOT_CONTAINS(broker_->Log(), ("broken"));
}

TEST_F(OpsHttpE2E, RequestsRunInCoreOnTheThreadThatReadThem) {
  // An idle core runs a request's work on the gRPC thread that read it, and
  // the answer that follows its fsync on the fsync thread: neither is handed
  // to the core thread, which runs timers and work that queued while core
  // was busy.
  const std::string before = Scrape();
  const double in_place = MetricValue(before, "errand_core_closures_total{ran=\"in_place\"}");
  const double core_thread =
      MetricValue(before, "errand_core_closures_total{ran=\"core_thread\"}");
  ASSERT_FALSE(std::isnan(in_place));
  ASSERT_FALSE(std::isnan(core_thread));
  constexpr int kCalls = 20;
  for (int i = 0; i < kCalls; ++i) client().MustEnqueue(NewJob("in-place", "p"));
  const std::string after = Scrape();
  // Two closures per call (the request, then its answer after the fsync):
  // the calls are sequential, so nearly all find core idle and run in place.
  EXPECT_GE(MetricValue(after, "errand_core_closures_total{ran=\"in_place\"}") - in_place,
            kCalls * 3 / 2)
      << after;
  // Sync mode: the answers did not go through the core thread (a timer's
  // closure may have).
  EXPECT_LT(MetricValue(after, "errand_core_closures_total{ran=\"core_thread\"}") - core_thread,
            kCalls / 2)
      << after;
}

TEST_F(OpsHttpE2E, ExpiredLeasesAreCounted) {
  const std::string q = "expiry-q";
  client().MustEnqueue(NewJob(q));
  v1::LeaseRequest req = LeaseReq({q}, 1);
  *req.mutable_lease_duration() = Dur(1s);
  auto leases = client().MustLease(req);
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_TRUE(WaitForMetric("errand_lease_expiries_total{queue=\"" + q + "\"}", 1));
  EXPECT_EQ(MetricValue(Scrape(), "errand_jobs{queue=\"" + q + "\",state=\"ready\"}"), 1);
}

TEST_F(OpsHttpE2E, LongPollsSubscribersAndPausedQueuesAreReported) {
  EXPECT_EQ(MetricValue(Scrape(), "errand_long_polls{kind=\"lease\"}"), 0);
  EXPECT_EQ(MetricValue(Scrape(), "errand_subscribers"), 0);
  auto waiter_client = NewClient();
  std::thread waiter([&] { waiter_client->MustLease(LeaseReq({"lp-q"}, 1, 20s)); });
  EXPECT_TRUE(WaitForMetric("errand_long_polls{kind=\"lease\"}", 1));
  client().MustEnqueue(NewJob("lp-q"));  // answers the long poll
  waiter.join();
  EXPECT_TRUE(WaitForMetric("errand_long_polls{kind=\"lease\"}", 0));

  {
    v1::SubscribeRequest sub;
    EventStream stream(client().events.get(), sub);
    EXPECT_TRUE(WaitForMetric("errand_subscribers", 1));
  }
  EXPECT_TRUE(WaitForMetric("errand_subscribers", 0));

  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(10s));
  v1::PauseQueueRequest pause;
  pause.set_queue("lp-q");
  v1::PauseQueueResponse presp;
  ASSERT_TRUE(client().admin->PauseQueue(&ctx, pause, &presp).ok());
  EXPECT_EQ(MetricValue(Scrape(), "errand_queue_paused{queue=\"lp-q\"}"), 1);
  EXPECT_CONTAINS(broker_->Log(), ("queue lp-q paused"));
}

// Where promtool is installed (Debian package prometheus), "" when not.
std::string Promtool() {
  for (const char* p : {"/usr/bin/promtool", "/usr/local/bin/promtool"}) {
    if (::access(p, X_OK) == 0) return p;
  }
  return "";
}

TEST_F(OpsHttpE2E, PromtoolAcceptsTheScrape) {
  const std::string promtool = Promtool();
  if (promtool.empty()) {
    GTEST_SKIP() << "promtool is not installed (Debian package prometheus; tools/dev.sh deps "
                    "installs it): the scrape was not checked with promtool";
  }
  // Some of everything, so that every family has samples.
  client().MustEnqueue(NewJob("promtool-q", "x"));
  v1::Lease l = client().MustLeaseOne("promtool-q");
  ASSERT_TRUE(client().Complete(l.job().id(), l.lease_token(), "").ok());
  v1::SubscribeRequest sub;
  EventStream stream(client().events.get(), sub);
  ASSERT_TRUE(WaitForMetric("errand_subscribers", 1));

  const std::string file = dir_.path() + "/scrape.txt";
  std::ofstream(file) << Scrape();
  // promtool reads the scrape on stdin.
  RunResult r = RunCommand({"sh", "-c", "exec \"$0\" check metrics < \"$1\"", promtool, file}, {},
                 dir_.path());
  EXPECT_EQ(r.exit_code, 0) << "promtool check metrics:\n" << r.out << r.err;
  EXPECT_EQ(r.out + r.err, "") << "promtool reported problems";
}

TEST_F(OpsHttpE2E, HealthzAndReadyzAnswer200WhenServing) {
  HttpAnswer h = HttpGet(broker_->http_port(), "/healthz");
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.body, "ok\n");
  HttpAnswer r = HttpGet(broker_->http_port(), "/readyz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ready\n");
}

TEST_F(OpsHttpE2E, BadRequestsGetTheirStatus) {
  const int port = broker_->http_port();
  HttpAnswer a = HttpRaw(port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(a.status, 405);
  EXPECT_CONTAINS(a.head, ("Allow: GET, HEAD"));
  EXPECT_EQ(HttpGet(port, "/nope").status, 404);
  EXPECT_EQ(HttpRaw(port, "NONSENSE\r\n\r\n").status, 400);
  HttpAnswer big = HttpRaw(port, "GET /metrics HTTP/1.1\r\nX-Big: " + std::string(10000, 'a') +
                                     "\r\n\r\n");
  EXPECT_EQ(big.status, 431);
  HttpAnswer head = HttpRaw(port, "HEAD /healthz HTTP/1.1\r\n\r\n");
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.body, "");
  EXPECT_CONTAINS(head.head, ("Content-Length: 3"));
  // The server still serves after all that.
  EXPECT_EQ(HttpGet(port, "/healthz").status, 200);
}

class OpsHttpTimeoutE2E : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override { return {"--http-timeout=200ms"}; }
};

TEST_F(OpsHttpTimeoutE2E, IdleConnectionIsClosedWithoutAnswer) {
  // Half a request, then silence: the broker closes the connection (our own
  // read would give up only after 60 s).
  HttpAnswer a = HttpRaw(broker_->http_port(), "GET /metrics HTTP/1.1\r\n", 60s);
  EXPECT_TRUE(a.closed);
  EXPECT_FALSE(a.ok);
  EXPECT_EQ(HttpGet(broker_->http_port(), "/healthz").status, 200);
}

class OpsHttpDiskFullE2E : public BrokerTest {
 protected:
  // More free space than any disk has: the broker must report not ready.
  std::vector<std::string> BrokerFlags() const override {
    return {"--ready-min-free-bytes=4611686018427387904"};
  }
};

TEST_F(OpsHttpDiskFullE2E, ReadyzIs503WhenTheDiskIsNearlyFull) {
  HttpAnswer r = HttpGet(broker_->http_port(), "/readyz");
  EXPECT_EQ(r.status, 503);
  EXPECT_CONTAINS(r.body, ("disk nearly full"));
  EXPECT_EQ(HttpGet(broker_->http_port(), "/healthz").status, 200);
  EXPECT_EQ(MetricValue(HttpGet(broker_->http_port(), "/metrics").body, "errand_ready"), 0);
}

class OpsHttpDisabledE2E : public BrokerTest {
 protected:
  // (`--http-listen=` with nothing after the '=' would take the next
  // argument as its value, as for every CLI11 option.)
  std::vector<std::string> BrokerFlags() const override { return {"--http-listen", ""}; }
};

TEST_F(OpsHttpDisabledE2E, EmptyHttpListenServesNoHttp) {
  EXPECT_EQ(broker_->http_port(), 0);
  EXPECT_NOT_CONTAINS(broker_->Log(), ("HTTP /metrics"));
  EXPECT_TRUE(client().MustEnqueue(NewJob("q")) != "");
}

TEST(OpsHttpStartE2E, BadHttpListenStopsTheBrokerWithAMessage) {
  testing::TempDir dir;
  testing::BrokerProcess broker(dir.path() + "/data", {"--http-listen=localhost:99"});
  std::string error;
  EXPECT_FALSE(broker.Start(&error));
  EXPECT_CONTAINS(error, ("--http-listen"));
  EXPECT_CONTAINS(error, ("is not IP:PORT"));
}

}  // namespace
}  // namespace errand::e2e

namespace errand::e2e {
namespace {

class OpsHttpSubscriberE2E : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override {
    return {"--event-retention-count=50", "--event-retention-age=1h"};
  }
};

// A subscriber that stops reading shows up as lag and catch-up; once the log
// it needs is trimmed it is cut off, counted and logged.
TEST_F(OpsHttpSubscriberE2E, StalledSubscriberShowsLagThenIsCutOff) {
  const int port = broker_->http_port();
  const uint64_t head0 = HeadSeq(client());
  Client c(SmallWindowChannel(broker_->address()));
  EventStream stalled(c.events.get(), SubscribeReq({}, {"fill"}, head0), /*read_now=*/false);
  ASSERT_TRUE([&] {
    for (int i = 0; i < 200; ++i) {
      if (MetricValue(HttpGet(port, "/metrics").body, "errand_subscribers") == 1) return true;
      std::this_thread::sleep_for(25ms);
    }
    return false;
  }());
  // 2,000 messages of 1 KiB: beyond the client's flow-control window and the
  // hub's per-subscriber buffer.
  const std::string payload(1024, 'x');
  std::vector<std::thread> pubs;
  auto pc = NewClient();
  for (int t = 0; t < 4; ++t) {
    pubs.emplace_back([&] {
      for (int i = 0; i < 500; ++i) MustPublish(*pc, "fill", payload, v1::DURABILITY_ASYNC);
    });
  }
  for (auto& th : pubs) th.join();
  std::string scrape = HttpGet(port, "/metrics").body;
  EXPECT_GT(MetricValue(scrape, "errand_subscriber_lag_max_events"), 100) << scrape;
  EXPECT_EQ(MetricValue(scrape, "errand_subscribers_catching_up"), 1);
  EXPECT_EQ(MetricValue(scrape, "errand_subscribers_cut_off_total"), 0);
  // Wait (bounded) for the trim, seen through the metrics.
  bool trimmed = false;
  for (int i = 0; i < 200 && !trimmed; ++i) {
    trimmed = MetricValue(HttpGet(port, "/metrics").body, "errand_event_log_first_seq") >
              static_cast<double>(head0 + 1000);
    if (!trimmed) std::this_thread::sleep_for(50ms);
  }
  ASSERT_TRUE(trimmed);

  stalled.StartReading();
  stalled.Take(2000, 20s);
  grpc::Status end;
  ASSERT_TRUE(stalled.WaitEnd(&end, 10s));
  EXPECT_EQ(end.error_code(), grpc::StatusCode::OUT_OF_RANGE) << Show(end);
  EXPECT_EQ(MetricValue(HttpGet(port, "/metrics").body, "errand_subscribers_cut_off_total"), 1);
  EXPECT_CONTAINS(broker_->Log(), "cut off: it fell behind the retained event log");
}

}  // namespace
}  // namespace errand::e2e
