#include "commit/commit_pipeline.h"

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <utility>

#include "store/keys.h"
#include "util/thread_name.h"

namespace errand::commit {
namespace {
// Longest the syncer waits for a group being written to join its fsync.
const absl::Duration kJoinFsyncWait = absl::Microseconds(300);
}  // namespace

CommitPipeline::CommitPipeline(store::JobStore* store, Options options, Post post,
                               uint64_t last_event_seq, uint64_t first_event_seq)
    : store_(store),
      options_(options),
      post_(post),
      deliver_post_(options_.deliver_post ? options_.deliver_post : std::move(post)),
      event_seq_(last_event_seq),
      committed_event_seq_(last_event_seq),
      first_event_seq_(first_event_seq) {}

void CommitPipeline::TrimEvents() {
  last_trim_ = std::chrono::steady_clock::now();
  const uint64_t last = committed_event_seq_.load();
  uint64_t first = first_event_seq_.load();
  if (first == 0 || last < first) return;
  uint64_t new_first = first;
  if (last - first + 1 > options_.max_events) new_first = last - options_.max_events + 1;
  // Age: step over old events from the front, a bounded number per pass.
  const auto cutoff_us = std::chrono::duration_cast<std::chrono::microseconds>(
                             std::chrono::system_clock::now().time_since_epoch() -
                             options_.max_event_age)
                             .count();
  std::unique_ptr<rocksdb::Iterator> it(
      store_->db()->NewIterator(rocksdb::ReadOptions(), store_->events_cf()));
  size_t scanned = 0;
  for (it->Seek(store::EncodeBE64(new_first)); it->Valid() && scanned < 10000;
       it->Next(), ++scanned) {
    v1::Event ev;
    if (!ev.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) break;
    int64_t t = ev.time().seconds() * 1'000'000 + ev.time().nanos() / 1000;
    if (t >= cutoff_us) break;
    new_first = ev.seq() + 1;
  }
  // Always keep the newest event: the log's head is where sequence numbers
  // continue after a restart, so an empty log would start them over.
  if (new_first > last) new_first = last;
  if (new_first <= first) return;
  rocksdb::WriteBatch batch;
  batch.DeleteRange(store_->events_cf(), store::EncodeBE64(first), store::EncodeBE64(new_first));
  if (store_->Write(&batch, /*sync=*/false).ok()) {
    first_event_seq_.store(new_first);
    NoteUnsynced();
  }
}

void CommitPipeline::NoteUnsynced() {
  if (unsynced_since_ns_.load(std::memory_order_relaxed) != 0) return;
  int64_t expected = 0;
  if (unsynced_since_ns_.compare_exchange_strong(
          expected, std::chrono::steady_clock::now().time_since_epoch().count()) &&
      options_.write_on_post_thread) {
    // The syncer sleeps until its next housekeeping: make it look at the
    // new deadline.
    absl::MutexLock lock(&sync_mu_);
    unsynced_noted_ = true;
  }
}

std::chrono::steady_clock::time_point CommitPipeline::NextHousekeeping() const {
  auto at = last_trim_ + std::chrono::seconds(1);
  if (int64_t since = unsynced_since_ns_.load(); since != 0) {
    at = std::min(at, std::chrono::steady_clock::time_point(
                          std::chrono::steady_clock::duration(since)) +
                          options_.sync_interval);
  }
  return at;
}

void CommitPipeline::Housekeep(bool final) {
  if (std::chrono::steady_clock::now() - last_trim_ >= std::chrono::seconds(1)) TrimEvents();
  const int64_t since = unsynced_since_ns_.load();
  if (since == 0) return;
  const auto now = std::chrono::steady_clock::now();
  if (!final && now.time_since_epoch().count() - since <
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                        options_.sync_interval)
                        .count()) {
    return;
  }
  // Cleared before the fsync: a write after this point marks the log
  // unsynced again; one before it is covered by the fsync.
  unsynced_since_ns_.store(0);
  if (store_->SyncWAL().ok()) {
    fsync_seconds_.Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - now).count());
    fsyncs_++;
  } else {
    // A stopped store (full disk) fails at once: retry an interval later
    // instead of spinning.
    failed_syncs_++;
    NoteUnsynced();
  }
}

CommitPipeline::~CommitPipeline() { Stop(); }

void CommitPipeline::StartThreadsLocked() {
  started_ = true;
  syncer_ = std::thread([this] {
    util::SetThreadName("errand-fsync");
    RunSyncer();
  });
  if (!options_.write_on_post_thread) {
    thread_ = std::thread([this] {
      util::SetThreadName("errand-commit");
      Run();
    });
  }
}

void CommitPipeline::Start() {
  bool post_flush = false;
  {
    absl::MutexLock lock(&mu_);
    if (started_) return;
    StartThreadsLocked();
    if (options_.write_on_post_thread && !queue_.empty()) flush_posted_ = post_flush = true;
  }
  if (post_flush) post_([this] { Flush(); });
}

void CommitPipeline::TakeGroupLocked(std::vector<Item>& group) {
  if (queue_.size() <= options_.max_group) {
    group.swap(queue_);
  } else {
    group.assign(std::make_move_iterator(queue_.begin()),
                 std::make_move_iterator(queue_.begin() + options_.max_group));
    queue_.erase(queue_.begin(), queue_.begin() + options_.max_group);
  }
  committing_ = !group.empty();
}

void CommitPipeline::Flush() {
  std::vector<Item> group;
  {
    absl::MutexLock lock(&mu_);
    flush_posted_ = false;
    // Stop writes what is left itself; a flush already running (a `post`
    // that runs closures in place) looks again when it is done.
    if (committing_ || stopping_) return;
    TakeGroupLocked(group);
  }
  if (group.empty()) return;
  CommitGroup(group, /*inline_results=*/true);
  bool again = false;
  {
    absl::MutexLock lock(&mu_);
    committing_ = false;
    // More came meanwhile (submitted by the results just run, or from other
    // threads): write them in a flush of their own, after whatever else
    // waits on the posting thread.
    if (!queue_.empty() && !stopping_ && !flush_posted_) again = flush_posted_ = true;
  }
  if (again) post_([this] { Flush(); });
}

void CommitPipeline::Submit(Mutation m, Done done) {
  bool queued = false;
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      queue_.push_back(Item{std::move(m), std::move(done)});
      queued = true;
      // A flush running now (it looks again when done) or already posted
      // takes this one too.
      if (!options_.write_on_post_thread || !started_ || flush_posted_ || committing_) return;
      flush_posted_ = true;
    }
  }
  if (queued) {
    post_([this] { Flush(); });
    return;
  }
  post_([done = std::move(done)]() mutable {
    CommitResult r;
    r.status = absl::UnavailableError("broker is shutting down");
    done(std::move(r));
  });
}

void CommitPipeline::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (!started_) StartThreadsLocked();
  }
  if (thread_.joinable()) thread_.join();
  if (options_.write_on_post_thread) {
    // Write what is still queued here, once a flush in progress is done;
    // the results go through `post`.
    std::vector<Item> group;
    for (;;) {
      {
        absl::MutexLock lock(&mu_);
        auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !committing_; };
        mu_.Await(absl::Condition(&idle));
        TakeGroupLocked(group);
      }
      if (group.empty()) break;
      CommitGroup(group, /*inline_results=*/false);
      group.clear();
      absl::MutexLock lock(&mu_);
      committing_ = false;
    }
  }
  {
    absl::MutexLock lock(&sync_mu_);
    sync_stop_ = true;
  }
  if (syncer_.joinable()) syncer_.join();
}

bool CommitPipeline::Idle() const {
  {
    absl::MutexLock lock(&mu_);
    if (!queue_.empty() || committing_) return false;
  }
  absl::MutexLock lock(&sync_mu_);
  return to_sync_.empty() && !syncing_;
}

void CommitPipeline::Deliver(std::vector<Pending> pending, bool synced,
                             const absl::Status& error, bool inline_results) {
  if (pending.empty()) return;
  if (inline_results) {
    RunResults(pending, synced, error, sink_);
    return;
  }
  deliver_post_([pending = std::move(pending), synced, error, sink = &sink_]() mutable {
    RunResults(pending, synced, error, *sink);
  });
}

void CommitPipeline::RunResults(std::vector<Pending>& pending, bool synced,
                                const absl::Status& error, const EventSink& sink) {
    std::vector<v1::Event> events;
    for (Pending& p : pending) {
      if (!error.ok()) {
        if (p.done) {
          CommitResult cr;
          cr.status = error;
          p.done(std::move(cr));
        }
        continue;
      }
      if (p.done) {
        p.result.synced = synced;
        p.done(std::move(p.result));
      }
      if (events.empty()) {
        events = std::move(p.events);
      } else {
        for (v1::Event& e : p.events) events.push_back(std::move(e));
      }
    }
    if (!events.empty() && sink) sink(std::move(events));
}

void CommitPipeline::RunSyncer() {
  // How long results wait for a failing fsync to succeed (the store
  // recovers by itself from a full disk once space is freed) before they get
  // the error.
  constexpr auto kHoldFailing = std::chrono::seconds(2);
  std::vector<Pending> batch;
  std::chrono::steady_clock::time_point failing_since{};
  // With write_on_post_thread the housekeeping (event log trim, kInterval's
  // background fsync) is done here, between fsyncs of sync writes.
  const bool housekeeping = options_.write_on_post_thread;
  for (;;) {
    bool stopping = false;
    bool idle = false;
    {
      absl::MutexLock lock(&sync_mu_);
      auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sync_mu_) {
        return !to_sync_.empty() || sync_stop_ || unsynced_noted_;
      };
      if (batch.empty()) {
        if (!housekeeping) {
          sync_mu_.Await(absl::Condition(&has_work));
        } else if (auto wait = NextHousekeeping() - std::chrono::steady_clock::now();
                   wait > wait.zero()) {
          sync_mu_.AwaitWithTimeout(absl::Condition(&has_work), absl::FromChrono(wait));
        }
      }
      unsynced_noted_ = false;
      stopping = sync_stop_;
      idle = batch.empty() && to_sync_.empty();
      if (!idle) {
        TakeToSyncLocked(batch);
        syncing_ = true;
        // Events alone (a lease's): give a sync write a moment to come and
        // share this fsync. The wait ends as soon as one is handed over.
        const bool events_only = std::none_of(batch.begin(), batch.end(),
                                              [](const Pending& p) { return bool(p.done); });
        if (events_only && !stopping && options_.event_fsync_delay.count() > 0) {
          auto result_or_stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sync_mu_) {
            return to_sync_results_ > 0 || sync_stop_;
          };
          sync_mu_.AwaitWithTimeout(absl::Condition(&result_or_stop),
                                    absl::FromChrono(options_.event_fsync_delay));
          stopping = sync_stop_;
          TakeToSyncLocked(batch);
        }
      }
    }
    if (idle) {
      if (housekeeping) Housekeep(/*final=*/stopping);
      if (stopping) return;  // nothing left
      continue;
    }
    if (housekeeping && !stopping) {
      // Group commit across flushes: when a group is being written right
      // now (or a flush is posted), let it land and join this fsync rather
      // than start one fsync now and another right after it. Waits for that
      // one write at most (bounded); an idle broker never waits here.
      bool waited = false;
      {
        absl::MutexLock lock(&mu_);
        if (committing_ || flush_posted_) {
          auto landed = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
            return !committing_ && !flush_posted_;
          };
          mu_.AwaitWithTimeout(absl::Condition(&landed), kJoinFsyncWait);
          waited = true;
        }
      }
      if (waited) {
        absl::MutexLock lock(&sync_mu_);
        TakeToSyncLocked(batch);
      }
    }
    // Everything in `batch` was written before it was handed over, so this
    // one fsync covers all of it.
    const auto sync_start = std::chrono::steady_clock::now();
    // This fsync covers every write made so far, async ones included: the
    // background fsync need not come for them (a write from here on marks
    // the log unsynced again).
    unsynced_since_ns_.store(0);
    absl::Status s = store_->SyncWAL();
    const auto now = std::chrono::steady_clock::now();
    if (s.ok()) {
      fsync_seconds_.Observe(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - sync_start).count());
      fsyncs_++;
      failing_since = {};
      Deliver(std::move(batch), /*synced=*/true, absl::OkStatus());
      batch.clear();
    } else {
      failed_syncs_++;
      NoteUnsynced();
      if (failing_since == std::chrono::steady_clock::time_point{}) failing_since = now;
      if (stopping || now - failing_since >= kHoldFailing) {
        // The writes may still reach the disk (a later recovery flushes
        // them), so the callers learn that their outcome is unknown.
        Deliver(std::move(batch), /*synced=*/false,
                absl::Status(s.code(), "not known to be durable: " + std::string(s.message())));
        batch.clear();
        failing_since = {};
      } else {
        // Keep the batch and try again (SyncWAL recovers the store once it
        // can); new arrivals join it.
        absl::MutexLock lock(&sync_mu_);
        auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sync_mu_) { return sync_stop_; };
        sync_mu_.AwaitWithTimeout(absl::Condition(&stop), absl::Milliseconds(100));
      }
    }
    if (housekeeping) Housekeep(/*final=*/false);
    absl::MutexLock lock(&sync_mu_);
    syncing_ = !batch.empty();
  }
}

CommitPipeline::Stats CommitPipeline::stats() const {
  return Stats{writes_.load(), groups_.load(), fsyncs_.load(), failed_.load(),
               failed_syncs_.load()};
}

void CommitPipeline::Run() {
  std::vector<Item> group;
  for (;;) {
    bool stop = false;
    {
      absl::MutexLock lock(&mu_);
      auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !queue_.empty() || stopping_;
      };
      const auto deadline = NextHousekeeping();
      const auto now = std::chrono::steady_clock::now();
      if (deadline > now) {
        mu_.AwaitWithTimeout(absl::Condition(&has_work), absl::FromChrono(deadline - now));
      }
      TakeGroupLocked(group);
      stop = stopping_ && queue_.empty();
    }
    if (!group.empty()) {
      CommitGroup(group, /*inline_results=*/false);  // posts the results or hands them on
      group.clear();
      absl::MutexLock lock(&mu_);
      committing_ = false;
    }
    Housekeep(stop);
    if (stop) return;
  }
}

void CommitPipeline::TakeToSyncLocked(std::vector<Pending>& batch) {
  for (Pending& p : to_sync_) batch.push_back(std::move(p));
  to_sync_.clear();
  to_sync_results_ = 0;
}

void CommitPipeline::CommitGroup(std::vector<Item>& group, bool inline_results) {
  rocksdb::WriteBatch batch;
  const uint64_t first_seq = event_seq_;
  uint64_t seq = first_seq;
  for (Item& item : group) {
    for (const WriteOp& op : item.mutation.ops) {
      rocksdb::ColumnFamilyHandle* cf = op.cf == Cf::kJobs     ? store_->jobs_cf()
                                        : op.cf == Cf::kEvents ? store_->events_cf()
                                                               : store_->db()->DefaultColumnFamily();
      if (op.value) {
        batch.Put(cf, op.key, *op.value);
      } else {
        batch.Delete(cf, op.key);
      }
    }
    for (v1::Event& e : item.mutation.events) {
      e.set_seq(++seq);
      batch.Put(store_->events_cf(), store::EncodeBE64(seq), e.SerializeAsString());
    }
  }
  absl::Status status = store_->Write(&batch, /*sync=*/false);
  group_sizes_.Observe(static_cast<double>(group.size()));
  if (!status.ok() && !write_failing_.exchange(true)) {
    spdlog::error("commit failed, writes are refused until one succeeds: {}", status.ToString());
  } else if (status.ok() && write_failing_.exchange(false)) {
    spdlog::info("commits succeed again");
  }
  if (!status.ok()) {
    failed_ += group.size();
    std::vector<Pending> failed;
    failed.reserve(group.size());
    for (Item& item : group) failed.push_back(Pending{std::move(item.done), {}, {}});
    Deliver(std::move(failed), false, status, inline_results);
    return;
  }
  if (first_event_seq_.load() == 0 && seq > first_seq) first_event_seq_.store(first_seq + 1);
  event_seq_ = seq;
  committed_event_seq_.store(seq);
  groups_++;
  writes_ += group.size();
  const uint64_t commit_seq = store_->LatestSequence();
  // In kAlways mode the events of async mutations still wait for the fsync.
  const bool events_wait = options_.mode == SyncMode::kAlways;
  std::vector<Pending> now, later;
  for (Item& item : group) {
    Pending p{std::move(item.done), {}, std::move(item.mutation.events)};
    p.result.commit_seq = commit_seq;
    if (!p.events.empty()) {
      p.result.first_event_seq = p.events.front().seq();
      p.result.event_count = static_cast<uint32_t>(p.events.size());
    }
    if (item.mutation.sync) {
      later.push_back(std::move(p));
    } else if (events_wait && !p.events.empty()) {
      // Acknowledge now, publish after the fsync.
      later.push_back(Pending{nullptr, {}, std::move(p.events)});
      p.events.clear();
      now.push_back(std::move(p));
    } else {
      now.push_back(std::move(p));
    }
    if (!item.mutation.sync) NoteUnsynced();
  }
  if (!later.empty()) {
    absl::MutexLock lock(&sync_mu_);
    for (Pending& p : later) {
      if (p.done) ++to_sync_results_;
      to_sync_.push_back(std::move(p));
    }
  }
  Deliver(std::move(now), /*synced=*/false, absl::OkStatus(), inline_results);
}

}  // namespace errand::commit
