// Unit tests of the lifecycle's store and validation pieces: queue records,
// the background compaction of the jobs column family, and the checks of
// CancelJob, ListJobs and RedriveJobs.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "service/validate.h"
#include "store/job_store.h"
#include "store/keys.h"
#include "support/test_support.h"

namespace errand {
namespace {

using ::testing::HasSubstr;

TEST(LifecycleStoreTest, QueueRecordsAreReadBackByName) {
  testing::TempDir dir;
  auto st = store::JobStore::Open({dir.path(), nullptr});
  ASSERT_TRUE(st.ok()) << st.status();
  auto& s = *st;
  rocksdb::WriteBatch batch;
  for (const char* name : {"b", "a/x", "c"}) {
    store::QueueRecord r;
    r.set_name(name);
    r.set_paused(std::string(name) != "c");
    r.set_max_leased_per_key(3);
    batch.Put(s->db()->DefaultColumnFamily(), store::QueueKey(name), r.SerializeAsString());
  }
  ASSERT_TRUE(s->Write(&batch, true).ok());
  std::vector<std::string> names;
  ASSERT_TRUE(s->ForEachQueue([&](store::QueueRecord&& r) {
                 names.push_back(r.name());
                 EXPECT_EQ(r.max_leased_per_key(), 3u);
                 return absl::OkStatus();
               }).ok());
  EXPECT_EQ(names, (std::vector<std::string>{"a/x", "b", "c"}));
  EXPECT_EQ(store::QueueKey("q"), "queue/q");
}

TEST(LifecycleStoreTest, CompactionRunsInTheBackgroundAndCloseJoinsIt) {
  testing::TempDir dir;
  auto st = store::JobStore::Open({dir.path(), nullptr});
  ASSERT_TRUE(st.ok());
  auto& s = *st;
  rocksdb::WriteBatch put, del;
  for (uint64_t id = 1; id <= 2000; ++id) {
    put.Put(s->jobs_cf(), store::EncodeBE64(id), std::string(100, 'x'));
    del.Delete(s->jobs_cf(), store::EncodeBE64(id));
  }
  ASSERT_TRUE(s->Write(&put, false).ok());
  ASSERT_TRUE(s->Write(&del, false).ok());
  s->RequestJobsCompaction();  // returns at once
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (s->jobs_compactions() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GE(s->jobs_compactions(), 1u);
  s->RequestJobsCompaction();
  EXPECT_TRUE(s->Close().ok());
  s->RequestJobsCompaction();  // after Close: ignored
}

TEST(LifecycleValidateTest, CancelNamesTheField) {
  v1::CancelJobRequest r;
  EXPECT_THAT(std::string(service::ValidateCancel(r).message()), HasSubstr("job_id"));
  r.set_job_id("0000018bcfe56800");
  EXPECT_TRUE(service::ValidateCancel(r).ok());
  r.set_reason(std::string(5000, 'r'));
  EXPECT_THAT(std::string(service::ValidateCancel(r).message()), HasSubstr("reason"));
}

TEST(LifecycleValidateTest, ListJobsChecksQueueStatePageSizeAndToken) {
  v1::ListJobsRequest r;
  EXPECT_THAT(std::string(service::ValidateListJobs(r).message()), HasSubstr("queue"));
  r.set_queue("q");
  EXPECT_TRUE(service::ValidateListJobs(r).ok());
  r.set_page_size(1001);
  EXPECT_THAT(std::string(service::ValidateListJobs(r).message()), HasSubstr("page_size"));
  r.set_page_size(1000);
  r.set_page_token("not-a-token");
  EXPECT_THAT(std::string(service::ValidateListJobs(r).message()), HasSubstr("page_token"));
  r.set_page_token(service::MakePageToken(42));
  EXPECT_TRUE(service::ValidateListJobs(r).ok());
  EXPECT_EQ(*service::ParsePageToken(r.page_token(), "page_token"), 42u);
  EXPECT_EQ(service::MakePageToken(0), "");
  r.set_state(static_cast<v1::JobState>(99));
  EXPECT_THAT(std::string(service::ValidateListJobs(r).message()), HasSubstr("state"));
  EXPECT_EQ(*service::ParsePageSize(0, "page_size"), service::kDefaultPageSize);
}

TEST(LifecycleValidateTest, RedriveNeedsQueueOrIdsAndNamesTheBadId) {
  v1::RedriveJobsRequest r;
  EXPECT_THAT(std::string(service::ValidateRedrive(r).message()), HasSubstr("queue or job_ids"));
  r.set_queue("q");
  EXPECT_TRUE(service::ValidateRedrive(r).ok());
  r.add_job_ids("0000018bcfe56800");
  r.add_job_ids("xyz");
  EXPECT_THAT(std::string(service::ValidateRedrive(r).message()), HasSubstr("job_ids[1]"));
}

}  // namespace
}  // namespace errand
