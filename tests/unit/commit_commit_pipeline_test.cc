#include "commit/commit_pipeline.h"

#include <absl/synchronization/mutex.h>
#include <absl/time/time.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "store/job_store.h"
#include "store/keys.h"
#include "support/inbox.h"
#include "support/test_support.h"
#include "util/time.h"

namespace errand::commit {
namespace {

using std::chrono::milliseconds;

using testing::Inbox;

Mutation JobWrite(uint64_t id, const std::string& value, bool sync = true) {
  Mutation m;
  m.sync = sync;
  m.ops.push_back({Cf::kJobs, store::EncodeBE64(id), value});
  return m;
}

// An event stamped `age` ago (the event log is trimmed by age against the
// system clock, so events must carry a recent time to be retained).
v1::Event Event(const std::string& job_id, std::chrono::microseconds age = {}) {
  v1::Event ev;
  ev.set_type(v1::EVENT_TYPE_ENQUEUED);
  ev.set_job_id(job_id);
  *ev.mutable_time() = util::ToProto(std::chrono::system_clock::now() - age);
  return ev;
}

// A lease: an async write of job `id` with its event.
Mutation LeaseWrite(uint64_t id) {
  Mutation m = JobWrite(id, "leased", /*sync=*/false);
  m.events = {Event(std::to_string(id))};
  return m;
}

// Sends the sequence numbers of the events `pipeline` hands on to `sunk`.
void CollectSeqs(CommitPipeline& pipeline, std::vector<uint64_t>* sunk) {
  pipeline.SetEventSink([sunk](std::vector<v1::Event>&& evs) {
    for (const auto& e : evs) sunk->push_back(e.seq());
  });
}

// Every test runs twice: with the pipeline's writer thread, and with the
// writes done by the closures it posts (write_on_post_thread).
class CommitPipelineTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    store::JobStore::Options options;
    options.path = dir_.path() + "/data";
    auto store = store::JobStore::Open(options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }

  std::unique_ptr<CommitPipeline> MakePipeline(CommitPipeline::Options options = {},
                                               uint64_t last_event_seq = 0) {
    options.write_on_post_thread = GetParam();
    return std::make_unique<CommitPipeline>(store_.get(), options, inbox_.Poster(),
                                            last_event_seq);
  }

  std::string StoredValue(uint64_t id) {
    // Values are written raw (not JobRecords) by these tests: read the bytes.
    std::string value;
    rocksdb::Status s = store_->db()->Get(rocksdb::ReadOptions(), store_->jobs_cf(),
                                          store::EncodeBE64(id), &value);
    return s.ok() ? value : "<" + s.ToString() + ">";
  }

  testing::TempDir dir_;
  std::unique_ptr<store::JobStore> store_;
  Inbox inbox_;
};

TEST_P(CommitPipelineTest, MutationsSubmittedBeforeStartCommitAsOneGroup) {
  auto pipeline = MakePipeline();
  constexpr int kN = 50;
  int completed = 0;
  std::vector<uint64_t> commit_seqs;
  for (int i = 0; i < kN; ++i) {
    pipeline->Submit(JobWrite(i + 1, "v" + std::to_string(i)), [&](CommitResult&& r) {
      EXPECT_TRUE(r.status.ok()) << r.status;
      EXPECT_TRUE(r.synced);
      commit_seqs.push_back(r.commit_seq);
      ++completed;
    });
  }
  pipeline->Start();
  ASSERT_TRUE(inbox_.RunUntil([&] { return completed == kN; }));

  CommitPipeline::Stats st = pipeline->stats();
  EXPECT_EQ(st.groups, 1u);
  EXPECT_EQ(st.fsyncs, 1u);
  EXPECT_EQ(st.writes, static_cast<uint64_t>(kN));
  EXPECT_EQ(st.failed, 0u);
  // One RocksDB write: every mutation reports the same commit sequence.
  ASSERT_EQ(commit_seqs.size(), static_cast<size_t>(kN));
  for (uint64_t s : commit_seqs) EXPECT_EQ(s, commit_seqs.front());
  EXPECT_EQ(commit_seqs.front(), store_->LatestSequence());
  pipeline->Stop();
}

TEST_P(CommitPipelineTest, ConcurrentSyncWritersShareFsyncs) {
  // post runs the result inline on the commit thread; each writer blocks on
  // its own result like a client waiting for its acknowledgement.
  CommitPipeline::Options options;
  options.write_on_post_thread = GetParam();
  CommitPipeline pipeline(store_.get(), options, [](std::function<void()> fn) { fn(); }, 0);
  pipeline.Start();
  constexpr int kThreads = 8;
  constexpr int kPerThread = 200;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        absl::Mutex mu;
        bool done = false;
        bool ok = false;
        pipeline.Submit(JobWrite(static_cast<uint64_t>(t) * 1000 + i + 1, "x"),
                        [&](CommitResult&& r) {
                          absl::MutexLock lock(&mu);
                          ok = r.status.ok() && r.synced;
                          done = true;
                        });
        absl::MutexLock lock(&mu);
        if (!mu.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(30)) || !ok) failures++;
      }
    });
  }
  for (auto& th : threads) th.join();
  pipeline.Stop();

  EXPECT_EQ(failures.load(), 0);
  CommitPipeline::Stats st = pipeline.stats();
  EXPECT_EQ(st.writes, static_cast<uint64_t>(kThreads * kPerThread));
  EXPECT_EQ(st.failed, 0u);
  EXPECT_LT(st.fsyncs, st.writes) << "groups=" << st.groups;
  RecordProperty("writes", static_cast<int>(st.writes));
  RecordProperty("fsyncs", static_cast<int>(st.fsyncs));
  // With its own writer thread the writes pile up behind each other into
  // groups. Written by the posting thread (here: each submitter, since post
  // runs closures in place) a write forms a group of one unless another is
  // being written at that moment: only the fsyncs are shared for sure.
  if (!GetParam()) {
    EXPECT_LT(st.groups, st.writes);
  }
  // Every write is in the store.
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(StoredValue(static_cast<uint64_t>(t) * 1000 + 1), "x");
    EXPECT_EQ(StoredValue(static_cast<uint64_t>(t) * 1000 + kPerThread), "x");
  }
}

TEST_P(CommitPipelineTest, EventsGetConsecutiveSeqsAfterLastEventSeq) {
  auto pipeline = MakePipeline({}, /*last_event_seq=*/41);
  EXPECT_EQ(pipeline->last_event_seq(), 41u);

  std::vector<std::vector<uint64_t>> seqs(3);
  int completed = 0;
  auto collect = [&](int slot) {
    return [&, slot](CommitResult&& r) {
      EXPECT_TRUE(r.status.ok()) << r.status;
      for (uint32_t i = 0; i < r.event_count; ++i) seqs[slot].push_back(r.first_event_seq + i);
      ++completed;
    };
  };
  Mutation a = JobWrite(1, "a");
  a.events = {Event("a1"), Event("a2")};
  Mutation b = JobWrite(2, "b");  // no events: consumes no numbers
  Mutation c = JobWrite(3, "c");
  c.events = {Event("c1"), Event("c2"), Event("c3")};
  pipeline->Submit(std::move(a), collect(0));
  pipeline->Submit(std::move(b), collect(1));
  pipeline->Submit(std::move(c), collect(2));
  pipeline->Start();
  ASSERT_TRUE(inbox_.RunUntil([&] { return completed == 3; }));

  EXPECT_EQ(seqs[0], (std::vector<uint64_t>{42, 43}));
  EXPECT_TRUE(seqs[1].empty());
  EXPECT_EQ(seqs[2], (std::vector<uint64_t>{44, 45, 46}));
  EXPECT_EQ(pipeline->last_event_seq(), 46u);

  // A later group continues where the first stopped.
  std::vector<uint64_t> later;
  Mutation d = JobWrite(4, "d");
  d.events = {Event("d1")};
  bool done = false;
  pipeline->Submit(std::move(d), [&](CommitResult&& r) {
    for (uint32_t i = 0; i < r.event_count; ++i) later.push_back(r.first_event_seq + i);
    done = true;
  });
  ASSERT_TRUE(inbox_.RunUntil([&] { return done; }));
  EXPECT_EQ(later, (std::vector<uint64_t>{47}));
  EXPECT_EQ(pipeline->last_event_seq(), 47u);
  pipeline->Stop();

  // The events are in the log, keyed by their numbers, with their contents.
  EXPECT_EQ(store_->FirstEventSeq().value(), 42u);
  EXPECT_EQ(store_->LastEventSeq().value(), 47u);
  std::string value;
  ASSERT_TRUE(store_->db()
                  ->Get(rocksdb::ReadOptions(), store_->events_cf(), store::EncodeBE64(44), &value)
                  .ok());
  v1::Event stored;
  ASSERT_TRUE(stored.ParseFromString(value));
  EXPECT_EQ(stored.seq(), 44u);
  EXPECT_EQ(stored.job_id(), "c1");
}

TEST_P(CommitPipelineTest, AsyncWritesAreAcknowledgedUnsyncedAndSyncedInBackground) {
  CommitPipeline::Options options;
  options.mode = SyncMode::kInterval;
  options.sync_interval = milliseconds(20);
  auto pipeline = MakePipeline(options);
  pipeline->Start();

  int completed = 0;
  for (int i = 0; i < 3; ++i) {
    pipeline->Submit(JobWrite(i + 1, "async", /*sync=*/false), [&](CommitResult&& r) {
      EXPECT_TRUE(r.status.ok()) << r.status;
      EXPECT_FALSE(r.synced);
      EXPECT_GT(r.commit_seq, 0u);
      ++completed;
    });
  }
  ASSERT_TRUE(inbox_.RunUntil([&] { return completed == 3; }));

  // The background fsync follows within a few sync intervals.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (pipeline->stats().fsyncs == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(5));
  }
  EXPECT_GE(pipeline->stats().fsyncs, 1u);
  EXPECT_EQ(pipeline->stats().writes, 3u);
  EXPECT_EQ(StoredValue(2), "async");
  pipeline->Stop();
}

TEST_P(CommitPipelineTest, AsyncWriteIsNotHeldBehindASyncWritesFsync) {
  // One group holds an async and a sync write: the async one is
  // acknowledged as soon as it is written, the sync one after the fsync.
  auto pipeline = MakePipeline();
  std::vector<std::pair<uint64_t, bool>> results;  // (job, synced) in delivery order
  pipeline->Submit(JobWrite(1, "a", /*sync=*/true),
                   [&](CommitResult&& r) { results.emplace_back(1, r.synced); });
  pipeline->Submit(JobWrite(2, "b", /*sync=*/false),
                   [&](CommitResult&& r) { results.emplace_back(2, r.synced); });
  pipeline->Start();
  ASSERT_TRUE(inbox_.RunUntil([&] { return results.size() == 2; }));
  EXPECT_EQ(results, (std::vector<std::pair<uint64_t, bool>>{{2, false}, {1, true}}));
  EXPECT_EQ(pipeline->stats().groups, 1u);
  EXPECT_EQ(pipeline->stats().fsyncs, 1u);
  EXPECT_EQ(StoredValue(1), "a");
  EXPECT_EQ(StoredValue(2), "b");
  pipeline->Stop();
}

TEST_P(CommitPipelineTest, InSyncModeEventsOfAsyncWritesWaitForTheFsync) {
  // A lease is acknowledged without fsync, but its event reaches
  // subscribers only once it is fsynced: a sequence number a subscriber saw
  // must survive a power cut.
  auto pipeline = MakePipeline();  // kAlways
  std::vector<uint64_t> sunk;
  uint64_t fsyncs_when_sunk = 0;
  pipeline->SetEventSink([&](std::vector<v1::Event>&& evs) {
    for (const auto& e : evs) sunk.push_back(e.seq());
    fsyncs_when_sunk = pipeline->stats().fsyncs;
  });
  Mutation m = JobWrite(1, "leased", /*sync=*/false);
  m.events = {Event("1")};
  bool acked = false;
  pipeline->Submit(std::move(m), [&](CommitResult&& r) {
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_FALSE(r.synced);
    EXPECT_EQ(r.first_event_seq, 1u);
    EXPECT_EQ(r.event_count, 1u);
    acked = true;
  });
  pipeline->Start();
  ASSERT_TRUE(inbox_.RunUntil([&] { return acked && !sunk.empty(); }));
  EXPECT_EQ(sunk, (std::vector<uint64_t>{1}));
  EXPECT_GE(fsyncs_when_sunk, 1u);
  pipeline->Stop();
}

TEST_P(CommitPipelineTest, InSyncModeEventsOfAsyncWritesRideTheNextSyncWritesFsync) {
  // A lease's event waits for the fsync of the complete that follows it
  // instead of costing an fsync of its own: one fsync for both.
  CommitPipeline::Options options;
  options.event_fsync_delay = std::chrono::minutes(10);
  options.sync_interval = std::chrono::minutes(10);  // no background fsync either
  auto pipeline = MakePipeline(options);
  std::vector<uint64_t> sunk;
  CollectSeqs(*pipeline, &sunk);
  pipeline->Start();
  bool lease_acked = false;
  pipeline->Submit(LeaseWrite(1), [&](CommitResult&& r) {
    EXPECT_TRUE(r.status.ok()) << r.status;
    EXPECT_FALSE(r.synced);
    lease_acked = true;
  });
  ASSERT_TRUE(inbox_.RunUntil([&] { return lease_acked; }));
  // Nothing asks for an fsync yet: the event waits.
  EXPECT_FALSE(inbox_.RunUntil([&] { return !sunk.empty(); }, absl::Milliseconds(200)));
  EXPECT_EQ(pipeline->stats().fsyncs, 0u);

  Mutation complete = JobWrite(1, "done", /*sync=*/true);
  complete.events = {Event("1")};
  bool completed = false;
  pipeline->Submit(std::move(complete), [&](CommitResult&& r) {
    EXPECT_TRUE(r.status.ok()) << r.status;
    EXPECT_TRUE(r.synced);
    completed = true;
  });
  ASSERT_TRUE(inbox_.RunUntil([&] { return completed && sunk.size() == 2; }));
  EXPECT_EQ(sunk, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(pipeline->stats().fsyncs, 1u);
  pipeline->Stop();
}

TEST_P(CommitPipelineTest, InSyncModeEventsWaitingForAnFsyncGoOutAtStop) {
  CommitPipeline::Options options;
  options.event_fsync_delay = std::chrono::minutes(10);
  auto pipeline = MakePipeline(options);
  std::vector<uint64_t> sunk;
  CollectSeqs(*pipeline, &sunk);
  pipeline->Start();
  bool acked = false;
  pipeline->Submit(LeaseWrite(1), [&](CommitResult&&) { acked = true; });
  ASSERT_TRUE(inbox_.RunUntil([&] { return acked; }));
  pipeline->Stop();  // does not wait out the delay
  EXPECT_GE(pipeline->stats().fsyncs, 1u);
  ASSERT_TRUE(inbox_.RunUntil([&] { return !sunk.empty(); }));
  EXPECT_EQ(sunk, (std::vector<uint64_t>{1}));
}

TEST_P(CommitPipelineTest, InIntervalModeEventsGoOutWithTheirWrite) {
  CommitPipeline::Options options;
  options.mode = SyncMode::kInterval;
  options.sync_interval = std::chrono::milliseconds(60000);
  auto pipeline = MakePipeline(options);
  std::vector<uint64_t> sunk;
  uint64_t fsyncs_when_sunk = 99;
  pipeline->SetEventSink([&](std::vector<v1::Event>&& evs) {
    for (const auto& e : evs) sunk.push_back(e.seq());
    fsyncs_when_sunk = pipeline->stats().fsyncs;
  });
  Mutation m = JobWrite(1, "v", /*sync=*/false);
  m.events = {Event("1"), Event("1")};
  pipeline->Submit(std::move(m), [](CommitResult&&) {});
  pipeline->Start();
  ASSERT_TRUE(inbox_.RunUntil([&] { return sunk.size() == 2; }));
  EXPECT_EQ(sunk, (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(fsyncs_when_sunk, 0u);
  pipeline->Stop();
}

TEST_P(CommitPipelineTest, SyncResultsKeepSubmissionOrderAcrossGroups) {
  // Sync writes are written group by group and fsynced in batches; their
  // results still arrive in submission order.
  auto pipeline = MakePipeline();
  pipeline->Start();
  std::vector<uint64_t> order;
  std::vector<std::thread> threads;
  absl::Mutex submit_mu;
  uint64_t next = 0;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        absl::MutexLock lock(&submit_mu);  // submission order = id order
        const uint64_t id = ++next;
        pipeline->Submit(JobWrite(id, "v", /*sync=*/true),
                         [&order, id](CommitResult&& r) {
                           ASSERT_TRUE(r.status.ok()) << r.status;
                           ASSERT_TRUE(r.synced);
                           order.push_back(id);
                         });
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_TRUE(inbox_.RunUntil([&] { return order.size() == 200; }));
  for (size_t i = 0; i < order.size(); ++i) EXPECT_EQ(order[i], i + 1);
  EXPECT_LE(pipeline->stats().fsyncs, pipeline->stats().groups);
  pipeline->Stop();
}

TEST_P(CommitPipelineTest, SubmitAfterStopIsUnavailable) {
  auto pipeline = MakePipeline();
  pipeline->Start();
  pipeline->Stop();
  bool done = false;
  pipeline->Submit(JobWrite(1, "late"), [&](CommitResult&& r) {
    EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable) << r.status;
    EXPECT_FALSE(r.synced);
    EXPECT_EQ(r.event_count, 0u);
    done = true;
  });
  ASSERT_TRUE(inbox_.RunUntil([&] { return done; }));
  EXPECT_EQ(pipeline->stats().writes, 0u);
  EXPECT_EQ(StoredValue(1).rfind("<NotFound", 0), 0u) << StoredValue(1);
}

TEST_P(CommitPipelineTest, StopCommitsEverythingQueued) {
  auto pipeline = MakePipeline();
  constexpr int kN = 100;
  int ok = 0;
  pipeline->Start();
  for (int i = 0; i < kN; ++i) {
    pipeline->Submit(JobWrite(i + 1, "v", /*sync=*/false), [&](CommitResult&& r) {
      if (r.status.ok()) ++ok;
    });
  }
  pipeline->Stop();
  ASSERT_TRUE(inbox_.RunUntil([&] { return ok == kN; }));
  EXPECT_EQ(pipeline->stats().writes, static_cast<uint64_t>(kN));
  // Stop fsyncs what async writes left unsynced.
  EXPECT_GE(pipeline->stats().fsyncs, 1u);
}

TEST_P(CommitPipelineTest, StopWithoutStartStillCommitsQueuedWork) {
  auto pipeline = MakePipeline();
  bool ok = false;
  pipeline->Submit(JobWrite(5, "queued"), [&](CommitResult&& r) { ok = r.status.ok(); });
  pipeline->Stop();
  ASSERT_TRUE(inbox_.RunUntil([&] { return ok; }));
  EXPECT_EQ(StoredValue(5), "queued");
}

TEST_P(CommitPipelineTest, MaxGroupSplitsLargeQueues) {
  CommitPipeline::Options options;
  options.max_group = 10;
  auto pipeline = MakePipeline(options);
  int completed = 0;
  for (int i = 0; i < 25; ++i) {
    pipeline->Submit(JobWrite(i + 1, "v"), [&](CommitResult&&) { ++completed; });
  }
  pipeline->Start();
  ASSERT_TRUE(inbox_.RunUntil([&] { return completed == 25; }));
  EXPECT_EQ(pipeline->stats().groups, 3u);
  EXPECT_EQ(pipeline->stats().writes, 25u);
  pipeline->Stop();
}

TEST_P(CommitPipelineTest, WritesAndDeletesAreReadableThroughJobStoreAfterStop) {
  auto pipeline = MakePipeline();
  pipeline->Start();
  store::JobRecord rec;
  rec.mutable_job()->set_id(store::FormatJobId(7));
  rec.mutable_job()->set_queue("q");
  rec.mutable_job()->set_state(v1::JOB_STATE_READY);
  rec.mutable_job()->set_payload("hello");
  rec.set_lease_token(99);
  Mutation put;
  put.ops.push_back({Cf::kJobs, store::EncodeBE64(7), rec.SerializeAsString()});
  put.ops.push_back({Cf::kJobs, store::EncodeBE64(8), rec.SerializeAsString()});
  Mutation del;
  del.ops.push_back({Cf::kJobs, store::EncodeBE64(8), std::nullopt});
  Mutation meta;
  meta.ops.push_back({Cf::kDefault, "test-key", std::string("test-value")});
  int completed = 0;
  pipeline->Submit(std::move(put), [&](CommitResult&&) { ++completed; });
  pipeline->Submit(std::move(del), [&](CommitResult&&) { ++completed; });
  pipeline->Submit(std::move(meta), [&](CommitResult&&) { ++completed; });
  ASSERT_TRUE(inbox_.RunUntil([&] { return completed == 3; }));
  pipeline->Stop();

  auto got = store_->GetJob(7);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->job().payload(), "hello");
  EXPECT_EQ((*got)->lease_token(), 99u);
  auto deleted = store_->GetJob(8);
  ASSERT_TRUE(deleted.ok());
  EXPECT_FALSE(deleted->has_value());
  std::string value;
  ASSERT_TRUE(store_->db()->Get(rocksdb::ReadOptions(), "test-key", &value).ok());
  EXPECT_EQ(value, "test-value");

  // And after the store is closed and reopened.
  ASSERT_TRUE(store_->Close().ok());
  store_.reset();
  store::JobStore::Options options;
  options.path = dir_.path() + "/data";
  auto reopened = store::JobStore::Open(options);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  auto again = (*reopened)->GetJob(7);
  ASSERT_TRUE(again.ok() && again->has_value());
  EXPECT_EQ((*again)->job().payload(), "hello");
}

TEST_P(CommitPipelineTest, EventLogIsTrimmedToMaxEvents) {
  CommitPipeline::Options options;
  options.max_events = 5;
  auto pipeline = MakePipeline(options);
  Mutation m = JobWrite(1, "v");
  for (int i = 0; i < 12; ++i) m.events.push_back(Event("e" + std::to_string(i)));
  bool done = false;
  pipeline->Submit(std::move(m), [&](CommitResult&& r) {
    EXPECT_EQ(r.event_count, 12u);
    EXPECT_EQ(r.first_event_seq, 1u);
    done = true;
  });
  pipeline->Start();
  ASSERT_TRUE(inbox_.RunUntil([&] { return done; }));
  pipeline->Stop();
  pipeline->TrimEvents();  // whether or not the commit thread trimmed already

  EXPECT_EQ(pipeline->first_event_seq(), 8u);
  EXPECT_EQ(pipeline->last_event_seq(), 12u);
  EXPECT_EQ(store_->FirstEventSeq().value(), 8u);
  EXPECT_EQ(store_->LastEventSeq().value(), 12u);
}

TEST_P(CommitPipelineTest, EventLogIsTrimmedByAge) {
  CommitPipeline::Options options;
  options.max_event_age = std::chrono::hours(1);
  auto pipeline = MakePipeline(options, /*last_event_seq=*/0);
  Mutation m = JobWrite(1, "v");
  for (int i = 0; i < 3; ++i) m.events.push_back(Event("old", std::chrono::hours(2)));
  for (int i = 0; i < 2; ++i) m.events.push_back(Event("new"));
  bool done = false;
  pipeline->Submit(std::move(m), [&](CommitResult&&) { done = true; });
  pipeline->Start();
  ASSERT_TRUE(inbox_.RunUntil([&] { return done; }));
  pipeline->Stop();
  pipeline->TrimEvents();

  EXPECT_EQ(pipeline->first_event_seq(), 4u);
  EXPECT_EQ(store_->FirstEventSeq().value(), 4u);
  EXPECT_EQ(store_->LastEventSeq().value(), 5u);
}

INSTANTIATE_TEST_SUITE_P(Writer, CommitPipelineTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "OnPostThread" : "OwnThread";
                         });

}  // namespace
}  // namespace errand::commit
