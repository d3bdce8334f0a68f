#include "store/job_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "store/keys.h"
#include "store/rocks_logger.h"
#include "store/records.h"
#include "store/rocks_status.h"
#include "util/thread_name.h"

namespace errand::store {
namespace {

// RocksDB never fsyncs the parent of a directory it creates: after a power
// loss the whole data directory could vanish. Create it ourselves and make
// its entry durable.
absl::Status EnsureDurableDirectory(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path p = fs::absolute(path, ec);
  if (ec) return absl::InvalidArgumentError("data directory " + path + ": " + ec.message());
  if (fs::is_directory(p, ec)) return absl::OkStatus();
  fs::path parent = p.parent_path();
  if (!parent.empty() && !fs::exists(parent, ec)) {
    absl::Status s = EnsureDurableDirectory(parent.string());
    if (!s.ok()) return s;
  }
  if (::mkdir(p.c_str(), 0750) != 0 && errno != EEXIST) {
    return absl::InternalError("cannot create data directory " + path + ": " +
                               std::strerror(errno));
  }
  int fd = ::open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return absl::InternalError("cannot open parent of " + path);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return absl::InternalError("cannot fsync parent of " + path);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const Options& options) {
  if (options.env == nullptr) {
    absl::Status s = EnsureDurableDirectory(options.path);
    if (!s.ok()) return s;
  }
  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.paranoid_checks = true;
  db_options.IncreaseParallelism(2);
  db_options.max_background_jobs = 2;
  db_options.keep_log_file_num = 4;
  // Memtables of all column families together: past this a flush starts
  // (without it each family holds up to 6 x 16 MB). The memory a broker
  // needs is then its job table plus this.
  db_options.db_write_buffer_size = 32 << 20;
  db_options.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  db_options.info_log = std::make_shared<RocksLogger>(db_options.info_log_level);
  if (options.env != nullptr) db_options.env = options.env;

  rocksdb::ColumnFamilyOptions cf_options;
  cf_options.OptimizeLevelStyleCompaction(64 << 20);
  // A full 16 MB memtable is flushed alone, not once two are full.
  cf_options.min_write_buffer_number_to_merge = 1;
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
      {rocksdb::kDefaultColumnFamilyName, cf_options},
      {"jobs", cf_options},
      {"events", cf_options},
  };
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status rs = rocksdb::DB::Open(db_options, options.path, cfs, &handles, &raw);
  if (!rs.ok()) return FromRocks(rs, "opening store at " + options.path);

  std::unique_ptr<JobStore> store(new JobStore());
  store->db_.reset(raw);
  store->default_cf_ = handles[0];
  store->jobs_cf_ = handles[1];
  store->events_cf_ = handles[2];

  MetaRecord meta;
  std::string value;
  rs = raw->Get(rocksdb::ReadOptions(), store->default_cf_, kMetaKey, &value);
  if (rs.ok()) {
    auto decoded = DecodeMetaRecord(value);
    if (!decoded.ok()) return decoded.status();
    meta = std::move(*decoded);
    if (meta.format_version() > kStoreFormatVersion) {
      return absl::FailedPreconditionError(
          "store format version " + std::to_string(meta.format_version()) +
          " is newer than this broker understands (" + std::to_string(kStoreFormatVersion) +
          "); upgrade the broker");
    }
  } else if (!rs.IsNotFound()) {
    return FromRocks(rs, "reading store meta");
  }
  meta.set_format_version(kStoreFormatVersion);
  meta.set_boot_epoch(meta.boot_epoch() + 1);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  rs = raw->Put(wo, store->default_cf_, kMetaKey, meta.SerializeAsString());
  if (!rs.ok()) return FromRocks(rs, "writing store meta");
  store->boot_epoch_ = meta.boot_epoch();
  return store;
}

JobStore::~JobStore() { (void)Close(); }

absl::Status JobStore::ForEachJob(
    const std::function<absl::Status(uint64_t, JobRecord&&)>& fn) {
  rocksdb::ReadOptions ro;
  // One pass over every table: large sequential reads, and no block kept in
  // the cache (the scan would only evict what point reads use).
  ro.readahead_size = 2 << 20;
  ro.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, jobs_cf_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    auto rec = DecodeJobRecord(it->key().ToStringView(), it->value().ToStringView());
    if (!rec.ok()) return rec.status();
    absl::Status s = fn(DecodeBE64(it->key().ToStringView()), std::move(*rec));
    if (!s.ok()) return s;
  }
  return FromRocks(it->status(), "scanning jobs");
}

absl::StatusOr<uint64_t> JobStore::LastEventSeq() {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), events_cf_));
  it->SeekToLast();
  if (!it->Valid()) {
    absl::Status s = FromRocks(it->status(), "scanning events");
    if (!s.ok()) return s;
    return 0;
  }
  if (it->key().size() != 8) return absl::DataLossError("malformed event key in store");
  return DecodeBE64(it->key().ToStringView());
}

absl::StatusOr<uint64_t> JobStore::FirstEventSeq() {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), events_cf_));
  it->SeekToFirst();
  if (!it->Valid()) {
    absl::Status s = FromRocks(it->status(), "scanning events");
    if (!s.ok()) return s;
    return 0;
  }
  if (it->key().size() != 8) return absl::DataLossError("malformed event key in store");
  return DecodeBE64(it->key().ToStringView());
}

absl::StatusOr<std::optional<JobRecord>> JobStore::GetJob(uint64_t id) {
  auto value = GetJobBytes(id);
  if (!value.ok()) return value.status();
  if (!value->has_value()) return std::optional<JobRecord>();
  auto rec = DecodeJobRecord(EncodeBE64(id), **value);
  if (!rec.ok()) return rec.status();
  return std::optional<JobRecord>(std::move(*rec));
}

absl::StatusOr<std::optional<std::string>> JobStore::GetJobBytes(uint64_t id) {
  std::string value;
  rocksdb::Status rs = db_->Get(rocksdb::ReadOptions(), jobs_cf_, EncodeBE64(id), &value);
  if (rs.IsNotFound()) return std::optional<std::string>();
  if (!rs.ok()) return FromRocks(rs, "reading job " + FormatJobId(id));
  return std::optional<std::string>(std::move(value));
}

absl::Status JobStore::ForEachQueue(const std::function<absl::Status(QueueRecord&&)>& fn) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), default_cf_));
  const std::string prefix = kQueueKeyPrefix;
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    auto rec = DecodeQueueRecord(it->key().ToStringView(), it->value().ToStringView());
    if (!rec.ok()) return rec.status();
    absl::Status s = fn(std::move(*rec));
    if (!s.ok()) return s;
  }
  return FromRocks(it->status(), "scanning queue records");
}

void JobStore::RequestJobsCompaction() {
  absl::MutexLock lock(&compact_mu_);
  if (compact_stop_) return;
  compact_wanted_ = true;
  if (!compactor_.joinable()) compactor_ = std::thread([this] {
    util::SetThreadName("errand-compact");
    RunCompactions();
  });
}

uint64_t JobStore::jobs_compactions() const {
  absl::MutexLock lock(&compact_mu_);
  return compactions_;
}

void JobStore::RunCompactions() {
  for (;;) {
    {
      absl::MutexLock lock(&compact_mu_);
      compact_mu_.Await(absl::Condition(
          +[](JobStore* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->compact_mu_) {
            return s->compact_wanted_ || s->compact_stop_;
          },
          this));
      if (compact_stop_) return;
      compact_wanted_ = false;
    }
    rocksdb::CompactRangeOptions opts;
    opts.exclusive_manual_compaction = false;
    opts.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
    rocksdb::Status rs = db_->CompactRange(opts, jobs_cf_, nullptr, nullptr);
    absl::MutexLock lock(&compact_mu_);
    if (rs.ok()) compactions_++;
  }
}

void JobStore::NoteWriteResult(const rocksdb::Status& rs, const absl::Status& s) {
  // An I/O error (full disk, failed fsync) puts RocksDB into its background
  // error state; other errors (a bad batch) leave it writable.
  if (!rs.IsIOError()) return;
  absl::MutexLock lock(&error_mu_);
  if (write_error_.ok()) write_error_ = s;
}

absl::Status JobStore::write_error() const {
  absl::MutexLock lock(&error_mu_);
  return write_error_;
}

absl::Status JobStore::CheckWriteError(const char* what) {
  absl::MutexLock lock(&error_mu_);
  if (write_error_.ok()) return write_error_;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_resume_ < kResumeInterval) return write_error_;
  last_resume_ = now;
  // Flushes the memtables to new files and switches to a new WAL; fails
  // (changing nothing) while the disk is still full.
  rocksdb::Status rs = db_->Resume();
  if (!rs.ok()) {
    absl::Status s = FromRocks(rs, std::string(what) + " (resuming after a write error)");
    if (absl::IsResourceExhausted(s)) write_error_ = s;
    return write_error_;
  }
  write_error_ = absl::OkStatus();
  return write_error_;
}

absl::Status JobStore::Write(rocksdb::WriteBatch* batch, bool sync) {
  {
    absl::MutexLock gate(&gate_mu_);
    // A sync waiting for the writes in progress goes first (it waits for
    // one write at most); while failing, one call at a time.
    auto may_start = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(gate_mu_) {
      return !sync_waiting_ && !(failing_ && (writes_in_progress_ > 0 || sync_in_progress_));
    };
    gate_mu_.Await(absl::Condition(&may_start));
    writes_in_progress_++;
  }
  absl::Status s = CheckWriteError("commit");
  if (s.ok()) {
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    rocksdb::Status rs = db_->Write(wo, batch);
    s = FromRocks(rs, "commit");
    NoteWriteResult(rs, s);
  }
  const bool failing = !write_error().ok();
  absl::MutexLock gate(&gate_mu_);
  writes_in_progress_--;
  failing_ = failing;
  return s;
}

absl::Status JobStore::SyncWAL() {
  {
    absl::MutexLock gate(&gate_mu_);
    sync_waiting_ = true;
    auto may_start = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(gate_mu_) {
      return writes_in_progress_ == 0 && !sync_in_progress_;
    };
    gate_mu_.Await(absl::Condition(&may_start));
    sync_waiting_ = false;
    sync_in_progress_ = true;
  }
  absl::Status s = CheckWriteError("syncing WAL");
  if (s.ok()) {
    rocksdb::Status rs = db_->SyncWAL();
    s = FromRocks(rs, "syncing WAL");
    NoteWriteResult(rs, s);
  }
  const bool failing = !write_error().ok();
  absl::MutexLock gate(&gate_mu_);
  sync_in_progress_ = false;
  failing_ = failing;
  return s;
}

absl::Status JobStore::Close() {
  if (closed_ || !db_) return absl::OkStatus();
  {
    absl::MutexLock lock(&compact_mu_);
    compact_stop_ = true;
  }
  // Aborts a running manual compaction; the thread then sees the stop.
  if (compactor_.joinable()) {
    db_->DisableManualCompaction();
    compactor_.join();
  }
  closed_ = true;
  // After a write error the WAL must not be touched again: what it holds
  // was either acknowledged (and synced as promised) or answered with the
  // error.
  absl::Status error = write_error();
  absl::Status result =
      error.ok() ? FromRocks(db_->FlushWAL(/*sync=*/true), "flushing WAL") : error;
  for (auto* h : {default_cf_, jobs_cf_, events_cf_}) {
    if (h != nullptr) db_->DestroyColumnFamilyHandle(h);
  }
  default_cf_ = jobs_cf_ = events_cf_ = nullptr;
  rocksdb::Status rs = db_->Close();
  if (result.ok() && !rs.ok()) result = FromRocks(rs, "closing store");
  db_.reset();
  return result;
}

}  // namespace errand::store
