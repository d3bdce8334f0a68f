#include "store/job_store.h"

#include <gtest/gtest.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "store/keys.h"
#include "support/test_support.h"

namespace errand::store {
namespace {

std::unique_ptr<JobStore> OpenOrDie(const std::string& path) {
  JobStore::Options options;
  options.path = path;
  auto store = JobStore::Open(options);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

JobRecord Record(uint64_t id, const std::string& queue) {
  JobRecord rec;
  rec.mutable_job()->set_id(FormatJobId(id));
  rec.mutable_job()->set_queue(queue);
  rec.mutable_job()->set_state(v1::JOB_STATE_READY);
  return rec;
}

void PutJobs(JobStore& store, const std::vector<uint64_t>& ids) {
  rocksdb::WriteBatch batch;
  for (uint64_t id : ids) {
    batch.Put(store.jobs_cf(), EncodeBE64(id), Record(id, "q").SerializeAsString());
  }
  ASSERT_TRUE(store.Write(&batch, /*sync=*/true).ok());
}

void PutEvents(JobStore& store, const std::vector<uint64_t>& seqs) {
  rocksdb::WriteBatch batch;
  for (uint64_t seq : seqs) {
    v1::Event ev;
    ev.set_seq(seq);
    batch.Put(store.events_cf(), EncodeBE64(seq), ev.SerializeAsString());
  }
  ASSERT_TRUE(store.Write(&batch, /*sync=*/false).ok());
}

// Writes `meta` under "meta" in the default column family with plain RocksDB.
void WriteMetaDirectly(const std::string& path, const MetaRecord& meta) {
  rocksdb::Options options;
  options.create_if_missing = true;
  std::vector<std::string> names;
  rocksdb::Status s = rocksdb::DB::ListColumnFamilies(options, path, &names);
  if (!s.ok()) names = {rocksdb::kDefaultColumnFamilyName};
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (const auto& n : names) cfs.emplace_back(n, rocksdb::ColumnFamilyOptions());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  s = rocksdb::DB::Open(options, path, cfs, &handles, &raw);
  ASSERT_TRUE(s.ok()) << s.ToString();
  std::unique_ptr<rocksdb::DB> db(raw);
  rocksdb::WriteOptions wo;
  wo.sync = true;
  s = db->Put(wo, db->DefaultColumnFamily(), kMetaKey, meta.SerializeAsString());
  ASSERT_TRUE(s.ok()) << s.ToString();
  for (auto* h : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
  ASSERT_TRUE(db->Close().ok());
}

MetaRecord ReadMetaDirectly(const std::string& path) {
  rocksdb::Options options;
  std::vector<std::string> names;
  EXPECT_TRUE(rocksdb::DB::ListColumnFamilies(options, path, &names).ok());
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (const auto& n : names) cfs.emplace_back(n, rocksdb::ColumnFamilyOptions());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::OpenForReadOnly(options, path, cfs, &handles, &raw);
  EXPECT_TRUE(s.ok()) << s.ToString();
  MetaRecord meta;
  if (!s.ok()) return meta;
  std::unique_ptr<rocksdb::DB> db(raw);
  std::string value;
  EXPECT_TRUE(db->Get(rocksdb::ReadOptions(), db->DefaultColumnFamily(), kMetaKey, &value).ok());
  EXPECT_TRUE(meta.ParseFromString(value));
  for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
  return meta;
}

TEST(JobStoreTest, OpenCreatesMissingDirectories) {
  testing::TempDir tmp;
  const std::string path = tmp.path() + "/nested/deeper/data";
  ASSERT_FALSE(std::filesystem::exists(path));
  auto store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(std::filesystem::is_directory(path));
  EXPECT_TRUE(std::filesystem::exists(path + "/CURRENT"));
}

TEST(JobStoreTest, BootEpochIncrementsOnEachOpen) {
  testing::TempDir tmp;
  const std::string path = tmp.path() + "/data";
  for (uint64_t expected = 1; expected <= 3; ++expected) {
    auto store = OpenOrDie(path);
    ASSERT_NE(store, nullptr);
    EXPECT_EQ(store->boot_epoch(), expected);
    ASSERT_TRUE(store->Close().ok());
  }
  MetaRecord meta = ReadMetaDirectly(path);
  EXPECT_EQ(meta.boot_epoch(), 3u);
  EXPECT_EQ(meta.format_version(), kStoreFormatVersion);
}

TEST(JobStoreTest, BootEpochSurvivesDestructionWithoutClose) {
  testing::TempDir tmp;
  const std::string path = tmp.path() + "/data";
  { EXPECT_EQ(OpenOrDie(path)->boot_epoch(), 1u); }
  { EXPECT_EQ(OpenOrDie(path)->boot_epoch(), 2u); }
}

TEST(JobStoreTest, ForEachJobVisitsRecordsInIdOrder) {
  testing::TempDir tmp;
  auto store = OpenOrDie(tmp.path() + "/data");
  ASSERT_NE(store, nullptr);
  // Written out of order, and across byte boundaries that a little-endian or
  // text encoding would sort differently.
  const std::vector<uint64_t> ids = {0x10000, 3, 0xff, 0x100, 1, 0x0123456789abcdefULL, 2};
  PutJobs(*store, ids);

  std::vector<uint64_t> seen;
  absl::Status s = store->ForEachJob([&](uint64_t id, JobRecord&& rec) {
    EXPECT_EQ(rec.job().id(), FormatJobId(id));
    seen.push_back(id);
    return absl::OkStatus();
  });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(seen, (std::vector<uint64_t>{1, 2, 3, 0xff, 0x100, 0x10000, 0x0123456789abcdefULL}));
}

TEST(JobStoreTest, ForEachJobStopsAtTheFirstError) {
  testing::TempDir tmp;
  auto store = OpenOrDie(tmp.path() + "/data");
  ASSERT_NE(store, nullptr);
  PutJobs(*store, {1, 2, 3, 4});
  int calls = 0;
  absl::Status s = store->ForEachJob([&](uint64_t id, JobRecord&&) {
    ++calls;
    if (id == 2) return absl::DataLossError("stop here");
    return absl::OkStatus();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(calls, 2);
}

TEST(JobStoreTest, ForEachJobOnEmptyStoreCallsNothing) {
  testing::TempDir tmp;
  auto store = OpenOrDie(tmp.path() + "/data");
  ASSERT_NE(store, nullptr);
  int calls = 0;
  EXPECT_TRUE(store->ForEachJob([&](uint64_t, JobRecord&&) {
                      ++calls;
                      return absl::OkStatus();
                    })
                  .ok());
  EXPECT_EQ(calls, 0);
}

TEST(JobStoreTest, ForEachJobRejectsACorruptRecord) {
  testing::TempDir tmp;
  auto store = OpenOrDie(tmp.path() + "/data");
  ASSERT_NE(store, nullptr);
  rocksdb::WriteBatch batch;
  batch.Put(store->jobs_cf(), EncodeBE64(5), std::string("\xff\xff\xff\xff", 4));
  ASSERT_TRUE(store->Write(&batch, true).ok());
  absl::Status s = store->ForEachJob([](uint64_t, JobRecord&&) { return absl::OkStatus(); });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
}

TEST(JobStoreTest, EventSeqBoundsAreZeroWhenEmpty) {
  testing::TempDir tmp;
  auto store = OpenOrDie(tmp.path() + "/data");
  ASSERT_NE(store, nullptr);
  auto last = store->LastEventSeq();
  auto first = store->FirstEventSeq();
  ASSERT_TRUE(last.ok()) << last.status();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*last, 0u);
  EXPECT_EQ(*first, 0u);
}

TEST(JobStoreTest, EventSeqBoundsAreNumericMinAndMax) {
  testing::TempDir tmp;
  const std::string path = tmp.path() + "/data";
  {
    auto store = OpenOrDie(path);
    ASSERT_NE(store, nullptr);
    PutEvents(*store, {300, 7, 256, 255, 70000});
    EXPECT_EQ(store->FirstEventSeq().value(), 7u);
    EXPECT_EQ(store->LastEventSeq().value(), 70000u);
    ASSERT_TRUE(store->Close().ok());
  }
  // And after reopening (unsynced writes are flushed by Close).
  auto store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->FirstEventSeq().value(), 7u);
  EXPECT_EQ(store->LastEventSeq().value(), 70000u);
}

TEST(JobStoreTest, GetJobReturnsStoredRecordOrNothing) {
  testing::TempDir tmp;
  auto store = OpenOrDie(tmp.path() + "/data");
  ASSERT_NE(store, nullptr);
  PutJobs(*store, {42});
  auto found = store->GetJob(42);
  ASSERT_TRUE(found.ok()) << found.status();
  ASSERT_TRUE(found->has_value());
  EXPECT_EQ((*found)->job().id(), FormatJobId(42));
  EXPECT_EQ((*found)->job().queue(), "q");
  auto missing = store->GetJob(43);
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_FALSE(missing->has_value());
}

TEST(JobStoreTest, DataSurvivesCloseAndReopen) {
  testing::TempDir tmp;
  const std::string path = tmp.path() + "/data";
  {
    auto store = OpenOrDie(path);
    ASSERT_NE(store, nullptr);
    PutJobs(*store, {9, 8});
    ASSERT_TRUE(store->Close().ok());
    EXPECT_TRUE(store->Close().ok());  // idempotent
  }
  auto store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  std::vector<uint64_t> seen;
  ASSERT_TRUE(store
                  ->ForEachJob([&](uint64_t id, JobRecord&&) {
                    seen.push_back(id);
                    return absl::OkStatus();
                  })
                  .ok());
  EXPECT_EQ(seen, (std::vector<uint64_t>{8, 9}));
}

TEST(JobStoreTest, ForEachQueueVisitsQueueRecordsByName) {
  testing::TempDir tmp;
  auto store = OpenOrDie(tmp.path() + "/data");
  ASSERT_NE(store, nullptr);
  rocksdb::WriteBatch batch;
  for (const char* name : {"zeta", "alpha", "mid/sub"}) {
    QueueRecord rec;
    rec.set_name(name);
    rec.set_paused(std::string(name) == "alpha");
    batch.Put(store->db()->DefaultColumnFamily(), QueueKey(name), rec.SerializeAsString());
  }
  // Neighbours of the prefix are not queue records.
  batch.Put(store->db()->DefaultColumnFamily(), "queue", "x");
  batch.Put(store->db()->DefaultColumnFamily(), "queuf", "x");
  ASSERT_TRUE(store->Write(&batch, true).ok());

  std::vector<std::string> names;
  std::vector<bool> paused;
  absl::Status s = store->ForEachQueue([&](QueueRecord&& rec) {
    names.push_back(rec.name());
    paused.push_back(rec.paused());
    return absl::OkStatus();
  });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(names, (std::vector<std::string>{"alpha", "mid/sub", "zeta"}));
  EXPECT_EQ(paused, (std::vector<bool>{true, false, false}));
}

TEST(JobStoreTest, RequestedJobsCompactionRunsInTheBackground) {
  testing::TempDir tmp;
  auto store = OpenOrDie(tmp.path() + "/data");
  ASSERT_NE(store, nullptr);
  PutJobs(*store, {1, 2, 3});
  EXPECT_EQ(store->jobs_compactions(), 0u);
  store->RequestJobsCompaction();  // returns at once
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (store->jobs_compactions() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_GE(store->jobs_compactions(), 1u);
  // The data is intact, and Close stops the compactor.
  EXPECT_TRUE(store->GetJob(2).value().has_value());
  store->RequestJobsCompaction();
  EXPECT_TRUE(store->Close().ok());
}

TEST(JobStoreTest, RefusesAStoreWithANewerFormatVersion) {
  testing::TempDir tmp;
  const std::string path = tmp.path() + "/data";
  { ASSERT_NE(OpenOrDie(path), nullptr); }
  MetaRecord meta;
  meta.set_format_version(99);
  meta.set_boot_epoch(17);
  WriteMetaDirectly(path, meta);

  JobStore::Options options;
  options.path = path;
  auto store = JobStore::Open(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_NE(store.status().message().find("99"), std::string::npos) << store.status();

  // The refusal leaves the store untouched: no epoch bump, version kept.
  MetaRecord after = ReadMetaDirectly(path);
  EXPECT_EQ(after.format_version(), 99u);
  EXPECT_EQ(after.boot_epoch(), 17u);
}

TEST(JobStoreTest, RefusesAFreshDatabaseWithANewerFormatVersion) {
  testing::TempDir tmp;
  const std::string path = tmp.path() + "/data";
  MetaRecord meta;
  meta.set_format_version(99);
  WriteMetaDirectly(path, meta);
  JobStore::Options options;
  options.path = path;
  auto store = JobStore::Open(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
}

TEST(JobStoreTest, RefusesACorruptMetaRecord) {
  testing::TempDir tmp;
  const std::string path = tmp.path() + "/data";
  { ASSERT_NE(OpenOrDie(path), nullptr); }
  {
    rocksdb::Options options;
    std::vector<std::string> names;
    ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(options, path, &names).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
    for (const auto& n : names) cfs.emplace_back(n, rocksdb::ColumnFamilyOptions());
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(options, path, cfs, &handles, &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), kMetaKey, std::string("\xff\xff", 2)).ok());
    for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
    ASSERT_TRUE(db->Close().ok());
  }
  JobStore::Options options;
  options.path = path;
  auto store = JobStore::Open(options);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss) << store.status();
}

TEST(JobStoreTest, SecondOpenOfTheSameDirectoryFails) {
  testing::TempDir tmp;
  const std::string path = tmp.path() + "/data";
  auto first = OpenOrDie(path);
  ASSERT_NE(first, nullptr);
  JobStore::Options options;
  options.path = path;
  auto second = JobStore::Open(options);
  EXPECT_FALSE(second.ok());
}

}  // namespace
}  // namespace errand::store
