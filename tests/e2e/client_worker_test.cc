// errand::Worker against the real broker.

#include <signal.h>

#include <atomic>
#include <map>
#include <thread>

#include "e2e/client_support.h"
#include "e2e/e2e_support.h"
#include "errand/client.h"
#include "errand/worker.h"

namespace errand::e2e {
namespace {

class ClientWorkerTest : public BrokerTest {
 protected:
  void SetUp() override {
    BrokerTest::SetUp();
    ClientOptions o;
    o.address = broker_->address();
    auto c = errand::Client::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    lib_ = std::move(*c);
  }
  void TearDown() override {
    lib_.reset();
    BrokerTest::TearDown();
  }
  // Polls the queue's stats until `pred` holds (up to `timeout`).
  bool WaitStats(const std::string& queue, const std::function<bool(const v1::QueueStats&)>& pred,
                 std::chrono::milliseconds timeout = 60s) {
    auto start = Clock::now();
    while (Since(start) < timeout) {
      if (pred(client().Stats(queue))) return true;
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }
  std::unique_ptr<errand::Client> lib_;
};

TEST_F(ClientWorkerTest, ConcurrencyFourProcessesThousandJobsExactlyOnce) {
  std::vector<v1::EnqueueRequest> jobs;
  for (int i = 0; i < 1000; ++i) jobs.push_back(NewJob("w1000", std::to_string(i)));
  auto ids = lib_->EnqueueBatch(jobs);
  ASSERT_TRUE(ids.ok()) << ids.status();

  std::mutex mu;
  std::map<std::string, int> seen;
  std::atomic<int> running{0}, max_running{0};
  WorkerOptions o;
  o.queues = {"w1000"};
  o.concurrency = 4;
  o.poll_wait = 1s;
  auto worker = Worker::Start(*lib_, o, [&](const v1::Job& job, JobContext&) -> absl::StatusOr<std::string> {
    int now = ++running;
    int prev = max_running.load();
    while (now > prev && !max_running.compare_exchange_weak(prev, now)) {
    }
    {
      std::lock_guard<std::mutex> l(mu);
      seen[job.id()]++;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    --running;
    return job.payload() + "!";
  });
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_TRUE(WaitStats("w1000", [](const v1::QueueStats& s) { return s.succeeded() == 1000; }))
      << client().Stats("w1000").DebugString();
  (*worker)->Stop();
  EXPECT_EQ((*worker)->stats().completed, 1000u);
  EXPECT_EQ(seen.size(), 1000u);
  for (const auto& [id, n] : seen) EXPECT_EQ(n, 1) << id;
  EXPECT_LE(max_running.load(), 4);
  EXPECT_GE(max_running.load(), 2);
  for (int i = 0; i < 1000; i += 97) {
    auto job = lib_->Get((*ids)[i]);
    ASSERT_TRUE(job.ok());
    EXPECT_EQ(job->state(), v1::JOB_STATE_SUCCEEDED);
    EXPECT_EQ(job->result(), std::to_string(i) + "!");
  }
}

// Throughput of the library's Worker with short jobs against the broker
// (sync commits, the default): prints the time for 1,000 jobs at
// concurrency 1 and 4. A measurement, not a check; disabled by default, run
// it with --gtest_also_run_disabled_tests.
TEST_F(ClientWorkerTest, DISABLED_TimeThousandShortJobsAtConcurrencyOneAndFour) {
  for (int concurrency : {1, 4}) {
    const std::string queue = "timed" + std::to_string(concurrency);
    std::vector<v1::EnqueueRequest> jobs;
    for (int i = 0; i < 1000; ++i) jobs.push_back(NewJob(queue, std::to_string(i)));
    ASSERT_TRUE(lib_->EnqueueBatch(jobs).ok());
    WorkerOptions o;
    o.queues = {queue};
    o.concurrency = concurrency;
    auto t0 = Clock::now();
    auto worker = Worker::Start(*lib_, o, [](const v1::Job& job, JobContext&) -> absl::StatusOr<std::string> {
      return job.payload();
    });
    ASSERT_TRUE(worker.ok()) << worker.status();
    while ((*worker)->stats().completed < 1000 && Since(t0) < 120s) {
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    auto took = std::chrono::duration_cast<std::chrono::microseconds>(Since(t0));
    (*worker)->Stop();
    EXPECT_EQ((*worker)->stats().completed, 1000u);
    std::printf("concurrency %d: 1000 jobs in %.1f ms (%.0f us/job)\n", concurrency,
                took.count() / 1000.0, took.count() / 1000.0);
  }
}

TEST_F(ClientWorkerTest, HandlerErrorsFailTheJob) {
  auto retry = NewJob("errs", "retry");
  retry.set_max_attempts(2);
  retry.mutable_retry()->mutable_initial_backoff()->set_nanos(1000000);
  auto fatal = NewJob("errs", "fatal");
  fatal.set_max_attempts(5);
  auto a = lib_->Enqueue(retry);
  auto b = lib_->Enqueue(fatal);
  ASSERT_TRUE(a.ok() && b.ok());
  WorkerOptions o;
  o.queues = {"errs"};
  o.poll_wait = 200ms;
  auto worker = Worker::Start(*lib_, o, [&](const v1::Job& job, JobContext&) -> absl::StatusOr<std::string> {
    if (job.payload() == "fatal") return NonRetryable(absl::InvalidArgumentError("bad input"));
    return absl::InternalError("boom");
  });
  ASSERT_TRUE(worker.ok());
  auto ja = lib_->Wait(*a, 20s);
  auto jb = lib_->Wait(*b, 20s);
  ASSERT_TRUE(ja.ok()) << ja.status();
  ASSERT_TRUE(jb.ok()) << jb.status();
  EXPECT_EQ(ja->state(), v1::JOB_STATE_DEAD);
  EXPECT_EQ(ja->attempts(), 2u);
  EXPECT_EQ(ja->error(), "boom");
  EXPECT_EQ(jb->state(), v1::JOB_STATE_DEAD);
  EXPECT_EQ(jb->attempts(), 1u);
  EXPECT_EQ(jb->error(), "bad input");
}

TEST_F(ClientWorkerTest, LeaseIsExtendedWhileTheHandlerRunsAndProgressIsRecorded) {
  auto job = NewJob("slow");
  *job.mutable_lease_duration() = Dur(1s);
  auto id = lib_->Enqueue(job);
  ASSERT_TRUE(id.ok());
  WorkerOptions o;
  o.queues = {"slow"};
  o.poll_wait = 200ms;
  std::atomic<bool> progressed{false};
  auto worker = Worker::Start(*lib_, o, [&](const v1::Job&, JobContext& ctx) -> absl::StatusOr<std::string> {
    ctx.SetProgress(0.5, "half way");
    std::this_thread::sleep_for(1200ms);
    progressed = true;
    std::this_thread::sleep_for(1500ms);
    return std::string("finished");
  });
  ASSERT_TRUE(worker.ok());
  auto start = Clock::now();
  while (!progressed && Since(start) < 10s) std::this_thread::sleep_for(10ms);
  auto mid = lib_->Get(*id);
  ASSERT_TRUE(mid.ok());
  EXPECT_EQ(mid->state(), v1::JOB_STATE_LEASED);
  EXPECT_EQ(mid->progress().message(), "half way");
  auto done = lib_->Wait(*id, 20s);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done->attempts(), 1u) << "the lease expired although the handler was running";
  EXPECT_EQ(done->result(), "finished");
}

TEST_F(ClientWorkerTest, StopFailsBackHandlersThatDoNotFinish) {
  auto id = lib_->Enqueue(NewJob("stuck"));
  ASSERT_TRUE(id.ok());
  WorkerOptions o;
  o.queues = {"stuck"};
  o.poll_wait = 200ms;
  o.stop_timeout = 300ms;
  std::atomic<bool> started{false}, saw_cancel{false};
  auto worker = Worker::Start(*lib_, o, [&](const v1::Job&, JobContext& ctx) -> absl::StatusOr<std::string> {
    started = true;
    auto t0 = Clock::now();
    while (!ctx.cancelled() && Since(t0) < 10s) std::this_thread::sleep_for(5ms);
    saw_cancel = ctx.cancelled();
    return std::string("too late");
  });
  ASSERT_TRUE(worker.ok());
  auto start = Clock::now();
  while (!started && Since(start) < 10s) std::this_thread::sleep_for(5ms);
  ASSERT_TRUE(started);
  auto t0 = Clock::now();
  (*worker)->Stop();
  EXPECT_LT(Since(t0), 3s);
  EXPECT_TRUE(saw_cancel);
  EXPECT_EQ((*worker)->stats().abandoned, 1u);
  auto job = lib_->Get(*id);
  ASSERT_TRUE(job.ok());
  EXPECT_NE(job->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_NE(job->state(), v1::JOB_STATE_LEASED);
  ASSERT_GE(job->history_size(), 1);
  EXPECT_NE(job->history(0).error().find("worker stopping"), std::string::npos);
}

TEST_F(ClientWorkerTest, CancelRequestReachesTheHandler) {
  auto id = lib_->Enqueue(NewJob("cancel-me"));
  ASSERT_TRUE(id.ok());
  WorkerOptions o;
  o.queues = {"cancel-me"};
  o.poll_wait = 200ms;
  o.max_heartbeat_interval = 200ms;
  std::atomic<bool> started{false}, saw_cancel{false};
  auto worker = Worker::Start(*lib_, o, [&](const v1::Job&, JobContext& ctx) -> absl::StatusOr<std::string> {
    started = true;
    auto t0 = Clock::now();
    while (!ctx.cancelled() && Since(t0) < 10s) std::this_thread::sleep_for(5ms);
    saw_cancel = ctx.cancelled();
    return absl::CancelledError("cancelled");
  });
  ASSERT_TRUE(worker.ok());
  auto start = Clock::now();
  while (!started && Since(start) < 10s) std::this_thread::sleep_for(5ms);
  auto c = lib_->Cancel(*id);
  ASSERT_TRUE(c.ok()) << c.status();
  auto done = lib_->Wait(*id, 15s);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_TRUE(saw_cancel);
  EXPECT_EQ(done->state(), v1::JOB_STATE_CANCELLED);
}


// Connect workers: the broker releases a vanished worker's jobs after
// --worker-grace, not after the lease.
class ClientWorkerGraceTest : public ClientWorkerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override { return {"--worker-grace=1s"}; }
};

TEST_F(ClientWorkerGraceTest, KilledConnectWorkerJobIsRedeliveredWithinTheGrace) {
  auto job = NewJob("grace", "p");
  *job.mutable_lease_duration() = Dur(60s);
  auto id = lib_->Enqueue(job);
  ASSERT_TRUE(id.ok()) << id.status();
  // errand-worker uses the library (Connect by default).
  BackgroundProgram w({ERRAND_WORKER_PATH, "--addr", broker_->address(), "--queue", "grace",
                       "--worker-id", "doomed", "--", "/bin/sleep", "30"});
  auto start = Clock::now();
  v1::Job mid;
  while (Since(start) < 15s) {
    mid = client().MustGetJob(*id);
    if (mid.state() == v1::JOB_STATE_LEASED) break;
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_EQ(mid.state(), v1::JOB_STATE_LEASED) << w.Log();
  w.Signal(SIGKILL);
  ASSERT_EQ(w.Wait(5s), -SIGKILL);
  auto t0 = Clock::now();
  std::vector<v1::Lease> got;
  while (got.empty() && Since(t0) < 20s) got = client().MustLease(LeaseReq({"grace"}, 1, 1s));
  auto took = Since(t0);
  ASSERT_EQ(got.size(), 1u) << "the job was not redelivered within 20s";
  EXPECT_LT(took, 5s) << "redelivered after the lease, not the worker grace";
  EXPECT_EQ(got[0].job().id(), *id);
  EXPECT_EQ(got[0].job().attempts(), 2u);
  ASSERT_GE(got[0].job().history_size(), 1);
  EXPECT_EQ(got[0].job().history(0).outcome(), v1::ATTEMPT_OUTCOME_WORKER_LOST);
  EXPECT_EQ(got[0].job().history(0).worker_id(), "doomed");
}

// A network drop mid-job: the Worker reopens its stream, completes the job
// it still holds (its token is valid: the grace has not passed) and takes
// new jobs on the new stream.
TEST_F(ClientWorkerTest, ConnectWorkerReconnectsAfterANetworkDropAndKeepsItsJob) {
  TcpProxy proxy;
  proxy.SetTarget(broker_->port());
  ClientOptions co;
  co.address = proxy.address();
  auto via_proxy = errand::Client::Connect(co);
  ASSERT_TRUE(via_proxy.ok()) << via_proxy.status();
  auto first = lib_->Enqueue(NewJob("drop", "first"));
  ASSERT_TRUE(first.ok());
  std::atomic<bool> started{false}, release{false};
  WorkerOptions o;
  o.queues = {"drop"};
  o.concurrency = 1;
  auto worker = Worker::Start(**via_proxy, o, [&](const v1::Job& job, JobContext&) -> absl::StatusOr<std::string> {
    if (job.payload() == "first") {
      started = true;
      auto t0 = Clock::now();
      while (!release && Since(t0) < 20s) std::this_thread::sleep_for(5ms);
    }
    return job.payload() + " done";
  });
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto start = Clock::now();
  while (!started && Since(start) < 10s) std::this_thread::sleep_for(5ms);
  ASSERT_TRUE(started);
  proxy.DropAll();
  std::this_thread::sleep_for(1500ms);  // the worker reconnects meanwhile
  release = true;
  auto done = lib_->Wait(*first, 20s);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done->attempts(), 1u) << "the held job was not completed over the new stream";
  EXPECT_EQ(done->result(), "first done");
  auto second = lib_->Enqueue(NewJob("drop", "second"));
  ASSERT_TRUE(second.ok());
  auto done2 = lib_->Wait(*second, 20s);
  ASSERT_TRUE(done2.ok()) << done2.status();
  EXPECT_EQ(done2->state(), v1::JOB_STATE_SUCCEEDED) << "no credit on the new stream";
  (*worker)->Stop();
  EXPECT_EQ((*worker)->stats().completed, 2u);
  EXPECT_EQ((*worker)->stats().lost_leases, 0u);
}

// After the grace a held job's token is stale: the late Complete is answered
// FAILED_PRECONDITION (counted, not fatal) and the job runs again.
TEST_F(ClientWorkerGraceTest, StaleTokenAfterReconnectIsALostLease) {
  TcpProxy proxy;
  proxy.SetTarget(broker_->port());
  ClientOptions co;
  co.address = proxy.address();
  auto via_proxy = errand::Client::Connect(co);
  ASSERT_TRUE(via_proxy.ok()) << via_proxy.status();
  auto id = lib_->Enqueue(NewJob("stale", "x"));
  ASSERT_TRUE(id.ok());
  std::atomic<int> calls{0};
  std::atomic<bool> release{false};
  WorkerOptions o;
  o.queues = {"stale"};
  auto worker = Worker::Start(**via_proxy, o, [&](const v1::Job&, JobContext&) -> absl::StatusOr<std::string> {
    if (++calls == 1) {
      auto t0 = Clock::now();
      while (!release && Since(t0) < 20s) std::this_thread::sleep_for(5ms);
    }
    return std::string("ok");
  });
  ASSERT_TRUE(worker.ok());
  auto start = Clock::now();
  while (calls == 0 && Since(start) < 10s) std::this_thread::sleep_for(5ms);
  ASSERT_EQ(calls.load(), 1);
  proxy.DropAll();
  // The broker releases the job after 1s; nobody else serves the queue.
  start = Clock::now();
  while (Since(start) < 10s && client().MustGetJob(*id).state() != v1::JOB_STATE_READY) {
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_EQ(client().MustGetJob(*id).state(), v1::JOB_STATE_READY);
  release = true;
  auto done = lib_->Wait(*id, 20s);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done->attempts(), 2u);
  ASSERT_GE(done->history_size(), 1);
  EXPECT_EQ(done->history(0).outcome(), v1::ATTEMPT_OUTCOME_WORKER_LOST);
  (*worker)->Stop();
  EXPECT_EQ((*worker)->stats().lost_leases, 1u);
  EXPECT_EQ((*worker)->stats().completed, 1u);
  EXPECT_EQ(calls.load(), 2);
}

// The unary transport stays available.
TEST_F(ClientWorkerTest, UnaryTransportStillWorks) {
  std::vector<v1::EnqueueRequest> jobs;
  for (int i = 0; i < 50; ++i) jobs.push_back(NewJob("unary", std::to_string(i)));
  auto ids = lib_->EnqueueBatch(jobs);
  ASSERT_TRUE(ids.ok()) << ids.status();
  WorkerOptions o;
  o.queues = {"unary"};
  o.concurrency = 2;
  o.poll_wait = 200ms;
  o.transport = WorkerOptions::Transport::kUnary;
  auto worker = Worker::Start(*lib_, o, [&](const v1::Job& job, JobContext&) -> absl::StatusOr<std::string> {
    return job.payload();
  });
  ASSERT_TRUE(worker.ok());
  EXPECT_TRUE(WaitStats("unary", [](const v1::QueueStats& s) { return s.succeeded() == 50; }));
  (*worker)->Stop();
  EXPECT_EQ((*worker)->stats().completed, 50u);
}

// The messages the library's Worker sends on Connect, seen by a scripted
// peer in this process instead of the broker: each complete carries the
// credit for the slot it frees (more_credits), so no credits message
// follows the ack.
class ScriptedConnectPeer final : public v1::Workers::Service {
 public:
  grpc::Status Connect(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::ConnectResponse, v1::ConnectRequest>* stream) override {
    v1::ConnectRequest req;
    if (!stream->Read(&req)) return grpc::Status::OK;
    Record(req);
    for (int i = 0; i < 2; ++i) {
      v1::ConnectResponse delivery;
      auto* lease = delivery.mutable_delivery();
      lease->mutable_job()->set_id("job-" + std::to_string(i));
      lease->mutable_job()->set_queue("scripted");
      lease->set_lease_token(100 + i);
      *lease->mutable_deadline() = Ts(std::chrono::system_clock::now() + 60s);
      if (!stream->Write(delivery)) return grpc::Status::OK;
      // The next message is this job's complete.
      if (!stream->Read(&req)) return grpc::Status::OK;
      Record(req);
      v1::ConnectResponse ack;
      ack.mutable_ack()->set_request_id(req.request_id());
      if (!stream->Write(ack)) return grpc::Status::OK;
    }
    // Whatever else comes until the worker stops (a credits message would).
    while (stream->Read(&req)) Record(req);
    return grpc::Status::OK;
  }

  std::vector<v1::ConnectRequest> received() {
    std::lock_guard<std::mutex> l(mu_);
    return received_;
  }

 private:
  void Record(const v1::ConnectRequest& r) {
    std::lock_guard<std::mutex> l(mu_);
    received_.push_back(r);
  }
  std::mutex mu_;
  std::vector<v1::ConnectRequest> received_;
};

// `got` starts with a hello granting one credit, then the completes of
// job-0 (token 100) and job-1 (token 101), each carrying its slot's credit.
void ExpectHelloThenTwoCompletesWithCredits(const std::vector<v1::ConnectRequest>& got) {
  ASSERT_GE(got.size(), 3u);
  ASSERT_TRUE(got[0].has_hello()) << got[0].DebugString();
  EXPECT_EQ(got[0].hello().credits(), 1u);
  for (size_t i = 1; i <= 2; ++i) {
    ASSERT_TRUE(got[i].has_complete()) << got[i].DebugString();
    EXPECT_EQ(got[i].complete().job_id(), "job-" + std::to_string(i - 1));
    EXPECT_EQ(got[i].complete().lease_token(), 100u + (i - 1));
    EXPECT_EQ(got[i].more_credits(), 1u) << "complete " << i << " did not carry the credit";
  }
}

TEST(ClientWorkerWireTest, ACompleteCarriesTheCreditForTheSlotItFrees) {
  ScriptedConnectPeer peer;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&peer);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_TRUE(server != nullptr);
  ASSERT_GT(port, 0);

  ClientOptions co;
  co.address = "127.0.0.1:" + std::to_string(port);
  auto lib = errand::Client::Connect(co);
  ASSERT_TRUE(lib.ok()) << lib.status();
  std::atomic<int> handled{0};
  WorkerOptions o;
  o.queues = {"scripted"};
  o.concurrency = 1;
  auto worker = Worker::Start(**lib, o, [&](const v1::Job&, JobContext&) -> absl::StatusOr<std::string> {
    ++handled;
    return std::string("done");
  });
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto start = Clock::now();
  while ((*worker)->stats().completed < 2 && Since(start) < 30s) {
    std::this_thread::sleep_for(5ms);
  }
  // Room for a credits message, if one were sent after the second ack.
  std::this_thread::sleep_for(300ms);
  (*worker)->Stop();
  server->Shutdown(testing::In(5s));

  EXPECT_EQ(handled.load(), 2);
  EXPECT_EQ((*worker)->stats().completed, 2u);
  std::vector<v1::ConnectRequest> got = peer.received();
  ExpectHelloThenTwoCompletesWithCredits(got);
  for (size_t i = 3; i < got.size(); ++i) {
    EXPECT_FALSE(got[i].kind_case() == v1::ConnectRequest::kCredits && got[i].credits() > 0)
        << "the slot's credit was granted twice: " << got[i].DebugString();
  }
}


// A Connect peer in this process whose script the test writes: script(n, s)
// serves the n-th stream (from 0); what it returns ends that stream.
class ConnectScript final : public v1::Workers::Service {
 public:
  using Stream = grpc::ServerReaderWriter<v1::ConnectResponse, v1::ConnectRequest>;
  using Script = std::function<grpc::Status(int, Stream*)>;
  explicit ConnectScript(Script script) : script_(std::move(script)) {}
  grpc::Status Connect(grpc::ServerContext*, Stream* stream) override {
    return script_(streams_++, stream);
  }

 private:
  Script script_;
  std::atomic<int> streams_{0};
};

// Serves a ConnectScript on a free loopback port until destroyed.
class ScriptServer {
 public:
  explicit ScriptServer(ConnectScript* peer) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(peer);
    server_ = builder.BuildAndStart();
  }
  ~ScriptServer() {
    if (server_) server_->Shutdown(testing::In(5s));
  }
  bool ok() const { return server_ != nullptr && port_ > 0; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

// A client of a ScriptServer and a Worker on it (the worker goes first).
// `(*w)->stats()` reaches the worker.
struct ScriptedWorker {
  std::unique_ptr<errand::Client> client;
  std::unique_ptr<Worker> worker;
  Worker* operator->() const { return worker.get(); }
};

// One slot on queue "scripted", the default transport (Connect).
WorkerOptions ScriptedOptions() {
  WorkerOptions o;
  o.queues = {"scripted"};
  o.concurrency = 1;
  return o;
}

absl::StatusOr<ScriptedWorker> StartScripted(const ScriptServer& server, const WorkerOptions& o,
                                             JobHandler handler) {
  ClientOptions co;
  co.address = server.address();
  auto lib = errand::Client::Connect(co);
  if (!lib.ok()) return lib.status();
  ScriptedWorker w;
  w.client = std::move(*lib);
  auto worker = Worker::Start(*w.client, o, std::move(handler));
  if (!worker.ok()) return worker.status();
  w.worker = std::move(*worker);
  return w;
}

// A delivery of job `id` on queue "scripted", leased for 60 s.
v1::ConnectResponse Delivery(const std::string& id, uint64_t token) {
  v1::ConnectResponse delivery;
  auto* lease = delivery.mutable_delivery();
  lease->mutable_job()->set_id(id);
  lease->mutable_job()->set_queue("scripted");
  lease->set_lease_token(token);
  *lease->mutable_deadline() = Ts(std::chrono::system_clock::now() + 60s);
  return delivery;
}

bool Deliver(ConnectScript::Stream* s, const std::string& id, uint64_t token) {
  return s->Write(Delivery(id, token));
}

bool Ack(ConnectScript::Stream* s, uint64_t request_id,
         absl::StatusCode code = absl::StatusCode::kOk) {
  v1::ConnectResponse ack;
  ack.mutable_ack()->set_request_id(request_id);
  ack.mutable_ack()->set_error_code(static_cast<int>(code));
  if (code != absl::StatusCode::kOk) ack.mutable_ack()->set_error_message("scripted error");
  return s->Write(ack);
}

// What one stream of a ConnectScript received, readable from the test.
class Received {
 public:
  void Add(int stream, const v1::ConnectRequest& r) {
    std::lock_guard<std::mutex> l(mu_);
    got_[stream].push_back(r);
  }
  std::vector<v1::ConnectRequest> On(int stream) {
    std::lock_guard<std::mutex> l(mu_);
    return got_[stream];
  }

 private:
  std::mutex mu_;
  std::map<int, std::vector<v1::ConnectRequest>> got_;
};

// Reads the next message that is not an extend (extends, from the
// heartbeat, are acked with a new deadline). Records all of them.
bool ReadReport(ConnectScript::Stream* s, int stream, Received* rec, v1::ConnectRequest* req) {
  for (;;) {
    if (!s->Read(req)) return false;
    rec->Add(stream, *req);
    if (!req->has_extend()) return true;
    v1::ConnectResponse ack;
    ack.mutable_ack()->set_request_id(req->request_id());
    *ack.mutable_ack()->mutable_deadline() = Ts(std::chrono::system_clock::now() + 60s);
    if (!s->Write(ack)) return false;
  }
}

// The usual opening: reads the hello, delivers "job-0" (token 100) and
// reads the report of it into `req`. False when the stream ended first.
bool HelloThenJob0(ConnectScript::Stream* s, int stream, Received* rec, v1::ConnectRequest* req) {
  return ReadReport(s, stream, rec, req) && Deliver(s, "job-0", 100) &&
         ReadReport(s, stream, rec, req);
}

// Records (and acks the extends of) whatever comes until the worker ends
// the stream.
grpc::Status Drain(ConnectScript::Stream* s, int stream, Received* rec) {
  v1::ConnectRequest req;
  while (ReadReport(s, stream, rec, &req)) {
  }
  return grpc::Status::OK;
}

bool WaitFor(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  auto start = Clock::now();
  while (!pred()) {
    if (Since(start) > testing::Scaled(timeout)) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

// Credits a message grants (credits, hello.credits, more_credits).
uint32_t CreditsIn(const v1::ConnectRequest& r) {
  uint32_t n = r.more_credits();
  if (r.kind_case() == v1::ConnectRequest::kCredits) n += r.credits();
  if (r.has_hello()) n += r.hello().credits();
  return n;
}

// The report of a job is asynchronous: once its complete (with the credit
// for the slot) is written, the handler thread takes the next job, which
// the broker may deliver before the ack (a sync broker acks after its
// fsync). The outcome is counted when the ack arrives.
TEST(ClientWorkerWireTest, TheNextJobStartsBeforeThePreviousCompleteIsAcked) {
  Received rec;
  std::atomic<bool> got_first{false}, release_ack{false}, second_started{false};
  ConnectScript peer([&](int n, ConnectScript::Stream* s) {
    if (n > 0) return Drain(s, n, &rec);
    v1::ConnectRequest req;
    if (!HelloThenJob0(s, n, &rec, &req)) return grpc::Status::OK;  // req: job-0's report
    got_first = true;
    const uint64_t first_rid = req.request_id();
    // The credit rode in that complete: the next job, and no ack yet.
    if (!Deliver(s, "job-1", 101)) return grpc::Status::OK;
    WaitFor([&] { return release_ack.load(); }, 20s);
    if (!Ack(s, first_rid)) return grpc::Status::OK;
    if (!ReadReport(s, n, &rec, &req)) return grpc::Status::OK;  // job-1's complete
    if (!Ack(s, req.request_id())) return grpc::Status::OK;
    return Drain(s, n, &rec);
  });
  ScriptServer server(&peer);
  ASSERT_TRUE(server.ok());
  WorkerOptions o = ScriptedOptions();
  auto worker = StartScripted(server, o, [&](const v1::Job& job, JobContext&) -> absl::StatusOr<std::string> {
    if (job.id() == "job-1") second_started = true;
    return std::string("done");
  });
  ASSERT_TRUE(worker.ok()) << worker.status();
  ASSERT_TRUE(WaitFor([&] { return got_first.load(); }, 10s));
  EXPECT_TRUE(WaitFor([&] { return second_started.load(); }, 3s))
      << "the handler thread waited for the previous complete's ack";
  EXPECT_EQ((*worker)->stats().completed, 0u) << "counted before its ack";
  release_ack = true;
  EXPECT_TRUE(WaitFor([&] { return (*worker)->stats().completed == 2; }, 10s));
  (*worker)->Stop();
  EXPECT_EQ((*worker)->stats().completed, 2u);

  std::vector<v1::ConnectRequest> got = rec.On(0);
  ExpectHelloThenTwoCompletesWithCredits(got);
}

// Stats follow the acks: a complete or fail acked OK counts as completed or
// failed, one answered FAILED_PRECONDITION or NOT_FOUND as a lost lease.
TEST(ClientWorkerWireTest, TheAckDecidesWhatTheOutcomeCountsAs) {
  Received rec;
  const std::vector<absl::StatusCode> answers = {
      absl::StatusCode::kOk, absl::StatusCode::kOk, absl::StatusCode::kFailedPrecondition,
      absl::StatusCode::kNotFound};
  ConnectScript peer([&](int n, ConnectScript::Stream* s) {
    if (n > 0) return Drain(s, n, &rec);
    v1::ConnectRequest req;
    if (!ReadReport(s, n, &rec, &req)) return grpc::Status::OK;  // hello
    for (size_t i = 0; i < answers.size(); ++i) {
      if (!Deliver(s, "job-" + std::to_string(i), 100 + i)) return grpc::Status::OK;
      if (!ReadReport(s, n, &rec, &req)) return grpc::Status::OK;
      if (!Ack(s, req.request_id(), answers[i])) return grpc::Status::OK;
    }
    return Drain(s, n, &rec);
  });
  ScriptServer server(&peer);
  ASSERT_TRUE(server.ok());
  WorkerOptions o = ScriptedOptions();
  // Even jobs complete, odd ones fail.
  auto worker = StartScripted(server, o, [&](const v1::Job& job, JobContext&) -> absl::StatusOr<std::string> {
    if ((job.id().back() - '0') % 2 == 1) return absl::InternalError("odd");
    return std::string("even");
  });
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_TRUE(WaitFor(
      [&] {
        WorkerStats st = (*worker)->stats();
        return st.completed + st.failed + st.lost_leases == 4;
      },
      10s));
  (*worker)->Stop();
  WorkerStats st = (*worker)->stats();
  EXPECT_EQ(st.leased, 4u);
  EXPECT_EQ(st.completed, 1u);    // job-0
  EXPECT_EQ(st.failed, 1u);       // job-1
  EXPECT_EQ(st.lost_leases, 2u);  // job-2 (complete), job-3 (fail)
  std::vector<v1::ConnectRequest> got = rec.On(0);
  ASSERT_GE(got.size(), 5u);
  EXPECT_TRUE(got[1].has_complete() && got[3].has_complete());
  EXPECT_TRUE(got[2].has_fail() && got[4].has_fail());
  EXPECT_EQ(got[2].fail().error(), "odd");
}

// The library asks for packed acks (hello.packed_acks) and reads them: an
// ack packed in front of the next delivery, and acks alone in a message
// with no kind, count as separate messages would.
TEST(ClientWorkerWireTest, PackedAcksAreReadInFrontOfTheDelivery) {
  Received rec;
  ConnectScript peer([&](int n, ConnectScript::Stream* s) {
    if (n > 0) return Drain(s, n, &rec);
    v1::ConnectRequest req;
    if (!HelloThenJob0(s, n, &rec, &req)) return grpc::Status::OK;  // req: job-0's report
    v1::ConnectResponse both = Delivery("job-1", 101);  // after job-0's ack
    both.add_acks()->set_request_id(req.request_id());
    if (!s->Write(both)) return grpc::Status::OK;
    if (!ReadReport(s, n, &rec, &req)) return grpc::Status::OK;  // job-1's complete
    v1::ConnectResponse alone;  // job-1's ack: the lease was lost
    auto* ack = alone.add_acks();
    ack->set_request_id(req.request_id());
    ack->set_error_code(static_cast<int>(absl::StatusCode::kFailedPrecondition));
    ack->set_error_message("scripted: stale token");
    if (!s->Write(alone)) return grpc::Status::OK;
    return Drain(s, n, &rec);
  });
  ScriptServer server(&peer);
  ASSERT_TRUE(server.ok());
  auto worker = StartScripted(server, ScriptedOptions(),
                              [&](const v1::Job&, JobContext&) -> absl::StatusOr<std::string> {
                                return std::string("done");
                              });
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_TRUE(WaitFor(
      [&] {
        WorkerStats st = (*worker)->stats();
        return st.completed + st.lost_leases == 2;
      },
      10s));
  (*worker)->Stop();
  WorkerStats st = (*worker)->stats();
  EXPECT_EQ(st.leased, 2u);
  EXPECT_EQ(st.completed, 1u);    // job-0
  EXPECT_EQ(st.lost_leases, 1u);  // job-1
  std::vector<v1::ConnectRequest> got = rec.On(0);
  ASSERT_GE(got.size(), 3u);
  ASSERT_TRUE(got[0].has_hello());
  EXPECT_TRUE(got[0].hello().packed_acks());
  EXPECT_EQ(got[1].complete().job_id(), "job-0");
  EXPECT_EQ(got[2].complete().job_id(), "job-1");
}

// The stream breaks while job A's complete waits for its ack and job B
// (delivered with A's credit) runs. On the next stream A is reported again
// with its token, once, and the new stream is granted no credit while B
// holds the only slot: the hello counts the slots free at that moment (A's
// is occupied by B), and a report sent again carries no credit of its own.
// B's complete then grants the slot, as usual.
TEST(ClientWorkerWireTest, ReportsInFlightWhenTheStreamBreaksAreSentAgainWithoutAnotherCredit) {
  Received rec;
  std::atomic<bool> b_started{false}, release_b{false}, a_resent{false};
  ConnectScript peer([&](int n, ConnectScript::Stream* s) {
    v1::ConnectRequest req;
    if (n == 0) {
      if (!ReadReport(s, n, &rec, &req)) return grpc::Status::OK;  // hello
      if (!Deliver(s, "job-a", 100)) return grpc::Status::OK;
      if (!ReadReport(s, n, &rec, &req)) return grpc::Status::OK;  // A's complete
      if (!Deliver(s, "job-b", 101)) return grpc::Status::OK;
      WaitFor([&] { return b_started.load(); }, 3s);
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "scripted drop");  // no ack for A
    }
    if (n == 1) {
      if (!ReadReport(s, n, &rec, &req)) return grpc::Status::OK;  // hello
      if (!ReadReport(s, n, &rec, &req)) return grpc::Status::OK;  // A again
      if (!Ack(s, req.request_id())) return grpc::Status::OK;
      a_resent = true;
      if (!ReadReport(s, n, &rec, &req)) return grpc::Status::OK;  // B's complete
      if (!Ack(s, req.request_id())) return grpc::Status::OK;
    }
    return Drain(s, n, &rec);
  });
  ScriptServer server(&peer);
  ASSERT_TRUE(server.ok());
  WorkerOptions o = ScriptedOptions();
  auto worker = StartScripted(server, o, [&](const v1::Job& job, JobContext&) -> absl::StatusOr<std::string> {
    if (job.id() == "job-b") {
      b_started = true;
      WaitFor([&] { return release_b.load(); }, 20s);
    }
    return job.id() + " done";
  });
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_TRUE(WaitFor([&] { return a_resent.load(); }, 10s));
  EXPECT_TRUE(b_started.load());
  EXPECT_TRUE(WaitFor([&] { return (*worker)->stats().completed == 1; }, 10s));
  release_b = true;
  EXPECT_TRUE(WaitFor([&] { return (*worker)->stats().completed == 2; }, 10s));
  (*worker)->Stop();
  EXPECT_EQ((*worker)->stats().completed, 2u);
  EXPECT_EQ((*worker)->stats().lost_leases, 0u);

  // Stream 0: hello, A's complete with the slot's credit.
  std::vector<v1::ConnectRequest> s0 = rec.On(0);
  ASSERT_GE(s0.size(), 2u);
  EXPECT_EQ(s0[0].hello().credits(), 1u);
  ASSERT_TRUE(s0[1].has_complete()) << s0[1].DebugString();
  EXPECT_EQ(s0[1].complete().job_id(), "job-a");
  EXPECT_EQ(s0[1].more_credits(), 1u);
  // Stream 1: hello, A again (token 100), B (token 101), each once.
  std::vector<v1::ConnectRequest> s1 = rec.On(1);
  ASSERT_GE(s1.size(), 1u);
  ASSERT_TRUE(s1[0].has_hello()) << s1[0].DebugString();
  std::map<std::string, int> reports[2];
  for (int stream = 0; stream < 2; ++stream) {
    for (const auto& r : rec.On(stream)) {
      if (r.has_complete()) reports[stream][r.complete().job_id()]++;
      if (r.has_fail()) reports[stream][r.fail().job_id()]++;
    }
  }
  EXPECT_EQ(reports[0], (std::map<std::string, int>{{"job-a", 1}}));
  EXPECT_EQ(reports[1], (std::map<std::string, int>{{"job-a", 1}, {"job-b", 1}}));
  uint32_t credits_before_b = 0, credits_total = 0;
  bool b_seen = false;
  for (const auto& r : s1) {
    if (r.has_complete()) {
      EXPECT_EQ(r.complete().lease_token(), r.complete().job_id() == "job-a" ? 100u : 101u);
      if (r.complete().job_id() == "job-b") b_seen = true;
    }
    credits_total += CreditsIn(r);
    if (!b_seen) credits_before_b += CreditsIn(r);
  }
  EXPECT_EQ(credits_before_b, 0u) << "a credit for a slot that job B occupies";
  EXPECT_EQ(credits_total, 1u) << "the worker may be pushed more jobs than it can hold";
  EXPECT_EQ(rec.On(2).size(), 0u) << "an unexpected third stream";
}

// An ack with UNAVAILABLE makes the outcome sent again (after the client's
// retry backoff), with its token and without a second credit.
TEST(ClientWorkerWireTest, AnOutcomeAckedUnavailableIsSentAgain) {
  Received rec;
  ConnectScript peer([&](int n, ConnectScript::Stream* s) {
    if (n > 0) return Drain(s, n, &rec);
    v1::ConnectRequest req;
    if (!HelloThenJob0(s, n, &rec, &req)) return grpc::Status::OK;  // req: job-0's report
    if (!Ack(s, req.request_id(), absl::StatusCode::kUnavailable)) return grpc::Status::OK;
    if (!ReadReport(s, n, &rec, &req)) return grpc::Status::OK;
    if (!Ack(s, req.request_id())) return grpc::Status::OK;
    return Drain(s, n, &rec);
  });
  ScriptServer server(&peer);
  ASSERT_TRUE(server.ok());
  WorkerOptions o = ScriptedOptions();
  auto worker = StartScripted(server, o, [&](const v1::Job&, JobContext&) -> absl::StatusOr<std::string> {
    return std::string("done");
  });
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_TRUE(WaitFor([&] { return (*worker)->stats().completed == 1; }, 10s));
  (*worker)->Stop();
  WorkerStats st = (*worker)->stats();
  EXPECT_EQ(st.completed, 1u);
  EXPECT_EQ(st.lost_leases, 0u);
  std::vector<v1::ConnectRequest> got = rec.On(0);
  ASSERT_GE(got.size(), 3u);
  for (size_t i = 1; i <= 2; ++i) {
    ASSERT_TRUE(got[i].has_complete()) << got[i].DebugString();
    EXPECT_EQ(got[i].complete().job_id(), "job-0");
    EXPECT_EQ(got[i].complete().lease_token(), 100u);
  }
  EXPECT_NE(got[1].request_id(), got[2].request_id());
  uint32_t credits = 0;
  for (const auto& r : got) credits += CreditsIn(r);
  EXPECT_EQ(credits, 2u) << "the hello's and the first complete's, no more";
}

// A handler that returns while no stream is up: its slot is granted by the
// next stream's hello, and its outcome goes out on that stream (with its
// token) without a credit of its own.
TEST(ClientWorkerWireTest, AnOutcomeReadyWhileNoStreamIsUpGoesOutOnTheNextStream) {
  Received rec;
  std::atomic<bool> started{false}, dropped{false}, release{false};
  ConnectScript peer([&](int n, ConnectScript::Stream* s) {
    v1::ConnectRequest req;
    if (n == 0) {
      if (!ReadReport(s, n, &rec, &req)) return grpc::Status::OK;  // hello
      if (!Deliver(s, "job-a", 100)) return grpc::Status::OK;
      WaitFor([&] { return started.load(); }, 10s);
      dropped = true;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "scripted drop");
    }
    if (n == 1) {
      if (!ReadReport(s, n, &rec, &req)) return grpc::Status::OK;  // hello
      if (!ReadReport(s, n, &rec, &req)) return grpc::Status::OK;  // A's complete
      if (!Ack(s, req.request_id())) return grpc::Status::OK;
    }
    return Drain(s, n, &rec);
  });
  ScriptServer server(&peer);
  ASSERT_TRUE(server.ok());
  WorkerOptions o = ScriptedOptions();
  o.error_backoff = 1500ms;  // the reconnection waits this long
  o.max_error_backoff = 1500ms;
  auto worker = StartScripted(server, o, [&](const v1::Job&, JobContext&) -> absl::StatusOr<std::string> {
    started = true;
    WaitFor([&] { return release.load(); }, 20s);
    return std::string("a done");
  });
  ASSERT_TRUE(worker.ok()) << worker.status();
  ASSERT_TRUE(WaitFor([&] { return dropped.load(); }, 10s));
  std::this_thread::sleep_for(200ms);  // the worker sees the stream end, then waits to reconnect
  release = true;
  EXPECT_TRUE(WaitFor([&] { return (*worker)->stats().completed == 1; }, 15s));
  (*worker)->Stop();
  EXPECT_EQ((*worker)->stats().completed, 1u);

  std::vector<v1::ConnectRequest> s0 = rec.On(0);
  ASSERT_EQ(s0.size(), 1u) << "only the hello on the first stream";
  std::vector<v1::ConnectRequest> s1 = rec.On(1);
  ASSERT_GE(s1.size(), 2u);
  ASSERT_TRUE(s1[0].has_hello()) << s1[0].DebugString();
  EXPECT_EQ(s1[0].hello().credits(), 1u) << "the free slot was not granted by the hello";
  ASSERT_TRUE(s1[1].has_complete()) << s1[1].DebugString();
  EXPECT_EQ(s1[1].complete().job_id(), "job-a");
  EXPECT_EQ(s1[1].complete().lease_token(), 100u);
  uint32_t credits = 0;
  for (const auto& r : s1) credits += CreditsIn(r);
  EXPECT_EQ(credits, 1u) << "the slot was granted twice";
}

// Stop() returns only once the outcomes of finished jobs are acked (up to
// stop_timeout), so stats() is final then.
TEST(ClientWorkerWireTest, StopWaitsForTheAckOfAReportInFlight) {
  Received rec;
  std::atomic<bool> got_complete{false}, release_ack{false};
  ConnectScript peer([&](int n, ConnectScript::Stream* s) {
    if (n > 0) return Drain(s, n, &rec);
    v1::ConnectRequest req;
    if (!HelloThenJob0(s, n, &rec, &req)) return grpc::Status::OK;  // req: job-0's report
    got_complete = true;
    WaitFor([&] { return release_ack.load(); }, 20s);
    if (!Ack(s, req.request_id())) return grpc::Status::OK;
    return Drain(s, n, &rec);
  });
  ScriptServer server(&peer);
  ASSERT_TRUE(server.ok());
  WorkerOptions o = ScriptedOptions();
  o.stop_timeout = 10s;
  auto worker = StartScripted(server, o, [&](const v1::Job&, JobContext&) -> absl::StatusOr<std::string> {
    return std::string("done");
  });
  ASSERT_TRUE(worker.ok()) << worker.status();
  ASSERT_TRUE(WaitFor([&] { return got_complete.load(); }, 10s));
  std::atomic<bool> stopped{false};
  std::thread stopper([&] {
    (*worker)->Stop();
    stopped = true;
  });
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(stopped.load()) << "Stop() returned before the ack of a finished job";
  release_ack = true;
  stopper.join();
  EXPECT_EQ((*worker)->stats().completed, 1u);
  for (const auto& r : rec.On(0)) {
    EXPECT_FALSE(r.has_fail()) << "the finished job was failed back: " << r.DebugString();
  }
}

}  // namespace
}  // namespace errand::e2e
