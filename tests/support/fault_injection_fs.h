#pragma once

// A RocksDB FileSystem for power-cut tests, in the manner of LevelDB's
// db/fault_injection_test.cc (Debian's librocksdb-dev ships no fault
// injection utilities).
//
// It runs on the real file system and remembers, for every file written
// since it was (re)armed, how many bytes were appended and how many of them a
// Sync/Fsync made durable, and which new directory entries (created or
// renamed files) no directory fsync has made durable yet. PowerCut() "turns
// the power off": from then on nothing becomes durable. By default the
// process does not notice, as it would not in a real power loss (it would
// be gone): calls go on succeeding, syncs make nothing durable, deletions
// are skipped, and whatever the process acknowledges after the cut is void
// (cut_time() says when). FailAfterCut(true) makes every mutating call fail
// with an IOError instead, to test how the store handles I/O errors. (Not
// the default: Debian's RocksDB 7.8 is built with assertions, and one of
// them aborts when a WAL sync fails while a write to the same WAL is under
// way, which the commit pipeline allows.) After the database is closed,
// DropUnsyncedData() does to the files what a power loss does to them: every
// tracked file is cut back to its synced length, files whose directory entry
// was never synced disappear, and a file replaced by an unsynced rename gets
// its old contents back.
//
// Simplifications (each makes the simulation kinder than a real disk only
// where RocksDB does not depend on it): deletions are durable at once; data
// reaches the disk in order (no torn or reordered sectors within a file);
// RangeSync counts for nothing. And one harsher: a file made durable before
// the cut and renamed after it is gone after DropUnsyncedData (RocksDB only
// renames files it has just written).
//
// Thread: every method may be called from any thread (RocksDB calls in from
// its own threads); one mutex guards the bookkeeping.

#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/io_status.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace errand::testing {

class FaultInjectionFs : public rocksdb::FileSystemWrapper {
 public:
  using SteadyTime = std::chrono::steady_clock::time_point;

  FaultInjectionFs() : rocksdb::FileSystemWrapper(rocksdb::FileSystem::Default()) {}
  const char* Name() const override { return "ErrandFaultInjectionFs"; }

  // Cuts the power after `ops` more mutating calls (appends, syncs, file
  // creations, renames, deletions); the call that reaches the count fails.
  // 0 disarms.
  void ArmPowerCut(uint64_t ops) {
    std::lock_guard<std::mutex> lock(mu_);
    cut_after_ = ops;
  }
  // Cuts the power at the next Sync/Fsync of a file (that call fails).
  void ArmPowerCutOnSync() {
    std::lock_guard<std::mutex> lock(mu_);
    cut_on_sync_ = true;
  }
  // After the cut: calls fail with an IOError (true), or succeed without
  // making anything durable (false, the default).
  void FailAfterCut(bool fail) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_after_cut_ = fail;
  }
  // Cuts the power now.
  void PowerCut() {
    std::lock_guard<std::mutex> lock(mu_);
    CutLocked();
  }
  bool powered() const {
    std::lock_guard<std::mutex> lock(mu_);
    return powered_;
  }
  // When the power went off (valid once !powered()).
  SteadyTime cut_time() const {
    std::lock_guard<std::mutex> lock(mu_);
    return cut_time_;
  }
  // When the last WAL sync that completed before the cut started: every
  // byte appended to a WAL before that moment is durable.
  SteadyTime last_wal_sync_start() const {
    std::lock_guard<std::mutex> lock(mu_);
    return last_wal_sync_start_;
  }
  uint64_t wal_syncs() const {
    std::lock_guard<std::mutex> lock(mu_);
    return wal_syncs_;
  }

  // REQUIRES: the power is off and the database that used this file system
  // is closed. Applies the power loss to the files, then restores power and
  // forgets all bookkeeping (what is on disk now counts as durable).
  // Returns a line per file changed, for failure messages.
  std::string DropUnsyncedData() {
    std::lock_guard<std::mutex> lock(mu_);
    std::ostringstream log;
    for (const auto& [dir, names] : unsynced_entries_) {
      for (const auto& name : names) {
        auto old = replaced_.find(name);
        if (old != replaced_.end()) {
          std::ofstream out(name, std::ios::binary | std::ios::trunc);
          out << old->second;
          log << "restored " << name << " (unsynced rename)\n";
        } else {
          ::unlink(name.c_str());
          log << "removed " << name << " (entry never synced)\n";
        }
        files_.erase(name);
      }
    }
    for (const auto& [name, st] : files_) {
      if (st.synced < st.written) {
        if (::truncate(name.c_str(), static_cast<off_t>(st.synced)) == 0) {
          log << "cut " << name << " from " << st.written << " to " << st.synced << " bytes\n";
        }
      }
    }
    files_.clear();
    unsynced_entries_.clear();
    replaced_.clear();
    powered_ = true;
    cut_after_ = 0;
    cut_on_sync_ = false;
    return log.str();
  }

  rocksdb::IOStatus NewWritableFile(const std::string& fname, const rocksdb::FileOptions& opts,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override {
    if (!Tick()) return Dead();
    std::unique_ptr<rocksdb::FSWritableFile> file;
    rocksdb::IOStatus s = target()->NewWritableFile(fname, opts, &file, dbg);
    if (!s.ok()) return s;
    {
      std::lock_guard<std::mutex> lock(mu_);
      files_[fname] = FileState{};
      NewEntryLocked(fname);
    }
    result->reset(new File(this, fname, std::move(file)));
    return s;
  }

  rocksdb::IOStatus ReopenWritableFile(const std::string& fname, const rocksdb::FileOptions& opts,
                                       std::unique_ptr<rocksdb::FSWritableFile>* result,
                                       rocksdb::IODebugContext* dbg) override {
    if (!Tick()) return Dead();
    std::unique_ptr<rocksdb::FSWritableFile> file;
    rocksdb::IOStatus s = target()->ReopenWritableFile(fname, opts, &file, dbg);
    if (!s.ok()) return s;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (files_.count(fname) == 0) {
        uint64_t size = 0;
        target()->GetFileSize(fname, rocksdb::IOOptions(), &size, nullptr).PermitUncheckedError();
        files_[fname] = FileState{size, size};
      }
    }
    result->reset(new File(this, fname, std::move(file)));
    return s;
  }

  rocksdb::IOStatus ReuseWritableFile(const std::string&, const std::string&,
                                      const rocksdb::FileOptions&,
                                      std::unique_ptr<rocksdb::FSWritableFile>*,
                                      rocksdb::IODebugContext*) override {
    return rocksdb::IOStatus::NotSupported("fault injection: no WAL recycling");
  }

  rocksdb::IOStatus NewRandomRWFile(const std::string&, const rocksdb::FileOptions&,
                                    std::unique_ptr<rocksdb::FSRandomRWFile>*,
                                    rocksdb::IODebugContext*) override {
    return rocksdb::IOStatus::NotSupported("fault injection: no random-write files");
  }

  rocksdb::IOStatus NewDirectory(const std::string& name, const rocksdb::IOOptions& io_opts,
                                 std::unique_ptr<rocksdb::FSDirectory>* result,
                                 rocksdb::IODebugContext* dbg) override {
    std::unique_ptr<rocksdb::FSDirectory> dir;
    rocksdb::IOStatus s = target()->NewDirectory(name, io_opts, &dir, dbg);
    if (!s.ok()) return s;
    result->reset(new Dir(this, Normalize(name), std::move(dir)));
    return s;
  }

  rocksdb::IOStatus DeleteFile(const std::string& fname, const rocksdb::IOOptions& opts,
                               rocksdb::IODebugContext* dbg) override {
    if (!Tick()) return Dead();
    if (!powered()) return rocksdb::IOStatus::OK();  // never reaches the disk
    rocksdb::IOStatus s = target()->DeleteFile(fname, opts, dbg);
    if (s.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      files_.erase(fname);
      unsynced_entries_[DirOf(fname)].erase(fname);
      replaced_.erase(fname);
    }
    return s;
  }

  rocksdb::IOStatus RenameFile(const std::string& src, const std::string& dst,
                               const rocksdb::IOOptions& opts,
                               rocksdb::IODebugContext* dbg) override {
    if (!Tick()) return Dead();
    std::string old_contents;
    bool had_durable_dst = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      had_durable_dst = unsynced_entries_[DirOf(dst)].count(dst) == 0 && Exists(dst);
    }
    if (had_durable_dst) {
      std::ifstream in(dst, std::ios::binary);
      std::ostringstream buf;
      buf << in.rdbuf();
      old_contents = buf.str();
    }
    rocksdb::IOStatus s = target()->RenameFile(src, dst, opts, dbg);
    if (!s.ok()) return s;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = files_.find(src);
    if (it != files_.end()) {
      files_[dst] = it->second;
      files_.erase(it);
    } else {
      files_.erase(dst);
    }
    unsynced_entries_[DirOf(src)].erase(src);
    if (had_durable_dst && replaced_.count(dst) == 0) replaced_[dst] = std::move(old_contents);
    NewEntryLocked(dst);
    return s;
  }

  rocksdb::IOStatus LinkFile(const std::string&, const std::string&, const rocksdb::IOOptions&,
                             rocksdb::IODebugContext*) override {
    return rocksdb::IOStatus::NotSupported("fault injection: no hard links");
  }

 private:
  struct FileState {
    uint64_t written = 0;
    uint64_t synced = 0;
  };

  class File : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    File(FaultInjectionFs* fs, std::string name, std::unique_ptr<rocksdb::FSWritableFile> f)
        : rocksdb::FSWritableFileOwnerWrapper(std::move(f)), fs_(fs), name_(std::move(name)) {}

    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                             rocksdb::IODebugContext* dbg) override {
      if (!fs_->Tick()) return Dead();
      rocksdb::IOStatus s = target()->Append(data, o, dbg);
      if (s.ok()) fs_->Appended(name_, data.size(), std::nullopt);
      return s;
    }
    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                             const rocksdb::DataVerificationInfo& v,
                             rocksdb::IODebugContext* dbg) override {
      if (!fs_->Tick()) return Dead();
      rocksdb::IOStatus s = target()->Append(data, o, v, dbg);
      if (s.ok()) fs_->Appended(name_, data.size(), std::nullopt);
      return s;
    }
    rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                       const rocksdb::IOOptions& o,
                                       rocksdb::IODebugContext* dbg) override {
      if (!fs_->Tick()) return Dead();
      rocksdb::IOStatus s = target()->PositionedAppend(data, offset, o, dbg);
      if (s.ok()) fs_->Appended(name_, data.size(), offset);
      return s;
    }
    rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                       const rocksdb::IOOptions& o,
                                       const rocksdb::DataVerificationInfo& v,
                                       rocksdb::IODebugContext* dbg) override {
      if (!fs_->Tick()) return Dead();
      rocksdb::IOStatus s = target()->PositionedAppend(data, offset, o, v, dbg);
      if (s.ok()) fs_->Appended(name_, data.size(), offset);
      return s;
    }
    rocksdb::IOStatus Truncate(uint64_t size, const rocksdb::IOOptions& o,
                               rocksdb::IODebugContext* dbg) override {
      if (!fs_->Tick()) return Dead();
      rocksdb::IOStatus s = target()->Truncate(size, o, dbg);
      if (s.ok()) fs_->Truncated(name_, size);
      return s;
    }
    rocksdb::IOStatus Sync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
      return DoSync([&] { return target()->Sync(o, dbg); });
    }
    rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
      return DoSync([&] { return target()->Fsync(o, dbg); });
    }
    rocksdb::IOStatus Close(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
      return target()->Close(o, dbg);  // closing makes nothing durable
    }

   private:
    template <typename F>
    rocksdb::IOStatus DoSync(F sync) {
      if (!fs_->TickSync() || !fs_->Tick()) return Dead();
      // Only what was appended before the sync started is covered by it.
      const auto started = std::chrono::steady_clock::now();
      const uint64_t upto = fs_->Written(name_);
      rocksdb::IOStatus s = sync();
      // A sync the cut overtook (the power went while it ran, e.g. from an
      // append on another thread) did not finish: it makes nothing durable,
      // and fails if calls fail after the cut.
      if (s.ok() && !fs_->Synced(name_, upto, started) && fs_->failing()) return Dead();
      return s;
    }

    FaultInjectionFs* const fs_;
    const std::string name_;
  };

  class Dir : public rocksdb::FSDirectoryWrapper {
   public:
    Dir(FaultInjectionFs* fs, std::string name, std::unique_ptr<rocksdb::FSDirectory> d)
        : rocksdb::FSDirectoryWrapper(std::move(d)), fs_(fs), name_(std::move(name)) {}
    rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
      if (!fs_->Tick()) return Dead();
      rocksdb::IOStatus s = rocksdb::FSDirectoryWrapper::Fsync(o, dbg);
      if (s.ok()) fs_->DirSynced(name_);
      return s;
    }
    rocksdb::IOStatus FsyncWithDirOptions(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg,
                                          const rocksdb::DirFsyncOptions& d) override {
      if (!fs_->Tick()) return Dead();
      rocksdb::IOStatus s = rocksdb::FSDirectoryWrapper::FsyncWithDirOptions(o, dbg, d);
      if (s.ok()) fs_->DirSynced(name_);
      return s;
    }

   private:
    FaultInjectionFs* const fs_;
    const std::string name_;
  };

  static rocksdb::IOStatus Dead() { return rocksdb::IOStatus::IOError("simulated power cut"); }

  static std::string Normalize(std::string path) {
    while (path.size() > 1 && path.back() == '/') path.pop_back();
    return path;
  }
  static std::string DirOf(const std::string& file) {
    auto slash = file.rfind('/');
    return slash == std::string::npos ? "." : Normalize(file.substr(0, slash));
  }
  static bool Exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }
  static bool IsWal(const std::string& name) {
    return name.size() > 4 && name.compare(name.size() - 4, 4, ".log") == 0;
  }

  // Counts one mutating call; false when it must fail (the power is, or
  // now goes, off, and calls fail after the cut).
  bool Tick() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!powered_) return !fail_after_cut_;
    if (cut_after_ > 0 && --cut_after_ == 0) {
      CutLocked();
      return !fail_after_cut_;
    }
    return true;
  }
  // As Tick, cutting the power when a cut is armed for the next sync.
  bool TickSync() {
    std::lock_guard<std::mutex> lock(mu_);
    if (cut_on_sync_) {
      cut_on_sync_ = false;
      CutLocked();
    }
    return powered_ || !fail_after_cut_;
  }
  // The power is off and calls fail.
  bool failing() const {
    std::lock_guard<std::mutex> lock(mu_);
    return !powered_ && fail_after_cut_;
  }
  void CutLocked() {
    if (!powered_) return;
    powered_ = false;
    cut_time_ = std::chrono::steady_clock::now();
  }
  void NewEntryLocked(const std::string& name) { unsynced_entries_[DirOf(name)].insert(name); }

  void Appended(const std::string& name, uint64_t n, std::optional<uint64_t> offset) {
    std::lock_guard<std::mutex> lock(mu_);
    FileState& st = files_[name];
    st.written = offset ? std::max(st.written, *offset + n) : st.written + n;
  }
  void Truncated(const std::string& name, uint64_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    FileState& st = files_[name];
    st.written = size;
    st.synced = std::min(st.synced, size);
  }
  uint64_t Written(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    return files_[name].written;
  }
  // False when the cut came first: the sync may not have finished.
  bool Synced(const std::string& name, uint64_t upto, SteadyTime started) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!powered_) return false;
    FileState& st = files_[name];
    st.synced = std::max(st.synced, upto);
    if (IsWal(name)) {
      wal_syncs_++;
      if (started > last_wal_sync_start_) last_wal_sync_start_ = started;
    }
    return true;
  }
  void DirSynced(const std::string& dir) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!powered_) return;
    auto it = unsynced_entries_.find(dir);
    if (it == unsynced_entries_.end()) return;
    for (const auto& name : it->second) replaced_.erase(name);
    it->second.clear();
  }

  mutable std::mutex mu_;
  bool powered_ = true;
  bool fail_after_cut_ = false;
  uint64_t cut_after_ = 0;
  bool cut_on_sync_ = false;
  SteadyTime cut_time_{};
  SteadyTime last_wal_sync_start_{};
  uint64_t wal_syncs_ = 0;
  std::map<std::string, FileState> files_;
  // Directory -> files whose entry (creation or rename) no dir fsync covered.
  std::map<std::string, std::set<std::string>> unsynced_entries_;
  // File -> its contents before an unsynced rename replaced it.
  std::map<std::string, std::string> replaced_;
};

}  // namespace errand::testing
