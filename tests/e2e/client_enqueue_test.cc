// errand::Client against the real broker: the three enqueue styles from many
// threads, batches, Get/Wait/Cancel/EnqueueAndWatch, and a broker SIGKILL +
// restart in the middle of a stream of enqueues.

#include <atomic>
#include <filesystem>
#include <future>
#include <set>
#include <thread>

#include "e2e/client_support.h"
#include "e2e/e2e_support.h"
#include "errand/client.h"

namespace errand::e2e {
namespace {

class ClientTest : public BrokerTest {
 protected:
  std::unique_ptr<errand::Client> Connect(const std::string& address) {
    ClientOptions o;
    o.address = address;
    o.retry.max_attempts = 40;
    auto c = errand::Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::move(*c) : nullptr;
  }
  std::unique_ptr<errand::Client> Connect() { return Connect(broker_->address()); }
};

// How many sockets of this process the process `pid` also holds.
int SocketsSharedWith(pid_t pid) {
  auto sockets = [](const std::string& dir) {
    std::set<std::string> out;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      std::string target = std::filesystem::read_symlink(e.path(), ec).string();
      if (!ec && target.rfind("socket:", 0) == 0) out.insert(target);
    }
    return out;
  };
  auto mine = sockets("/proc/self/fd");
  int shared = 0;
  for (const auto& s : sockets("/proc/" + std::to_string(pid) + "/fd")) shared += mine.count(s);
  return shared;
}

TEST_F(ClientTest, ConnectToNothingIsUnavailable) {
  ClientOptions o;
  o.address = "127.0.0.1:1";
  o.connect_timeout = 300ms;
  auto c = errand::Client::Connect(o);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();
}

TEST_F(ClientTest, ThreeEnqueueStylesFromManyThreadsMakeDistinctJobs) {
  auto c = Connect();
  ASSERT_TRUE(c);
  constexpr int kThreads = 8, kPerThread = 200;
  std::vector<std::vector<std::string>> ids(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto job = NewJob("styles", "p" + std::to_string(t));
      if (t % 3 == 0) {  // blocking
        for (int i = 0; i < kPerThread; ++i) {
          auto id = c->Enqueue(job);
          ASSERT_TRUE(id.ok()) << id.status();
          ids[t].push_back(*id);
        }
      } else if (t % 3 == 1) {  // callback
        std::mutex mu;
        std::condition_variable cv;
        int done = 0;
        std::vector<std::string> got;
        for (int i = 0; i < kPerThread; ++i) {
          c->EnqueueAsync(job, [&](absl::StatusOr<v1::EnqueueResponse> r) {
            std::lock_guard<std::mutex> l(mu);
            EXPECT_TRUE(r.ok()) << r.status();
            if (r.ok()) got.push_back(r->job_id());
            ++done;
            cv.notify_all();
          });
        }
        std::unique_lock<std::mutex> l(mu);
        ASSERT_TRUE(cv.wait_for(l, 60s, [&] { return done == kPerThread; }));
        ids[t] = got;
      } else {  // future
        std::vector<std::future<absl::StatusOr<v1::EnqueueResponse>>> fs;
        for (int i = 0; i < kPerThread; ++i) fs.push_back(c->EnqueueFuture(job));
        for (auto& f : fs) {
          ASSERT_EQ(f.wait_for(60s), std::future_status::ready);
          auto r = f.get();
          ASSERT_TRUE(r.ok()) << r.status();
          ids[t].push_back(r->job_id());
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  std::set<std::string> all;
  for (auto& v : ids) all.insert(v.begin(), v.end());
  EXPECT_EQ(all.size(), static_cast<size_t>(kThreads * kPerThread));
  EXPECT_EQ(TotalJobs(client().Stats("styles")), static_cast<uint64_t>(kThreads * kPerThread));
  int checked = 0;
  for (const auto& id : all) {
    if (++checked % 16 != 0) continue;
    auto job = c->Get(id);
    ASSERT_TRUE(job.ok()) << job.status();
    EXPECT_EQ(job->queue(), "styles");
  }
}

TEST_F(ClientTest, EnqueueBatchInThreeStyles) {
  auto c = Connect();
  ASSERT_TRUE(c);
  std::vector<v1::EnqueueRequest> jobs;
  for (int i = 0; i < 50; ++i) jobs.push_back(NewJob("batch", std::to_string(i)));
  auto ids = c->EnqueueBatch(jobs);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->size(), 50u);
  auto f = c->EnqueueBatchFuture(jobs);
  auto r = f.get();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->results_size(), 50);
  std::promise<absl::StatusOr<v1::EnqueueBatchResponse>> p;
  c->EnqueueBatchAsync(jobs, [&](absl::StatusOr<v1::EnqueueBatchResponse> b) {
    p.set_value(std::move(b));
  });
  auto b = p.get_future().get();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(TotalJobs(client().Stats("batch")), 150u);
  // An invalid batch fails as a whole.
  jobs.push_back(NewJob(""));
  EXPECT_EQ(c->EnqueueBatch(jobs).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ClientTest, InvalidEnqueueGetsTheBrokersError) {
  auto c = Connect();
  ASSERT_TRUE(c);
  auto id = c->Enqueue(NewJob("bad queue name!"));
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << id.status();
  // The stream goes on.
  EXPECT_TRUE(c->Enqueue(NewJob("good")).ok());
}

TEST_F(ClientTest, CallerIdempotencyKeyReturnsTheOriginalJob) {
  auto c = Connect();
  ASSERT_TRUE(c);
  auto job = NewJob("idem");
  job.set_idempotency_key("order-42");
  auto a = c->EnqueueFuture(job).get();
  auto b = c->EnqueueFuture(job).get();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->job_id(), b->job_id());
  EXPECT_TRUE(b->duplicate());
}

TEST_F(ClientTest, GetWaitAndCancel) {
  auto c = Connect();
  ASSERT_TRUE(c);
  EXPECT_EQ(c->Get("00000000000000ff").status().code(), absl::StatusCode::kNotFound);
  auto id = c->Enqueue(NewJob("gw", "x"));
  ASSERT_TRUE(id.ok());
  auto job = c->Get(*id);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state(), v1::JOB_STATE_READY);
  // Not finished: Wait times out.
  auto waited = c->Wait(*id, 200ms);
  EXPECT_EQ(waited.status().code(), absl::StatusCode::kDeadlineExceeded) << waited.status();
  // Finished by a worker while we wait.
  std::thread worker([&] {
    std::this_thread::sleep_for(100ms);
    auto lease = client().MustLeaseOne("gw", 5s);
    EXPECT_TRUE(client().Complete(lease.job().id(), lease.lease_token(), "done").ok());
  });
  waited = c->Wait(*id, 10s);
  worker.join();
  ASSERT_TRUE(waited.ok()) << waited.status();
  EXPECT_EQ(waited->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(waited->result(), "done");

  auto other = c->Enqueue(NewJob("gw-cancel"));
  ASSERT_TRUE(other.ok());
  auto cancelled = c->Cancel(*other, "no longer needed");
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_EQ(cancelled->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(c->Cancel(*other).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(c->Cancel("00000000000000ff").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ClientTest, EnqueueAndWatchReportsAcceptanceThenEventsThenOutcome) {
  auto c = Connect();
  ASSERT_TRUE(c);
  std::thread worker([&] {
    auto lease = client().MustLeaseOne("watched", 10s);
    EXPECT_TRUE(client().Complete(lease.job().id(), lease.lease_token(), "ok").ok());
  });
  std::vector<v1::WatchJobResponse> seen;
  auto job = c->EnqueueAndWatch(
      NewJob("watched", "w"), [&](const v1::WatchJobResponse& m) { seen.push_back(m); }, 20s);
  worker.join();
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job->result(), "ok");
  ASSERT_GE(seen.size(), 2u);
  EXPECT_TRUE(seen.front().has_accepted());
  EXPECT_EQ(seen.back().event().type(), v1::EVENT_TYPE_SUCCEEDED);
}

TEST_F(ClientTest, DestroyingTheClientAnswersEveryCallback) {
  auto c = Connect();
  ASSERT_TRUE(c);
  std::atomic<int> answered{0};
  for (int i = 0; i < 500; ++i) {
    c->EnqueueAsync(NewJob("destroy"), [&](absl::StatusOr<v1::EnqueueResponse>) { ++answered; });
  }
  c.reset();
  EXPECT_EQ(answered.load(), 500);
}

// The broker is SIGKILLed and restarted (behind a proxy that keeps the
// address) while 4 threads enqueue: every enqueue is answered OK, every
// acknowledged job exists, and thanks to the automatic idempotency keys no
// job is made twice.
TEST_F(ClientTest, SurvivesBrokerKillAndRestartMidStream) {
  TcpProxy proxy;
  proxy.SetTarget(broker_->port());
  auto c = Connect(proxy.address());
  ASSERT_TRUE(c);
  constexpr int kThreads = 4, kPerThread = 750;
  std::atomic<int> acked{0};
  std::mutex mu;
  std::vector<std::string> ids;
  std::vector<absl::Status> errors;
  std::vector<std::thread> threads;
  struct Joiner {  // also on an ASSERT's early return
    std::vector<std::thread>& t;
    ~Joiner() {
      for (auto& th : t) {
        if (th.joinable()) th.join();
      }
    }
  } joiner{threads};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::future<absl::StatusOr<v1::EnqueueResponse>>> fs;
      for (int i = 0; i < kPerThread; ++i) {
        fs.push_back(c->EnqueueFuture(NewJob("restart", std::to_string(t * kPerThread + i))));
        if (i % 50 == 49) std::this_thread::sleep_for(20ms);  // spread over the restart
      }
      for (auto& f : fs) {
        auto r = f.get();
        std::lock_guard<std::mutex> l(mu);
        if (r.ok()) {
          ids.push_back(r->job_id());
          ++acked;
        } else {
          errors.push_back(r.status());
        }
      }
    });
  }
  // Kill once some jobs are in.
  auto start = Clock::now();
  while (TotalJobs(client().Stats("restart")) < 300 && Since(start) < 20s) {
    std::this_thread::sleep_for(5ms);
  }
  uint64_t at_kill = TotalJobs(client().Stats("restart"));
  broker_->Kill();
  EXPECT_LT(at_kill, static_cast<uint64_t>(kThreads * kPerThread)) << "killed too late";
  std::string error;
  ASSERT_TRUE(broker_->Start(&error)) << error;
  proxy.SetTarget(broker_->port());
  client_ = NewClient();
  for (auto& th : threads) th.join();
  for (const auto& e : errors) ADD_FAILURE() << "enqueue failed: " << e;
  EXPECT_EQ(acked.load(), kThreads * kPerThread);
  std::set<std::string> distinct(ids.begin(), ids.end());
  EXPECT_EQ(distinct.size(), ids.size());
  // No acknowledged job is lost.
  for (const auto& id : distinct) {
    v1::Job job;
    grpc::Status s = client().GetJob(id, &job);
    ASSERT_TRUE(s.ok()) << "acknowledged job " << id << " lost: " << Show(s);
  }
  // Dedupe (needs broker idempotency keys): exactly one job per enqueue.
  EXPECT_EQ(TotalJobs(client().Stats("restart")), static_cast<uint64_t>(kThreads * kPerThread))
      << "jobs duplicated by resends: the broker did not dedupe idempotency keys";
}

// Cutting every connection (a network drop) in the middle of a stream:
// pending enqueues are resent, none is lost or duplicated.
TEST_F(ClientTest, SurvivesNetworkDrops) {
  TcpProxy proxy;
  proxy.SetTarget(broker_->port());
  auto c = Connect(proxy.address());
  ASSERT_TRUE(c);
  std::vector<std::future<absl::StatusOr<v1::EnqueueResponse>>> fs;
  for (int i = 0; i < 1000; ++i) {
    fs.push_back(c->EnqueueFuture(NewJob("drops")));
    if (i % 200 == 100) proxy.DropAll();
    if (i % 20 == 0) std::this_thread::sleep_for(2ms);
  }
  std::set<std::string> ids;
  for (auto& f : fs) {
    auto r = f.get();
    ASSERT_TRUE(r.ok()) << r.status();
    ids.insert(r->job_id());
  }
  EXPECT_EQ(ids.size(), 1000u);
  EXPECT_EQ(TotalJobs(client().Stats("drops")), 1000u);
}

// The sockets behind a connection through the proxy live in this process;
// a broker started (fork + exec) while that connection is open must not
// inherit them. If it did, it would hold the proxy's end open after the
// proxy closed it: the client would not see its broker crash, and its
// enqueues would hang until the keepalive gave up (the flaky
// ClientSubscriptionTest.GapFreeAcrossBrokerKillAndNetworkDrop). Here the
// successor starts before the crash, so that interleaving is certain.
TEST_F(ClientTest, EnqueueMovesOnWhenTheSuccessorStartedBeforeTheCrash) {
  TcpProxy proxy;
  proxy.SetTarget(broker_->port());
  auto c = Connect(proxy.address());
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->Enqueue(NewJob("successor")).ok());  // the connection is open

  testing::TempDir dir;
  testing::BrokerProcess successor(dir.path() + "/data");
  std::string err;
  ASSERT_TRUE(successor.Start(&err)) << err;
  EXPECT_EQ(SocketsSharedWith(successor.pid()), 0)
      << "the broker inherited sockets of the process that started it";

  broker_->Kill();
  proxy.SetTarget(successor.port());
  EnqueueOptions eo;
  // Unscaled, well below the 20s + 10s the keepalive takes to see a dead
  // connection.
  eo.timeout = testing::Scaled(10s);
  auto id = c->Enqueue(NewJob("successor"), eo);
  EXPECT_TRUE(id.ok()) << id.status();
}

}  // namespace
}  // namespace errand::e2e
