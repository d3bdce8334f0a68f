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

CommitPipeline::CommitPipeline(store::JobStore* store, Options options, Post post,
                               uint64_t last_event_seq, uint64_t first_event_seq)
    : store_(store),
      options_(options),
      post_(std::move(post)),
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
    if (!unsynced_) {
      unsynced_ = true;
      first_unsynced_ = std::chrono::steady_clock::now();
    }
  }
}

CommitPipeline::~CommitPipeline() { Stop(); }

void CommitPipeline::Start() {
  absl::MutexLock lock(&mu_);
  if (started_) return;
  started_ = true;
  syncer_ = std::thread([this] {
    util::SetThreadName("errand-fsync");
    RunSyncer();
  });
  thread_ = std::thread([this] {
    util::SetThreadName("errand-commit");
    Run();
  });
}

void CommitPipeline::Submit(Mutation m, Done done) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      queue_.push_back(Item{std::move(m), std::move(done)});
      return;
    }
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
    if (!started_) {
      started_ = true;
      syncer_ = std::thread([this] {
    util::SetThreadName("errand-fsync");
    RunSyncer();
  });
      thread_ = std::thread([this] {
    util::SetThreadName("errand-commit");
    Run();
  });
    }
  }
  if (thread_.joinable()) thread_.join();
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
                             const absl::Status& error) {
  if (pending.empty()) return;
  post_([pending = std::move(pending), synced, error, sink = &sink_]() mutable {
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
    if (!events.empty() && *sink) (*sink)(std::move(events));
  });
}

void CommitPipeline::RunSyncer() {
  // How long results wait for a failing fsync to succeed (the store
  // recovers by itself from a full disk once space is freed) before they get
  // the error.
  constexpr auto kHoldFailing = std::chrono::seconds(2);
  std::vector<Pending> batch;
  std::chrono::steady_clock::time_point failing_since{};
  for (;;) {
    bool stopping = false;
    {
      absl::MutexLock lock(&sync_mu_);
      auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(sync_mu_) {
        return !to_sync_.empty() || sync_stop_;
      };
      if (batch.empty()) sync_mu_.Await(absl::Condition(&has_work));
      if (batch.empty() && to_sync_.empty()) return;  // stopping, nothing left
      for (Pending& p : to_sync_) batch.push_back(std::move(p));
      to_sync_.clear();
      syncing_ = true;
      stopping = sync_stop_;
    }
    // Everything in `batch` was written before it was handed over, so this
    // one fsync covers all of it.
    const auto sync_start = std::chrono::steady_clock::now();
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
      auto deadline = last_trim_ + std::chrono::seconds(1);
      if (unsynced_) deadline = std::min(deadline, first_unsynced_ + options_.sync_interval);
      auto now = std::chrono::steady_clock::now();
      if (deadline > now) {
        mu_.AwaitWithTimeout(absl::Condition(&has_work), absl::FromChrono(deadline - now));
      }
      if (queue_.size() <= options_.max_group) {
        group.swap(queue_);
      } else {
        group.assign(std::make_move_iterator(queue_.begin()),
                     std::make_move_iterator(queue_.begin() + options_.max_group));
        queue_.erase(queue_.begin(), queue_.begin() + options_.max_group);
      }
      stop = stopping_ && queue_.empty();
      committing_ = !group.empty();
    }
    if (!group.empty()) {
      CommitGroup(group);  // posts the results or hands them to the syncer
      group.clear();
      absl::MutexLock lock(&mu_);
      committing_ = false;
    }
    if (std::chrono::steady_clock::now() - last_trim_ >= std::chrono::seconds(1)) TrimEvents();
    if (unsynced_ &&
        (stop || std::chrono::steady_clock::now() - first_unsynced_ >= options_.sync_interval)) {
      const auto sync_start = std::chrono::steady_clock::now();
      if (store_->SyncWAL().ok()) {
        fsync_seconds_.Observe(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - sync_start).count());
        fsyncs_++;
        unsynced_ = false;
      } else {
        // A stopped store (full disk) fails at once: retry an interval
        // later instead of spinning.
        failed_syncs_++;
        first_unsynced_ = std::chrono::steady_clock::now();
      }
    }
    if (stop) return;
  }
}

void CommitPipeline::CommitGroup(std::vector<Item>& group) {
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
    Deliver(std::move(failed), false, status);
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
    if (!item.mutation.sync && !unsynced_) {
      unsynced_ = true;
      first_unsynced_ = std::chrono::steady_clock::now();
    }
  }
  if (!later.empty()) {
    absl::MutexLock lock(&sync_mu_);
    for (Pending& p : later) to_sync_.push_back(std::move(p));
  }
  Deliver(std::move(now), /*synced=*/false, absl::OkStatus());
}

}  // namespace errand::commit
