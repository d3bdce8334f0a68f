// The commit pipeline's metrics and its reaction to a failing disk: batch
// sizes and fsync durations are recorded, and a write refused for lack of
// space sets write_failing() and is logged once.

#include <absl/synchronization/mutex.h>
#include <gtest/gtest.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <sstream>
#include <string>

#include "commit/commit_pipeline.h"
#include "store/job_store.h"
#include "store/keys.h"
#include "support/inbox.h"
#include "support/test_support.h"

namespace errand::commit {
namespace {

using testing::Inbox;

// A file system whose writable files refuse appends with "no space" while
// `full` is set.
class FullDiskFs : public rocksdb::FileSystemWrapper {
 public:
  explicit FullDiskFs(std::shared_ptr<std::atomic<bool>> full)
      : FileSystemWrapper(rocksdb::FileSystem::Default()), full_(std::move(full)) {}
  const char* Name() const override { return "FullDiskFs"; }

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* dbg) override {
    std::unique_ptr<rocksdb::FSWritableFile> file;
    rocksdb::IOStatus s = target()->NewWritableFile(f, o, &file, dbg);
    if (s.ok()) r->reset(new File(std::move(file), full_));
    return s;
  }

 private:
  class File : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    File(std::unique_ptr<rocksdb::FSWritableFile> f, std::shared_ptr<std::atomic<bool>> full)
        : FSWritableFileOwnerWrapper(std::move(f)), full_(std::move(full)) {}
    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                             rocksdb::IODebugContext* dbg) override {
      if (full_->load()) return rocksdb::IOStatus::NoSpace("test: disk full");
      return FSWritableFileOwnerWrapper::Append(data, o, dbg);
    }
    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                             const rocksdb::DataVerificationInfo& v,
                             rocksdb::IODebugContext* dbg) override {
      if (full_->load()) return rocksdb::IOStatus::NoSpace("test: disk full");
      return FSWritableFileOwnerWrapper::Append(data, o, v, dbg);
    }

   private:
    std::shared_ptr<std::atomic<bool>> full_;
  };

  std::shared_ptr<std::atomic<bool>> full_;
};

Mutation JobWrite(uint64_t id, bool sync = true) {
  Mutation m;
  m.sync = sync;
  m.ops.push_back({Cf::kJobs, store::EncodeBE64(id), "v"});
  return m;
}

// Captures what spdlog's default logger writes during a test.
class LogCapture {
 public:
  LogCapture() : old_(spdlog::default_logger()) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  }
  ~LogCapture() { spdlog::set_default_logger(old_); }
  std::string text() const { return out_.str(); }

 private:
  std::shared_ptr<spdlog::logger> old_;
  std::ostringstream out_;
};

TEST(CommitPipelineMetricsTest, RecordsGroupSizesAndFsyncDurations) {
  testing::TempDir dir;
  auto store = store::JobStore::Open({dir.path() + "/data", nullptr});
  ASSERT_TRUE(store.ok()) << store.status();
  Inbox inbox;
  CommitPipeline p(store->get(), {}, inbox.Poster(), 0);
  int done = 0;
  for (uint64_t id = 1; id <= 3; ++id) {
    p.Submit(JobWrite(id), [&](CommitResult&& r) {
      EXPECT_TRUE(r.status.ok()) << r.status;
      ++done;
    });
  }
  p.Start();  // the three queued mutations form one group
  ASSERT_TRUE(inbox.RunUntil([&] { return done == 3; }));
  p.Stop();
  auto sizes = p.group_sizes().Read();
  EXPECT_EQ(sizes.count, 1u);
  EXPECT_EQ(sizes.sum, 3);
  auto fsyncs = p.fsync_seconds().Read();
  EXPECT_GE(fsyncs.count, 1u);
  EXPECT_GT(fsyncs.sum, 0);
  EXPECT_FALSE(p.write_failing());
}

TEST(CommitPipelineMetricsTest, FullDiskSetsWriteFailingAndIsLoggedOnce) {
  testing::TempDir dir;
  auto full = std::make_shared<std::atomic<bool>>(false);
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(std::make_shared<FullDiskFs>(full));
  auto store = store::JobStore::Open({dir.path() + "/data", env.get()});
  ASSERT_TRUE(store.ok()) << store.status();
  Inbox inbox;
  LogCapture log;
  {
    CommitPipeline p(store->get(), {}, inbox.Poster(), 0);
    p.Start();
    full->store(true);
    std::vector<absl::Status> results;
    for (uint64_t id = 1; id <= 2; ++id) {
      // Async writes: a failed write then leaves nothing for the syncer.
      p.Submit(JobWrite(id, /*sync=*/false),
               [&](CommitResult&& r) { results.push_back(r.status); });
      ASSERT_TRUE(inbox.RunUntil([&] { return results.size() == id; }));
    }
    for (const absl::Status& s : results) {
      EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
      EXPECT_NE(s.message().find("disk full"), std::string::npos) << s;
    }
    EXPECT_TRUE(p.write_failing());
    EXPECT_EQ(p.stats().failed, 2u);
    p.Stop();
  }
  (*store)->Close().IgnoreError();
  std::string text = log.text();
  size_t first = text.find("commit failed, writes are refused until one succeeds");
  ASSERT_NE(first, std::string::npos) << text;
  EXPECT_EQ(text.find("commit failed", first + 1), std::string::npos) << "logged twice:\n" << text;
}

}  // namespace
}  // namespace errand::commit
