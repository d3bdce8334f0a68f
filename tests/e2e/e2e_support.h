#pragma once

// Shared pieces of the end-to-end tests: a fixture that runs a real
// errand-broker on a temporary data directory, and a Client with the four
// errand.v1 stubs whose calls are always bounded by a deadline.

#include <google/protobuf/util/time_util.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "errand/v1/admin.grpc.pb.h"
#include "errand/v1/events.grpc.pb.h"
#include "errand/v1/jobs.grpc.pb.h"
#include "errand/v1/workers.grpc.pb.h"
#include "support/test_support.h"

// Substring checks (the e2e binary links gtest without gmock).
#define EXPECT_CONTAINS(hay, needle)                                           \
  EXPECT_NE(std::string(hay).find(needle), std::string::npos) << "missing: " \
                                                              << (needle) << "\nin: " << (hay)
#define EXPECT_NOT_CONTAINS(hay, needle) \
  EXPECT_EQ(std::string(hay).find(needle), std::string::npos) << "unexpected: " << (needle)

namespace errand::e2e {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using google::protobuf::util::TimeUtil;

// Sanitizer builds (ASan's quarantine, TSan's shadow memory) inflate RSS far
// beyond what the broker holds, so memory bounds are asserted only in plain
// builds (the figures are printed in all); the functional checks run
// everywhere.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kRssIsMeaningful = false;
#else
inline constexpr bool kRssIsMeaningful = true;
#endif

// ---------------------------------------------------------------------------
// Time conversions.

inline google::protobuf::Duration Dur(std::chrono::microseconds d) {
  return TimeUtil::MicrosecondsToDuration(d.count());
}

inline std::chrono::microseconds Micros(const google::protobuf::Duration& d) {
  return std::chrono::microseconds(TimeUtil::DurationToMicroseconds(d));
}

inline google::protobuf::Timestamp Ts(std::chrono::system_clock::time_point t) {
  return TimeUtil::MicrosecondsToTimestamp(
      std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count());
}

inline std::chrono::system_clock::time_point Time(const google::protobuf::Timestamp& ts) {
  return std::chrono::system_clock::time_point(
      std::chrono::microseconds(TimeUtil::TimestampToMicroseconds(ts)));
}

// `b - a` in microseconds.
inline std::chrono::microseconds Between(const google::protobuf::Timestamp& a,
                                         const google::protobuf::Timestamp& b) {
  return std::chrono::microseconds(TimeUtil::TimestampToMicroseconds(b) -
                                   TimeUtil::TimestampToMicroseconds(a));
}

inline std::chrono::milliseconds Since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
}

// ---------------------------------------------------------------------------
// Request builders.

inline v1::EnqueueRequest NewJob(const std::string& queue, const std::string& payload = "") {
  v1::EnqueueRequest r;
  r.set_queue(queue);
  r.set_payload(payload);
  return r;
}

inline v1::LeaseRequest LeaseReq(std::vector<std::string> queues, uint32_t max_jobs = 1,
                                 std::chrono::milliseconds wait = 0ms,
                                 const std::string& worker_id = "") {
  v1::LeaseRequest r;
  for (auto& q : queues) r.add_queues(std::move(q));
  r.set_max_jobs(max_jobs);
  if (wait.count() > 0) *r.mutable_wait() = Dur(wait);
  r.set_worker_id(worker_id);
  return r;
}

// For EXPECT_THAT-free status checks: "CODE: message".
inline std::string Show(const grpc::Status& s) {
  return std::to_string(static_cast<int>(s.error_code())) + ": " + s.error_message();
}

// ---------------------------------------------------------------------------
// Client: the errand.v1 stubs over one channel. Every call carries a deadline
// so that a broken broker fails a test instead of hanging it.

class Client {
 public:
  static constexpr std::chrono::milliseconds kRpcTimeout = 10s;

  explicit Client(std::shared_ptr<grpc::Channel> channel)
      : channel(std::move(channel)),
        jobs(v1::Jobs::NewStub(this->channel)),
        workers(v1::Workers::NewStub(this->channel)),
        events(v1::Events::NewStub(this->channel)),
        admin(v1::Admin::NewStub(this->channel)) {}

  grpc::Status Enqueue(const v1::EnqueueRequest& req, v1::EnqueueResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(kRpcTimeout));
    return jobs->Enqueue(&ctx, req, resp);
  }

  // Enqueues and returns the new id; a failure fails the test and returns "".
  std::string MustEnqueue(const v1::EnqueueRequest& req) {
    v1::EnqueueResponse resp;
    grpc::Status s = Enqueue(req, &resp);
    EXPECT_TRUE(s.ok()) << "Enqueue: " << Show(s);
    return resp.job_id();
  }

  grpc::Status EnqueueBatch(const v1::EnqueueBatchRequest& req, v1::EnqueueBatchResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(kRpcTimeout));
    return jobs->EnqueueBatch(&ctx, req, resp);
  }

  grpc::Status GetJob(const std::string& id, v1::Job* job) {
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(kRpcTimeout));
    v1::GetJobRequest req;
    req.set_job_id(id);
    v1::GetJobResponse resp;
    grpc::Status s = jobs->GetJob(&ctx, req, &resp);
    if (job != nullptr) *job = resp.job();
    return s;
  }

  v1::Job MustGetJob(const std::string& id) {
    v1::Job job;
    grpc::Status s = GetJob(id, &job);
    EXPECT_TRUE(s.ok()) << "GetJob " << id << ": " << Show(s);
    return job;
  }

  // The deadline is the request's wait plus kRpcTimeout.
  grpc::Status Lease(const v1::LeaseRequest& req, v1::LeaseResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(kRpcTimeout + std::chrono::duration_cast<std::chrono::milliseconds>(
                                                   Micros(req.wait()))));
    return workers->Lease(&ctx, req, resp);
  }

  // Leases and returns the leases; a failed call fails the test.
  std::vector<v1::Lease> MustLease(const v1::LeaseRequest& req) {
    v1::LeaseResponse resp;
    grpc::Status s = Lease(req, &resp);
    EXPECT_TRUE(s.ok()) << "Lease: " << Show(s);
    return {resp.leases().begin(), resp.leases().end()};
  }

  // Exactly one lease from `queue` (waiting up to `wait`); fails the test and
  // returns an empty Lease otherwise.
  v1::Lease MustLeaseOne(const std::string& queue, std::chrono::milliseconds wait = 0ms,
                         const std::string& worker_id = "") {
    auto leases = MustLease(LeaseReq({queue}, 1, wait, worker_id));
    EXPECT_EQ(leases.size(), 1u) << "no job leased from " << queue;
    return leases.empty() ? v1::Lease() : leases.front();
  }

  grpc::Status Complete(const std::string& id, uint64_t token, const std::string& result,
                        v1::Job* job = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(kRpcTimeout));
    v1::CompleteRequest req;
    req.set_job_id(id);
    req.set_lease_token(token);
    req.set_result(result);
    v1::CompleteResponse resp;
    grpc::Status s = workers->Complete(&ctx, req, &resp);
    if (job != nullptr) *job = resp.job();
    return s;
  }

  grpc::Status Fail(const v1::FailRequest& req, v1::Job* job = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(kRpcTimeout));
    v1::FailResponse resp;
    grpc::Status s = workers->Fail(&ctx, req, &resp);
    if (job != nullptr) *job = resp.job();
    return s;
  }

  grpc::Status Fail(const std::string& id, uint64_t token, const std::string& error,
                    v1::Job* job = nullptr) {
    v1::FailRequest req;
    req.set_job_id(id);
    req.set_lease_token(token);
    req.set_error(error);
    return Fail(req, job);
  }

  grpc::Status Extend(const v1::ExtendRequest& req, v1::ExtendResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(kRpcTimeout));
    return workers->Extend(&ctx, req, resp);
  }

  grpc::Status Extend(const std::string& id, uint64_t token, v1::ExtendResponse* resp) {
    v1::ExtendRequest req;
    req.set_job_id(id);
    req.set_lease_token(token);
    return Extend(req, resp);
  }

  v1::QueueStats Stats(const std::string& queue) {
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(kRpcTimeout));
    v1::GetQueueStatsRequest req;
    req.set_queue(queue);
    v1::GetQueueStatsResponse resp;
    grpc::Status s = admin->GetQueueStats(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << "GetQueueStats " << queue << ": " << Show(s);
    return resp.stats();
  }

  v1::GetServerInfoResponse ServerInfo() {
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(kRpcTimeout));
    v1::GetServerInfoResponse resp;
    grpc::Status s = admin->GetServerInfo(&ctx, v1::GetServerInfoRequest(), &resp);
    EXPECT_TRUE(s.ok()) << "GetServerInfo: " << Show(s);
    return resp;
  }

  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Jobs::Stub> jobs;
  std::unique_ptr<v1::Workers::Stub> workers;
  std::unique_ptr<v1::Events::Stub> events;
  std::unique_ptr<v1::Admin::Stub> admin;
};

// Every job of a queue, whatever its state.
inline uint64_t TotalJobs(const v1::QueueStats& s) {
  return s.scheduled() + s.ready() + s.leased() + s.succeeded() + s.dead() + s.cancelled();
}

// ---------------------------------------------------------------------------
// BrokerTest: each test gets its own broker on its own data directory. Derive
// a fixture per suite; override BrokerFlags() to pass extra flags.

class BrokerTest : public ::testing::Test {
 protected:
  virtual std::vector<std::string> BrokerFlags() const { return {}; }

  void SetUp() override { ASSERT_NO_FATAL_FAILURE(StartBroker()); }

  void TearDown() override {
    if (HasFailure() && broker_) {
      std::string log = broker_->Log();
      // The tail is enough unless ERRAND_E2E_FULL_LOG is set.
      if (log.size() > 8000 && std::getenv("ERRAND_E2E_FULL_LOG") == nullptr) {
        log = "...\n" + log.substr(log.size() - 8000);
      }
      std::cerr << "---- errand-broker log (" << data_dir_ << ") ----\n" << log << "----\n";
    }
  }

  // Starts the broker (again, on the same data directory) and connects
  // client_ to it.
  void StartBroker() {
    client_.reset();
    if (!broker_) broker_ = std::make_unique<testing::BrokerProcess>(data_dir_, BrokerFlags());
    std::string error;
    ASSERT_TRUE(broker_->Start(&error)) << error;
    client_ = NewClient();
  }

  // SIGTERM (must exit 0), then start again on the same data directory.
  void RestartBroker() {
    client_.reset();
    ASSERT_EQ(broker_->Stop(), 0) << "errand-broker did not exit cleanly on SIGTERM";
    ASSERT_NO_FATAL_FAILURE(StartBroker());
  }

  // SIGKILL (a crash), then start again on the same data directory.
  void CrashAndRestartBroker() {
    client_.reset();
    broker_->Kill();
    ASSERT_NO_FATAL_FAILURE(StartBroker());
  }

  // The broker still serves after something hostile: health is SERVING, and
  // a new job (on `queue`, with `payload`) can be enqueued and read back, on
  // a fresh connection.
  void ExpectHealthy(const std::string& queue = "hostile.after",
                     const std::string& payload = "fine") {
    int health = 0;
    grpc::Status hs = testing::HealthCheck(broker_->Channel(), "", &health);
    EXPECT_TRUE(hs.ok()) << Show(hs);
    EXPECT_EQ(health, 1);
    Client c(broker_->Channel());
    const std::string id = c.MustEnqueue(NewJob(queue, payload));
    ASSERT_FALSE(id.empty());
    EXPECT_EQ(c.MustGetJob(id).payload(), payload);
  }

  // A client on a channel (and connection) of its own.
  std::unique_ptr<Client> NewClient() const { return std::make_unique<Client>(broker_->Channel()); }

  Client& client() { return *client_; }

  testing::TempDir dir_;
  const std::string data_dir_ = dir_.path() + "/data";
  std::unique_ptr<testing::BrokerProcess> broker_;
  std::unique_ptr<Client> client_;
};

// ---------------------------------------------------------------------------
// Streams: blocking stubs read on a background thread into a queue, so that a
// test can wait for the next message with a timeout (or not read at all).

// A message queue filled by one reader thread; Next() waits with a timeout.
template <typename T>
class TimedQueue {
 public:
  void Push(T v) {
    std::lock_guard<std::mutex> lock(mu_);
    q_.push_back(std::move(v));
    cv_.notify_all();
  }
  void Close(grpc::Status status) {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = std::move(status);
    closed_ = true;
    cv_.notify_all();
  }
  // The next message, or nullopt when `timeout` passed or the stream ended
  // with nothing left.
  std::optional<T> Next(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return !q_.empty() || closed_; });
    if (q_.empty()) return std::nullopt;
    T v = std::move(q_.front());
    q_.pop_front();
    return v;
  }
  // Waits until the stream ended and every message was taken (or timeout);
  // returns whether it ended. Messages left unread are counted in `*unread`.
  bool WaitClosed(std::chrono::milliseconds timeout, grpc::Status* status,
                  size_t* unread = nullptr) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return closed_; });
    if (status != nullptr) *status = status_;
    if (unread != nullptr) *unread = q_.size();
    return closed_;
  }
  bool closed() {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_;
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return q_.size();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<T> q_;
  bool closed_ = false;
  grpc::Status status_;
};

// An Events.Subscribe call. The call starts in the constructor; the reader
// thread starts then or at StartReading() (a subscriber that reads nothing
// until then). Every call is bounded by a 120 s deadline.
class EventStream {
 public:
  EventStream(v1::Events::Stub* stub, const v1::SubscribeRequest& req, bool read_now = true) {
    ctx_.set_deadline(testing::In(120s));
    reader_ = stub->Subscribe(&ctx_, req);
    if (read_now) StartReading();
  }
  ~EventStream() {
    ctx_.TryCancel();
    if (thread_.joinable()) {
      thread_.join();
    } else {
      v1::SubscribeResponse m;
      while (reader_->Read(&m)) {
      }
      reader_->Finish();
    }
  }
  EventStream(const EventStream&) = delete;
  EventStream& operator=(const EventStream&) = delete;

  void StartReading() {
    if (thread_.joinable()) return;
    thread_ = std::thread([this] {
      v1::SubscribeResponse m;
      while (reader_->Read(&m)) q_.Push(std::move(*m.mutable_event()));
      q_.Close(reader_->Finish());
    });
  }
  std::optional<v1::Event> Next(std::chrono::milliseconds timeout = 10s) {
    return q_.Next(timeout);
  }
  // Up to `n` events, stopping early when `timeout` (for all of them) passes
  // or the stream ends.
  std::vector<v1::Event> Take(size_t n, std::chrono::milliseconds timeout = 10s) {
    std::vector<v1::Event> out;
    const auto until = Clock::now() + timeout;
    while (out.size() < n) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
      if (left.count() <= 0) break;
      auto ev = q_.Next(left);
      if (!ev) break;
      out.push_back(std::move(*ev));
    }
    return out;
  }
  // The stream's final status once it ended (within `timeout`).
  bool WaitEnd(grpc::Status* status, std::chrono::milliseconds timeout = 10s) {
    return q_.WaitClosed(timeout, status);
  }
  void Cancel() { ctx_.TryCancel(); }
  bool ended() { return q_.closed(); }
  size_t queued() { return q_.size(); }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<v1::SubscribeResponse>> reader_;
  TimedQueue<v1::Event> q_;
  std::thread thread_;
};

inline v1::SubscribeRequest SubscribeReq(std::vector<std::string> queues,
                                         std::vector<std::string> topics = {},
                                         uint64_t after_seq = 0) {
  v1::SubscribeRequest r;
  for (auto& q : queues) r.add_queues(std::move(q));
  for (auto& t : topics) r.add_topics(std::move(t));
  r.set_after_seq(after_seq);
  return r;
}

// Publishes to a topic; returns the message's seq (0 and a test failure when
// the call failed).
inline uint64_t MustPublish(Client& c, const std::string& topic, const std::string& payload = "",
                            v1::Durability durability = v1::DURABILITY_UNSPECIFIED) {
  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(Client::kRpcTimeout));
  v1::PublishRequest req;
  req.set_topic(topic);
  req.set_payload(payload);
  req.set_durability(durability);
  v1::PublishResponse resp;
  grpc::Status s = c.events->Publish(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << "Publish " << topic << ": " << Show(s);
  return resp.seq();
}

// The event log's head right now, as a seq to subscribe after with no race:
// publishes a marker message (which queue-only subscribers never see).
inline uint64_t HeadSeq(Client& c) { return MustPublish(c, "e2e.marker", "head"); }

inline grpc::Status WaitJob(Client& c, const std::string& id, std::chrono::milliseconds timeout,
                            v1::WaitJobResponse* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(timeout + Client::kRpcTimeout));
  v1::WaitJobRequest req;
  req.set_job_id(id);
  *req.mutable_timeout() = Dur(timeout);
  return c.jobs->WaitJob(&ctx, req, resp);
}

// A channel whose streams take little unread data (no BDP window growth, a
// 64 KiB stream window), so a subscriber that stops reading soon stalls the
// broker's writes to it, as a slow client on a real network does. (On
// loopback a default channel's window grows to megabytes.)
inline std::shared_ptr<grpc::Channel> SmallWindowChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  args.SetInt("grpc.use_local_subchannel_pool", 1);
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 * 1024);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

// Resident set size of a process in KiB (VmRSS in /proc/PID/status); 0 if
// unreadable.
inline uint64_t VmRssKb(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10);
  }
  return 0;
}

}  // namespace errand::e2e
