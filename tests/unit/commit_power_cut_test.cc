// Power-cut proofs of the broker's write path: a real JobStore, CommitPipeline
// and dispatch::Engine run on a fault-injecting RocksDB file system
// (support/fault_injection_fs.h) that drops every byte not yet fsynced when
// the "power" goes off at a random moment. The process runs on without
// noticing, as a real one could not; what it acknowledges after the cut is
// void. After each cut the store is
// reopened and checked: it opens, every job record matches the last event
// about it, the event log has no gaps, and nothing acknowledged is missing
// (sync mode) or only what was acknowledged since the last background WAL
// fsync is (async mode).
//
// The test thread plays core: it runs the io_context the pipeline posts to.
// Cut points come from a seeded generator; the seed is printed, and
// ERRAND_POWER_CUT_SEED=<n> replays one.

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>
#include <rocksdb/env.h>
#include <sys/stat.h>

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "commit/commit_pipeline.h"
#include "dispatch/engine.h"
#include "store/job_store.h"
#include "store/keys.h"
#include "support/fault_injection_fs.h"
#include "support/test_support.h"
#include "util/clock.h"

namespace errand::commit {
namespace {

using std::chrono::milliseconds;
using SteadyTime = std::chrono::steady_clock::time_point;
using google::protobuf::util::MessageDifferencer;

constexpr char kQueue[] = "pc";

uint64_t Seed() {
  if (const char* s = std::getenv("ERRAND_POWER_CUT_SEED")) return std::strtoull(s, nullptr, 10);
  return std::random_device{}();
}

class PowerCutTest : public ::testing::Test {
 protected:
  struct AckedJob {
    std::string payload;
    SteadyTime at;
  };
  struct AckedCompletion {
    std::string result;
    SteadyTime at;
  };
  struct AckedEvent {
    v1::Event event;
    SteadyTime at;
  };
  struct Leased {
    uint64_t id;
    uint64_t token;
  };

  void SetUp() override {
    path_ = dir_.path() + "/data";
    ASSERT_EQ(::mkdir(path_.c_str(), 0750), 0);
    env_ = rocksdb::NewCompositeEnv(fs_);
  }

  void TearDown() override {
    if (engine_) Halt();
  }

  // Opens the store, checks it against what was acknowledged before the
  // last cut, and starts a pipeline and an engine on it.
  void Boot(SyncMode mode) {
    auto store = store::JobStore::Open({path_, env_.get()});
    ASSERT_TRUE(store.ok()) << "store did not reopen after a power cut: " << store.status() << "\n"
                            << cut_log_;
    store_ = std::move(*store);
    CheckStore(mode);
    if (HasFatalFailure() || HasFailure()) return;

    CommitPipeline::Options popts;
    popts.mode = mode;
    popts.sync_interval = milliseconds(5);
    popts.write_on_post_thread = true;  // as the broker does
    pipeline_ = std::make_unique<CommitPipeline>(
        store_.get(), popts, [this](std::function<void()> fn) { asio::post(io_, std::move(fn)); },
        store_->LastEventSeq().value(), store_->FirstEventSeq().value());
    dispatch::EngineOptions eopts;
    eopts.sync_by_default = mode == SyncMode::kAlways;
    eopts.default_max_attempts = 3;
    engine_ = std::make_unique<dispatch::Engine>(io_, clock_, *store_, pipeline_.get(), eopts,
                                                 store_->boot_epoch());
    pipeline_->SetEventSink([this](std::vector<v1::Event>&& events) {
      for (const v1::Event& e : events) published_[e.seq()] = {e, std::chrono::steady_clock::now()};
    });
    absl::Status s = engine_->Recover();
    ASSERT_TRUE(s.ok()) << "recovery failed after a power cut: " << s;
    pipeline_->Start();
    engine_->Start();
    // Jobs leased before the cut are settled by Start (writes of their own).
    ASSERT_TRUE(RunUntil([&] { return pipeline_->Idle(); }));
    io_.poll();
    CheckEngineMatchesStore();
  }

  // Stops like a broker whose power went off: whatever is queued fails.
  void Halt() {
    engine_->Shutdown();
    pipeline_->Stop();
    io_.poll();
    engine_.reset();
    pipeline_.reset();
    store_->Close().IgnoreError();  // fails: the power is off
    store_.reset();
  }

  bool RunUntil(const std::function<bool()>& pred, milliseconds timeout = milliseconds(20000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!pred()) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      io_.run_one_for(milliseconds(5));
    }
    return true;
  }

  // Random enqueues, leases, completions and failures, several in flight,
  // until the power goes off after `cut_after` file system calls (or a
  // bounded number of operations, then the power is cut by hand).
  void RunUntilPowerCut(std::mt19937_64& rng, uint64_t cut_after) {
    fs_->ArmPowerCut(cut_after);
    int in_flight = 0;
    constexpr int kMaxOps = 400;
    for (int op = 0; op < kMaxOps && fs_->powered(); ++op) {
      ASSERT_TRUE(RunUntil([&] { return in_flight < 4; }));
      in_flight++;
      auto done = [&in_flight] { in_flight--; };
      const int kind = static_cast<int>(rng() % 10);
      if (kind < 4 || leased_.empty()) {
        if (kind >= 7) {
          LeaseSome(done);
        } else {
          EnqueueSome(rng, done);
        }
      } else if (kind < 7) {
        CompleteOne(rng, done);
      } else if (kind < 8) {
        FailOne(rng, done);
      } else {
        LeaseSome(done);
      }
      io_.poll();
      // Let time pass now and then, so that async mode's background fsync
      // (every few ms) runs between cuts even when writes are fast.
      if (op % 16 == 15) std::this_thread::sleep_for(milliseconds(2));
    }
    if (fs_->powered()) fs_->PowerCut();
    ASSERT_TRUE(RunUntil([&] { return in_flight == 0; })) << "operations never answered";
    last_wal_sync_start_ = fs_->last_wal_sync_start();
    cut_time_ = fs_->cut_time();
    Halt();
    cut_log_ = fs_->DropUnsyncedData();
    leased_.clear();
  }

  void EnqueueSome(std::mt19937_64& rng, std::function<void()> done) {
    std::vector<v1::EnqueueRequest> reqs(1 + rng() % 3);
    std::vector<std::string> payloads;
    for (auto& r : reqs) {
      r.set_queue(kQueue);
      r.set_payload("payload-" + std::to_string(next_payload_++));
      payloads.push_back(r.payload());
    }
    engine_->Enqueue(std::move(reqs), v1::DURABILITY_UNSPECIFIED,
                     [this, payloads, done](absl::StatusOr<dispatch::EnqueueOutcome> r) {
                       done();
                       if (!r.ok()) return;
                       const auto now = std::chrono::steady_clock::now();
                       for (size_t i = 0; i < r->job_ids.size(); ++i) {
                         acked_jobs_[store::ParseJobId(r->job_ids[i]).value()] = {payloads[i], now};
                       }
                     });
  }

  void LeaseSome(std::function<void()> done) {
    dispatch::LeaseSpec spec;
    spec.queues = {kQueue};
    spec.max_jobs = 2;
    spec.worker_id = "pc-worker";
    engine_->Lease(std::move(spec), [this, done](absl::StatusOr<std::vector<v1::Lease>> r) {
      done();
      if (!r.ok()) return;
      for (const v1::Lease& l : *r) {
        leased_.push_back({store::ParseJobId(l.job().id()).value(), l.lease_token()});
      }
    });
  }

  Leased TakeLeased(std::mt19937_64& rng) {
    size_t i = rng() % leased_.size();
    Leased l = leased_[i];
    leased_.erase(leased_.begin() + static_cast<long>(i));
    return l;
  }

  void CompleteOne(std::mt19937_64& rng, std::function<void()> done) {
    Leased l = TakeLeased(rng);
    std::string result = "result-" + std::to_string(l.id);
    engine_->Complete(l.id, l.token, result, [this, l, result, done](absl::StatusOr<v1::Job> r) {
      done();
      if (r.ok()) acked_completions_[l.id] = {result, std::chrono::steady_clock::now()};
    });
  }

  void FailOne(std::mt19937_64& rng, std::function<void()> done) {
    Leased l = TakeLeased(rng);
    dispatch::FailSpec spec;
    spec.error = "try again";
    spec.retry_after = milliseconds(20);  // back to READY soon, DEAD after 3 attempts
    engine_->Fail(l.id, l.token, spec, [done](absl::StatusOr<v1::Job>) { done(); });
  }

  // What survived a cut: checked on the raw store, before recovery writes.
  void CheckStore(SyncMode mode) {
    std::map<uint64_t, store::JobRecord> jobs;
    absl::Status s = store_->ForEachJob([&](uint64_t id, store::JobRecord&& rec) {
      jobs[id] = std::move(rec);
      return absl::OkStatus();
    });
    ASSERT_TRUE(s.ok()) << s;

    // The event log: contiguous, each key its event's sequence number.
    std::map<uint64_t, v1::Event> events;
    std::map<uint64_t, uint64_t> last_event_of_job;
    std::unique_ptr<rocksdb::Iterator> it(
        store_->db()->NewIterator(rocksdb::ReadOptions(), store_->events_cf()));
    uint64_t prev = 0;
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      v1::Event ev;
      ASSERT_TRUE(ev.ParseFromArray(it->value().data(), static_cast<int>(it->value().size())))
          << "corrupt event";
      const uint64_t seq = store::DecodeBE64(it->key().ToStringView());
      ASSERT_EQ(seq, ev.seq()) << "event stored under the wrong key";
      if (prev != 0) {
        ASSERT_EQ(seq, prev + 1) << "gap in the event log after " << prev;
      }
      prev = seq;
      if (!ev.job_id().empty()) last_event_of_job[store::ParseJobId(ev.job_id()).value()] = seq;
      events[seq] = std::move(ev);
    }
    ASSERT_TRUE(it->status().ok()) << it->status().ToString();
    const uint64_t last_seq = prev;

    // No event without its state change, and no state change without its
    // event: the newest event of each job carries the stored job.
    for (const auto& [id, rec] : jobs) {
      auto le = last_event_of_job.find(id);
      ASSERT_NE(le, last_event_of_job.end()) << "job " << id << " has no event";
      v1::Job stored = rec.job();
      stored.clear_payload();
      EXPECT_TRUE(MessageDifferencer::Equals(stored, events[le->second].job()))
          << "job " << id << " as stored:\n"
          << stored.DebugString() << "its last event (" << le->second << "):\n"
          << events[le->second].DebugString();
    }
    for (const auto& [id, seq] : last_event_of_job) {
      EXPECT_EQ(jobs.count(id), 1u)
          << "event " << seq << " names job " << id << " that is not stored";
    }

    // What was acknowledged after the cut never happened: the process runs
    // on (support/fault_injection_fs.h), but a real one would have died.
    auto void_after_cut = [&](auto& acked) {
      for (auto it2 = acked.begin(); it2 != acked.end();) {
        it2 = it2->second.at >= cut_time_ ? acked.erase(it2) : std::next(it2);
      }
    };
    void_after_cut(acked_jobs_);
    void_after_cut(acked_completions_);
    void_after_cut(published_);

    // Acknowledged writes. In async mode a loss is allowed only for what was
    // acknowledged after the last WAL fsync had started.
    auto allowed_loss = [&](SteadyTime acked_at) {
      return mode == SyncMode::kInterval && acked_at >= last_wal_sync_start_;
    };
    for (auto it2 = acked_jobs_.begin(); it2 != acked_jobs_.end();) {
      auto j = jobs.find(it2->first);
      if (j != jobs.end() && j->second.job().payload() == it2->second.payload) {
        ++it2;
        continue;
      }
      if (!allowed_loss(it2->second.at)) {
        ADD_FAILURE() << "acknowledged enqueue of job " << it2->first << " lost "
                      << (j == jobs.end() ? "(missing)" : "(payload differs)") << "\n"
                      << cut_log_;
      }
      lost_++;
      it2 = acked_jobs_.erase(it2);
    }
    for (auto it2 = acked_completions_.begin(); it2 != acked_completions_.end();) {
      auto j = jobs.find(it2->first);
      if (j != jobs.end() && j->second.job().state() == v1::JOB_STATE_SUCCEEDED &&
          j->second.job().result() == it2->second.result) {
        ++it2;
        continue;
      }
      if (!allowed_loss(it2->second.at)) {
        ADD_FAILURE() << "acknowledged completion of job " << it2->first << " lost\n" << cut_log_;
      }
      lost_++;
      it2 = acked_completions_.erase(it2);
    }
    for (const auto& [seq, acked] : published_) {
      auto e = events.find(seq);
      const bool kept = e != events.end() && MessageDifferencer::Equals(e->second, acked.event);
      if (!kept) {
        if (!allowed_loss(acked.at)) {
          ADD_FAILURE() << "published event " << seq << " ("
                        << v1::EventType_Name(acked.event.type()) << ") lost; log ends at "
                        << last_seq << "\n"
                        << cut_log_;
        }
        lost_++;
      }
    }
    published_.clear();
  }

  // The engine's recovered indexes agree with the store, job by job. Start
  // may have moved a job on since the scan: LEASED ones are released (READY,
  // SCHEDULED or DEAD) and due SCHEDULED ones become READY.
  void CheckEngineMatchesStore() {
    v1::QueueStats stats = engine_->QueueStats(kQueue);
    uint64_t counted = 0;
    absl::Status s = store_->ForEachJob([&](uint64_t id, store::JobRecord&& rec) {
      counted++;
      auto job = engine_->GetJob(id);
      EXPECT_TRUE(job.ok()) << "stored job " << id << " not recovered: " << job.status();
      if (!job.ok()) return absl::OkStatus();
      const v1::JobState stored = rec.job().state();
      EXPECT_TRUE(job->state() == stored || stored == v1::JOB_STATE_LEASED ||
                  (stored == v1::JOB_STATE_SCHEDULED && job->state() == v1::JOB_STATE_READY))
          << "job " << id << " recovered as " << v1::JobState_Name(job->state()) << ", stored as "
          << v1::JobState_Name(stored);
      return absl::OkStatus();
    });
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_EQ(stats.scheduled() + stats.ready() + stats.leased() + stats.succeeded() +
                  stats.dead() + stats.cancelled(),
              counted)
        << "queue stats disagree with the stored jobs";
  }

  // Boots, runs until a random cut and reboots, `rounds` times.
  void RunRounds(SyncMode mode, int rounds) {
    const uint64_t seed = Seed();
    std::printf("power-cut seed %llu (replay: ERRAND_POWER_CUT_SEED=%llu)\n",
                static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    for (int round = 0; round < rounds; ++round) {
      SCOPED_TRACE("round " + std::to_string(round));
      Boot(mode);
      if (HasFailure()) return;
      RunUntilPowerCut(rng, 1 + rng() % 200);
      if (HasFailure()) return;
    }
    Boot(mode);  // checks the last round
    std::printf("%d cuts, %llu acknowledged jobs and %llu completions kept, %llu losses\n", rounds,
                static_cast<unsigned long long>(acked_jobs_.size()),
                static_cast<unsigned long long>(acked_completions_.size()),
                static_cast<unsigned long long>(lost_));
  }

  testing::TempDir dir_;
  std::string path_;
  std::shared_ptr<testing::FaultInjectionFs> fs_ = std::make_shared<testing::FaultInjectionFs>();
  std::unique_ptr<rocksdb::Env> env_;
  util::SystemClock clock_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_{io_.get_executor()};
  std::unique_ptr<store::JobStore> store_;
  std::unique_ptr<CommitPipeline> pipeline_;
  std::unique_ptr<dispatch::Engine> engine_;

  std::map<uint64_t, AckedJob> acked_jobs_;
  std::map<uint64_t, AckedCompletion> acked_completions_;
  std::map<uint64_t, AckedEvent> published_;
  std::vector<Leased> leased_;
  uint64_t next_payload_ = 0;
  uint64_t lost_ = 0;
  SteadyTime last_wal_sync_start_{};
  SteadyTime cut_time_{};
  std::string cut_log_;
};

// A background WAL sync that fails (the store stopped: power cut, full disk)
// is retried once per sync interval, not in a busy loop.
TEST_F(PowerCutTest, FailedBackgroundSyncIsRetriedOncePerInterval) {
  auto store = store::JobStore::Open({path_, env_.get()});
  ASSERT_TRUE(store.ok()) << store.status();
  store_ = std::move(*store);
  CommitPipeline::Options popts;
  popts.mode = SyncMode::kInterval;
  popts.sync_interval = milliseconds(50);
  pipeline_ = std::make_unique<CommitPipeline>(
      store_.get(), popts, [this](std::function<void()> fn) { asio::post(io_, std::move(fn)); }, 0,
      0);
  pipeline_->Start();
  fs_->FailAfterCut(true);
  fs_->ArmPowerCutOnSync();
  Mutation m;
  m.sync = false;
  m.ops.push_back({Cf::kDefault, "k", std::string("v")});
  std::optional<absl::Status> written;
  pipeline_->Submit(std::move(m), [&](CommitResult&& r) { written = r.status; });
  ASSERT_TRUE(RunUntil([&] { return written.has_value(); }));
  ASSERT_TRUE(written->ok()) << *written;
  ASSERT_TRUE(RunUntil([&] { return !fs_->powered(); })) << "no background sync ran";
  const auto start = std::chrono::steady_clock::now();
  RunUntil([] { return false; }, milliseconds(500));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  const uint64_t failed = pipeline_->stats().failed_syncs;
  EXPECT_GE(failed, 1u);
  // At most one try per interval (plus the first); a spin makes millions.
  EXPECT_LE(failed, 2 + static_cast<uint64_t>(elapsed / popts.sync_interval)) << failed;
  pipeline_->Stop();
  io_.poll();
  pipeline_.reset();
  store_->Close().IgnoreError();
  store_.reset();
}

TEST_F(PowerCutTest, SyncModeLosesNoAcknowledgedEnqueueCompletionOrEvent) {
  RunRounds(SyncMode::kAlways, 20);
  EXPECT_EQ(lost_, 0u);
  EXPECT_GT(acked_jobs_.size(), 0u);
  EXPECT_GT(acked_completions_.size(), 0u);
}

TEST_F(PowerCutTest, AsyncModeLosesOnlyWhatWasAcknowledgedSinceTheLastBackgroundSync) {
  RunRounds(SyncMode::kInterval, 20);
  EXPECT_GT(acked_jobs_.size(), 0u);
  EXPECT_GT(fs_->wal_syncs(), 0u) << "no background WAL sync ran";
}

}  // namespace
}  // namespace errand::commit
