// End to end crash soak: producers, workers and a resuming subscriber run
// against the real broker while the test SIGKILLs and restarts it at random
// moments (a fixed number of times, each run bounded in time). At the end:
// every acknowledged job is in the store and reached a terminal state
// exactly once (one terminal event in the broker's event log, one
// successful attempt in its history), no job ran more often than its
// max_attempts, and the subscriber, resuming after each crash from the last
// sequence number it saw, received a gap-free, duplicate-free sequence.
//
// The kill moments come from a seeded generator; the seed is printed, and
// ERRAND_SOAK_SEED=<n> replays the schedule (thread timing still varies).

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

constexpr char kQueue[] = "soak";
constexpr uint32_t kMaxAttempts = 4;
constexpr int kKills = 6;
constexpr int kProducers = 3;
constexpr int kWorkers = 3;

bool IsTerminalEvent(v1::EventType t) {
  return t == v1::EVENT_TYPE_SUCCEEDED || t == v1::EVENT_TYPE_DEAD || t == v1::EVENT_TYPE_CANCELLED;
}

class CrashSoakE2E : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    broker_ = std::make_unique<testing::BrokerProcess>(
        data_dir_, std::vector<std::string>{"--commit=" + GetParam()});
    ASSERT_NO_FATAL_FAILURE(Start());
  }

  void TearDown() override {
    stop_producing_ = true;
    stop_ = true;
    StopSubscriber();
    for (auto* group : {&producers_, &workers_, &threads_}) {
      for (auto& t : *group) t.join();
    }
    if (HasFailure() && broker_) {
      std::string log = broker_->Log();
      if (log.size() > 8000) log = "...\n" + log.substr(log.size() - 8000);
      std::cerr << "---- errand-broker log ----\n" << log << "----\n";
    }
  }

  void Start() {
    std::string error;
    ASSERT_TRUE(broker_->Start(&error)) << error;
    std::lock_guard<std::mutex> lock(mu_);
    client_ = std::make_shared<Client>(broker_->Channel());
    boots_++;
  }

  // The client of the broker running now (a dead broker's client fails
  // fast, and the caller tries again with the next one).
  std::shared_ptr<Client> Current() {
    std::lock_guard<std::mutex> lock(mu_);
    return client_;
  }

  static void Pause() { std::this_thread::sleep_for(20ms); }

  void Producer(int p) {
    for (int n = 0; !stop_producing_ && n < 100000; ++n) {
      auto c = Current();
      v1::EnqueueRequest r = NewJob(kQueue, "p" + std::to_string(p) + "-" + std::to_string(n));
      r.set_max_attempts(kMaxAttempts);
      v1::EnqueueResponse resp;
      grpc::Status s = c->Enqueue(r, &resp);
      if (s.ok()) {
        std::lock_guard<std::mutex> lock(mu_);
        acked_[resp.job_id()] = r.payload();
      } else {
        Pause();
      }
      std::this_thread::sleep_for(2ms);  // a steady, modest load
    }
  }

  void Worker(int w) {
    const std::string worker_id = "w" + std::to_string(w);
    while (!stop_working_) {
      auto c = Current();
      v1::LeaseResponse resp;
      grpc::Status s = c->Lease(LeaseReq({kQueue}, 4, 200ms, worker_id), &resp);
      if (!s.ok()) {
        Pause();
        continue;
      }
      for (const v1::Lease& l : resp.leases()) {
        {
          std::lock_guard<std::mutex> lock(mu_);
          runs_[l.job().id()]++;
        }
        c->Complete(l.job().id(), l.lease_token(), "done by " + worker_id);
      }
    }
  }

  // Follows the queue's events from the oldest, resuming after the last
  // sequence number seen whenever the stream breaks.
  void Subscriber() {
    uint64_t last = 0;
    while (!stop_) {
      auto c = Current();
      v1::SubscribeRequest req;
      req.add_queues(kQueue);
      if (last == 0) {
        req.set_from_oldest(true);
      } else {
        req.set_after_seq(last);
      }
      grpc::ClientContext ctx;
      ctx.set_deadline(testing::In(10s));  // then resumes, like after a crash
      {
        std::lock_guard<std::mutex> lock(mu_);
        sub_ctx_ = &ctx;
      }
      auto reader = c->events->Subscribe(&ctx, req);
      v1::SubscribeResponse m;
      while (!stop_ && reader->Read(&m)) {
        last = m.event().seq();
        std::lock_guard<std::mutex> lock(mu_);
        seen_.push_back(m.event().seq());
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        sub_ctx_ = nullptr;
      }
      ctx.TryCancel();
      reader->Finish();
      if (!stop_) {
        std::lock_guard<std::mutex> lock(mu_);
        resumes_++;
      }
      Pause();
    }
  }

  void StopSubscriber() {
    stop_ = true;
    std::lock_guard<std::mutex> lock(mu_);
    if (sub_ctx_ != nullptr) sub_ctx_->TryCancel();
  }

  size_t Acked() {
    std::lock_guard<std::mutex> lock(mu_);
    return acked_.size();
  }

  testing::TempDir dir_;
  const std::string data_dir_ = dir_.path() + "/data";
  std::unique_ptr<testing::BrokerProcess> broker_;
  std::vector<std::thread> producers_, workers_, threads_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> stop_working_{false};
  std::atomic<bool> stop_producing_{false};

  std::mutex mu_;
  std::shared_ptr<Client> client_;
  int boots_ = 0;
  std::map<std::string, std::string> acked_;  // job id -> payload
  std::map<std::string, int> runs_;           // job id -> deliveries seen by workers
  std::vector<uint64_t> seen_;                // sequence numbers, as received
  int resumes_ = 0;
  grpc::ClientContext* sub_ctx_ = nullptr;
};

TEST_P(CrashSoakE2E, AcknowledgedJobsEndExactlyOnceAndResumingSubscriberSeesNoGap) {
  const uint64_t seed = [] {
    if (const char* s = std::getenv("ERRAND_SOAK_SEED")) return std::strtoull(s, nullptr, 10);
    return static_cast<unsigned long long>(std::random_device{}());
  }();
  std::printf("crash soak seed %llu (replay: ERRAND_SOAK_SEED=%llu)\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const auto soak_start = Clock::now();

  for (int p = 0; p < kProducers; ++p) producers_.emplace_back([this, p] { Producer(p); });
  for (int w = 0; w < kWorkers; ++w) workers_.emplace_back([this, w] { Worker(w); });
  threads_.emplace_back([this] { Subscriber(); });

  // Kill at random moments; each run lasts 300-1500 ms of traffic.
  for (int k = 0; k < kKills; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300 + rng() % 1200));
    broker_->Kill();
    ASSERT_NO_FATAL_FAILURE(Start());
  }

  // Drain: no more enqueues; workers finish what is left (bounded).
  stop_producing_ = true;
  for (auto& t : producers_) t.join();
  producers_.clear();
  auto c = Current();
  std::map<std::string, std::string> acked;
  {
    std::lock_guard<std::mutex> lock(mu_);
    acked = acked_;
  }
  ASSERT_GT(acked.size(), 0u);
  const auto drain_until = Clock::now() + 60s;
  size_t unfinished = 0;
  do {
    unfinished = 0;
    for (const auto& [id, payload] : acked) {
      v1::Job job;
      if (!c->GetJob(id, &job).ok() ||
          !(job.state() == v1::JOB_STATE_SUCCEEDED || job.state() == v1::JOB_STATE_DEAD)) {
        unfinished++;
      }
    }
    if (unfinished > 0) std::this_thread::sleep_for(200ms);
  } while (unfinished > 0 && Clock::now() < drain_until);
  stop_working_ = true;
  for (auto& t : workers_) t.join();
  workers_.clear();

  // The whole log, read after all traffic stopped: its head is the last
  // event written.
  std::map<std::string, int> terminal_events;
  std::vector<uint64_t> log_seqs;
  {
    v1::SubscribeRequest req;
    req.add_queues(kQueue);
    req.set_from_oldest(true);
    EventStream all(c->events.get(), req);
    for (size_t i = 0; i < 10'000'000; ++i) {
      auto ev = all.Next(3s);
      if (!ev) break;
      log_seqs.push_back(ev->seq());
      if (IsTerminalEvent(ev->type())) terminal_events[ev->job_id()]++;
    }
  }
  ASSERT_FALSE(log_seqs.empty());
  const uint64_t head = log_seqs.back();

  // Let the subscriber catch up with the head, then stop it.
  const auto catch_up = Clock::now() + 20s;
  while (Clock::now() < catch_up) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!seen_.empty() && seen_.back() >= head) break;
    }
    std::this_thread::sleep_for(20ms);
  }
  StopSubscriber();
  for (auto& t : threads_) t.join();
  threads_.clear();

  // 1. Every acknowledged job exists, with its payload, and is terminal.
  size_t missing = 0, not_terminal = 0, too_many_attempts = 0, bad_history = 0;
  for (const auto& [id, payload] : acked) {
    v1::Job job;
    grpc::Status s = c->GetJob(id, &job);
    if (!s.ok() || job.payload() != payload) {
      if (++missing <= 5) ADD_FAILURE() << "acknowledged job " << id << " vanished: " << Show(s);
      continue;
    }
    if (job.state() != v1::JOB_STATE_SUCCEEDED && job.state() != v1::JOB_STATE_DEAD) {
      if (++not_terminal <= 5) {
        ADD_FAILURE() << "job " << id << " never finished: " << v1::JobState_Name(job.state());
      }
    }
    if (job.attempts() > kMaxAttempts) {
      if (++too_many_attempts <= 5) {
        ADD_FAILURE() << "job " << id << " has " << job.attempts() << " attempts";
      }
    }
    int succeeded_attempts = 0;
    for (const auto& a : job.history()) {
      succeeded_attempts += a.outcome() == v1::ATTEMPT_OUTCOME_SUCCEEDED ? 1 : 0;
    }
    if (succeeded_attempts != (job.state() == v1::JOB_STATE_SUCCEEDED ? 1 : 0)) {
      if (++bad_history <= 5) {
        ADD_FAILURE() << "job " << id << " has " << succeeded_attempts << " successful attempts:\n"
                      << job.DebugString();
      }
    }
  }
  EXPECT_EQ(missing + not_terminal + too_many_attempts + bad_history, 0u);

  // 2. No job ran more often than its max_attempts allows.
  for (const auto& [id, runs] : runs_) {
    EXPECT_LE(runs, static_cast<int>(kMaxAttempts)) << "job " << id << " ran " << runs << " times";
  }

  // 3. The broker's log holds exactly one terminal event per job, and no
  // gap.
  for (size_t i = 1; i < log_seqs.size(); ++i) {
    ASSERT_EQ(log_seqs[i], log_seqs[i - 1] + 1) << "gap in the broker's event log";
  }
  for (const auto& [id, payload] : acked) {
    EXPECT_EQ(terminal_events[id], 1)
        << "job " << id << " has " << terminal_events[id] << " terminal events";
  }

  // 4. The resuming subscriber saw the same gap-free sequence.
  ASSERT_FALSE(seen_.empty());
  for (size_t i = 1; i < seen_.size(); ++i) {
    ASSERT_EQ(seen_[i], seen_[i - 1] + 1)
        << "the resuming subscriber jumped from " << seen_[i - 1] << " to " << seen_[i];
  }
  EXPECT_EQ(seen_.front(), log_seqs.front());
  EXPECT_EQ(seen_.back(), head);
  EXPECT_GE(resumes_, kKills) << "the subscriber did not resume after every crash";

  size_t dead = 0;
  for (const auto& [id, payload] : acked) {
    v1::Job job;
    if (c->GetJob(id, &job).ok() && job.state() == v1::JOB_STATE_DEAD) dead++;
  }
  std::printf(
      "%d kills in %lld ms: %zu acknowledged jobs (%zu dead), %zu events, %d subscriber "
      "reconnects\n",
      kKills, static_cast<long long>(Since(soak_start).count()), acked.size(), dead, seen_.size(),
      resumes_);
}

INSTANTIATE_TEST_SUITE_P(Commit, CrashSoakE2E, ::testing::Values("sync", "async"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace errand::e2e
