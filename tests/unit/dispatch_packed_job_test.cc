#include "dispatch/packed_job.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "broker/store/records.pb.h"
#include "util/time.h"

namespace errand::dispatch {
namespace {

v1::Job FullJob() {
  v1::Job job;
  job.set_id("0000000000000042");
  job.set_queue("emails");
  job.set_state(v1::JOB_STATE_SCHEDULED);
  job.set_payload(std::string(256, 'p'));
  (*job.mutable_headers())["trace"] = "abc";
  job.set_priority(-7);
  job.set_attempts(3);
  job.set_max_attempts(9);
  job.set_idempotency_key("order-1");
  job.set_concurrency_key("tenant-5");
  job.set_cancel_requested(true);
  *job.mutable_updated_at() =
      util::ToProto(util::Clock::TimePoint(std::chrono::microseconds(1'700'000'000'123'456)));
  job.add_history()->set_worker_id("w1");
  return job;
}

// The fields FullJob() sets that a PackedJob tracks without its bytes.
void ExpectFullJobsHotFields(const PackedJob& packed) {
  EXPECT_EQ(packed.state(), v1::JOB_STATE_SCHEDULED);
  EXPECT_EQ(packed.priority(), -7);
  EXPECT_EQ(packed.attempts(), 3u);
  EXPECT_TRUE(packed.cancel_requested());
  EXPECT_TRUE(packed.has_idempotency_key());
  EXPECT_EQ(packed.concurrency_key(), "tenant-5");
}

TEST(PackedJobTest, UnpackGivesBackTheWholeJob) {
  const v1::Job job = FullJob();
  PackedJob packed;
  packed.Pack(job);
  v1::Job back = packed.Unpack();
  EXPECT_EQ(back.SerializeAsString(), job.SerializeAsString());
  EXPECT_EQ(packed.wire_size(), job.ByteSizeLong());
}

TEST(PackedJobTest, StaysSmall) {
  // One per job in memory: the bytes live apart, in one allocation of the
  // job's wire size.
  EXPECT_LE(sizeof(PackedJob), 40u);
  PackedJob packed;
  packed.Pack(FullJob());
  EXPECT_LT(packed.wire_size(), 400u);
}

TEST(PackedJobTest, HotFieldsNeedNoUnpack) {
  PackedJob packed;
  packed.Pack(FullJob());
  ExpectFullJobsHotFields(packed);
  EXPECT_EQ(packed.updated_at().time_since_epoch(),
            std::chrono::microseconds(1'700'000'000'123'456));

  v1::Job plain;
  plain.set_id("0000000000000043");
  packed.Pack(plain);  // a second Pack replaces every field
  EXPECT_EQ(packed.priority(), 0);
  EXPECT_FALSE(packed.cancel_requested());
  EXPECT_FALSE(packed.has_idempotency_key());
  EXPECT_EQ(packed.concurrency_key(), "");
  EXPECT_EQ(packed.Unpack().id(), "0000000000000043");
}

TEST(PackedJobTest, InMemoryStateWinsOverTheBytes) {
  PackedJob packed;
  packed.Pack(FullJob());
  packed.set_state(v1::JOB_STATE_READY);  // promoted without a write
  EXPECT_EQ(packed.state(), v1::JOB_STATE_READY);
  EXPECT_EQ(packed.Unpack().state(), v1::JOB_STATE_READY);
  EXPECT_EQ(packed.Unpack().payload(), std::string(256, 'p'));
}

TEST(PackedJobTest, TrackKeepsTheHotFieldsWithoutBytes) {
  const v1::Job job = FullJob();
  PackedJob packed;
  packed.Pack(job);
  ASSERT_TRUE(packed.held());
  packed.Track(job);  // drops the bytes a Pack held
  EXPECT_FALSE(packed.held());
  EXPECT_EQ(packed.wire_size(), 0u);
  ExpectFullJobsHotFields(packed);
}

TEST(PackedJobTest, HoldKeepsTheGivenBytesAndDropLetsThemGo) {
  const v1::Job job = FullJob();
  PackedJob packed;
  packed.Track(job);
  packed.set_state(v1::JOB_STATE_READY);
  packed.Hold(job.SerializeAsString());
  ASSERT_TRUE(packed.held());
  v1::Job back = packed.Unpack();
  EXPECT_EQ(back.state(), v1::JOB_STATE_READY);  // the tracked state, not the bytes'
  back.set_state(job.state());
  EXPECT_EQ(back.SerializeAsString(), job.SerializeAsString());
  EXPECT_EQ(packed.concurrency_key(), "tenant-5");

  packed.Drop();
  EXPECT_FALSE(packed.held());
  EXPECT_EQ(packed.state(), v1::JOB_STATE_READY);
  EXPECT_EQ(packed.priority(), -7);

  // An empty job has no bytes at all, and is held all the same.
  PackedJob empty;
  empty.Track(v1::Job());
  empty.Hold("");
  EXPECT_TRUE(empty.held());
  EXPECT_EQ(empty.Unpack().SerializeAsString(), "");
}

TEST(PackedJobTest, JobBytesOfRecordFindsTheJobWithoutParsingIt) {
  store::JobRecord rec;
  *rec.mutable_job() = FullJob();
  rec.set_lease_token(77);
  std::string bytes;
  ASSERT_TRUE(JobBytesOfRecord(rec.SerializeAsString(), &bytes));
  EXPECT_EQ(bytes, rec.job().SerializeAsString());

  // The job field may come after the others.
  store::JobRecord token_only;
  token_only.set_lease_token(5);
  std::string reordered = token_only.SerializeAsString() + rec.SerializeAsString();
  ASSERT_TRUE(JobBytesOfRecord(reordered, &bytes));
  EXPECT_EQ(bytes, rec.job().SerializeAsString());

  // A record without a job has empty job bytes (an empty job).
  ASSERT_TRUE(JobBytesOfRecord(token_only.SerializeAsString(), &bytes));
  EXPECT_EQ(bytes, "");
}

TEST(PackedJobTest, JobBytesOfRecordRejectsMalformedBytes) {
  store::JobRecord rec;
  *rec.mutable_job() = FullJob();
  std::string whole = rec.SerializeAsString();
  std::string bytes;
  EXPECT_FALSE(JobBytesOfRecord(whole.substr(0, whole.size() / 2), &bytes));  // cut short
  EXPECT_FALSE(JobBytesOfRecord(std::string("\xff\xff\xff\xff\xff", 5), &bytes));
  EXPECT_FALSE(JobBytesOfRecord(std::string("\x0a\x05\x01", 3), &bytes));  // length past end
}

TEST(PackedJobTest, JobRecordBytesEqualsTheRecordsOwnSerialization) {
  for (uint64_t token : {uint64_t{0}, uint64_t{1}, uint64_t{300}, (uint64_t{7} << 32) | 12345,
                         ~uint64_t{0}}) {
    store::JobRecord rec;
    *rec.mutable_job() = FullJob();
    rec.set_lease_token(token);
    EXPECT_EQ(JobRecordBytes(rec.job().SerializeAsString(), token), rec.SerializeAsString())
        << token;
  }
  // A job of more than 127 bytes needs a two-byte length; an empty one none.
  store::JobRecord empty;
  empty.mutable_job();
  EXPECT_EQ(JobRecordBytes("", 0), empty.SerializeAsString());
  std::string back;
  ASSERT_TRUE(JobBytesOfRecord(JobRecordBytes("\x0a\x01x", 9), &back));
  EXPECT_EQ(back, "\x0a\x01x");
}

}  // namespace
}  // namespace errand::dispatch
