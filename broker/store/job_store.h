#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <absl/synchronization/mutex.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/write_batch.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "broker/store/records.pb.h"

namespace errand::store {

// JobStore owns the RocksDB database: opening (with format and boot-epoch
// bookkeeping), recovery scans, and raw writes. It knows nothing of leases,
// queues or gRPC.
//
// Thread: Open/Close and the recovery scans run before and after the broker
// runs; Write and SyncWAL are called from the commit thread only; GetJob and
// GetJobBytes may be called from any thread (RocksDB reads are thread-safe).
class JobStore {
 public:
  struct Options {
    // Data directory; created (and its parent fsynced) when missing.
    std::string path;
    // Env to run RocksDB on; nullptr means the default (real) Env. Tests pass
    // a memory or fault-injecting Env.
    rocksdb::Env* env = nullptr;
  };

  // Opens or creates the store, checks its format version and increments
  // and syncs the boot epoch. A corrupt store or a newer format is an error:
  // the broker refuses to start rather than guess.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const Options& options);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // The epoch of this run: one more than the previous run's.
  uint64_t boot_epoch() const { return boot_epoch_; }

  // Calls `fn` for every stored job in id order; stops at the first error.
  // A full scan: reads ahead and leaves the block cache alone.
  absl::Status ForEachJob(const std::function<absl::Status(uint64_t, JobRecord&&)>& fn);
  // The highest event sequence number stored, 0 when none.
  absl::StatusOr<uint64_t> LastEventSeq();
  // The lowest event sequence number stored, 0 when none.
  absl::StatusOr<uint64_t> FirstEventSeq();

  // Job `id`'s record; nullopt when there is none.
  absl::StatusOr<std::optional<JobRecord>> GetJob(uint64_t id);
  // As GetJob, the record's bytes unparsed (a serialized JobRecord).
  absl::StatusOr<std::optional<std::string>> GetJobBytes(uint64_t id);
  // Calls `fn` for every stored queue record ("queue/<name>"), by name.
  absl::Status ForEachQueue(const std::function<absl::Status(QueueRecord&&)>& fn);

  // Asks for a compaction of the jobs column family (reclaims the space of
  // deleted jobs). Returns at once: the compaction runs on a background
  // thread of the store, one at a time; requests made while one runs
  // coalesce into one more. Thread: any. Never blocks.
  void RequestJobsCompaction();
  // Compactions finished so far (for tests and metrics). Thread: any.
  uint64_t jobs_compactions() const;

  // Writes `batch`; with `sync`, returns only after the WAL is fsynced.
  //
  // A failed write or WAL sync stops RocksDB (its background error; a full
  // disk gives RESOURCE_EXHAUSTED "disk full: ..."). Later writes then try
  // DB::Resume() (at most once per `kResumeInterval`) and fail fast with the
  // same error until it succeeds, so the store accepts writes again without
  // a restart once space is freed.
  absl::Status Write(rocksdb::WriteBatch* batch, bool sync);
  // Makes every write so far durable. While the store is stopped by a write
  // error (RocksDB must not touch a failed WAL again) it tries DB::Resume()
  // like Write; a successful Resume flushes the memtables, which makes every
  // write so far durable too.
  absl::Status SyncWAL();
  // The error that stopped writes, OK while writes work.
  absl::Status write_error() const;
  static constexpr std::chrono::milliseconds kResumeInterval{200};
  // RocksDB's sequence number of the last committed write.
  uint64_t LatestSequence() const { return db_->GetLatestSequenceNumber(); }

  // Flushes and syncs the WAL and closes the database. Idempotent.
  absl::Status Close();

  rocksdb::ColumnFamilyHandle* jobs_cf() const { return jobs_cf_; }
  rocksdb::ColumnFamilyHandle* events_cf() const { return events_cf_; }
  rocksdb::DB* db() const { return db_.get(); }

 private:
  JobStore() = default;

  std::unique_ptr<rocksdb::DB> db_;
  rocksdb::ColumnFamilyHandle* default_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* jobs_cf_ = nullptr;
  rocksdb::ColumnFamilyHandle* events_cf_ = nullptr;
  uint64_t boot_epoch_ = 0;
  bool closed_ = false;

  // Lets Write and SyncWAL overlap, safely. RocksDB allows a WAL sync
  // concurrent with writes, and the commit pipeline relies on it (the next
  // group is written while the previous one is fsynced). One case must not
  // happen: Debian's librocksdb (7.8, built with assertions) aborts when a
  // WAL sync enters a log file that a failed write left behind (a full disk
  // under load; the power-cut test hit it). So a SyncWAL starts only when
  // no Write is in progress (and CheckWriteError has seen how the last one
  // ended); a Write that starts while a sync runs is fine (a sync that fails
  // marks the file in a way later writes may meet). While the store is
  // failing (write_error_ set), every Write and SyncWAL runs alone.
  // One case is left open. A Write that starts during a sync may switch to a
  // new WAL and fail on that file's first append. The running sync then
  // reaches the file and the same assertion aborts (README, "Known
  // exception"). Closing it means no write during a sync, which costs the
  // overlap the pipeline relies on; a failed write is rare enough to
  // accept a crash instead.
  absl::Mutex gate_mu_ ABSL_ACQUIRED_BEFORE(error_mu_);
  int writes_in_progress_ ABSL_GUARDED_BY(gate_mu_) = 0;
  bool sync_in_progress_ ABSL_GUARDED_BY(gate_mu_) = false;
  bool sync_waiting_ ABSL_GUARDED_BY(gate_mu_) = false;
  bool failing_ ABSL_GUARDED_BY(gate_mu_) = false;
  // Write-error recovery. Thread: the commit pipeline's writer and syncer.
  mutable absl::Mutex error_mu_;
  absl::Status write_error_ ABSL_GUARDED_BY(error_mu_);
  std::chrono::steady_clock::time_point last_resume_ ABSL_GUARDED_BY(error_mu_){};
  // OK when writes may go on; otherwise tries DB::Resume() (at most once per
  // kResumeInterval) and returns the error while it fails.
  absl::Status CheckWriteError(const char* what);
  void NoteWriteResult(const rocksdb::Status& rs, const absl::Status& s);

  void RunCompactions();
  mutable absl::Mutex compact_mu_;
  bool compact_wanted_ ABSL_GUARDED_BY(compact_mu_) = false;
  bool compact_stop_ ABSL_GUARDED_BY(compact_mu_) = false;
  uint64_t compactions_ ABSL_GUARDED_BY(compact_mu_) = 0;
  std::thread compactor_;  // started by the first request
};

}  // namespace errand::store
