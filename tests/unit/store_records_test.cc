#include "store/records.h"

#include <gtest/gtest.h>

#include <string>

#include "store/keys.h"

namespace errand::store {
namespace {

JobRecord GoodJob(uint64_t id) {
  JobRecord rec;
  rec.mutable_job()->set_id(FormatJobId(id));
  rec.mutable_job()->set_queue("emails");
  rec.mutable_job()->set_state(v1::JOB_STATE_READY);
  rec.mutable_job()->mutable_created_at()->set_seconds(1'800'000'000);
  return rec;
}

void ExpectDataLoss(const absl::Status& s, const std::string& part) {
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find(part), std::string::npos) << s;
}

TEST(RecordsTest, DecodesAJobRecordTheBrokerWrote) {
  auto rec = DecodeJobRecord(EncodeBE64(42), GoodJob(42).SerializeAsString());
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_EQ(rec->job().queue(), "emails");
}

TEST(RecordsTest, RefusesJobRecordsTheEngineCouldNotIndex) {
  const std::string key = EncodeBE64(42);
  ExpectDataLoss(DecodeJobRecord("short", GoodJob(42).SerializeAsString()).status(),
                 "malformed job key");
  ExpectDataLoss(DecodeJobRecord(key, "\xff\xff\xff\xff").status(), "is corrupt");
  ExpectDataLoss(DecodeJobRecord(key, GoodJob(43).SerializeAsString()).status(), "names id");
  JobRecord bad_state = GoodJob(42);
  bad_state.mutable_job()->set_state(static_cast<v1::JobState>(99));
  ExpectDataLoss(DecodeJobRecord(key, bad_state.SerializeAsString()).status(),
                 "unknown state 99");
  JobRecord no_queue = GoodJob(42);
  no_queue.mutable_job()->clear_queue();
  ExpectDataLoss(DecodeJobRecord(key, no_queue.SerializeAsString()).status(), "queue");
  JobRecord far = GoodJob(42);
  far.mutable_job()->mutable_run_at()->set_seconds(INT64_MAX);
  ExpectDataLoss(DecodeJobRecord(key, far.SerializeAsString()).status(), "out of range");
  JobRecord year_3000 = GoodJob(42);  // a valid Timestamp, past system_clock's range
  year_3000.mutable_job()->mutable_created_at()->set_seconds(32503680000LL);
  ExpectDataLoss(DecodeJobRecord(key, year_3000.SerializeAsString()).status(), "out of range");
  JobRecord long_lease = GoodJob(42);
  long_lease.mutable_job()->mutable_lease_duration()->set_seconds(INT64_MIN);
  ExpectDataLoss(DecodeJobRecord(key, long_lease.SerializeAsString()).status(), "out of range");
}

TEST(RecordsTest, QueueRecordMustNameItsKey) {
  QueueRecord q;
  q.set_name("emails");
  q.set_paused(true);
  auto ok = DecodeQueueRecord(QueueKey("emails"), q.SerializeAsString());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_TRUE(ok->paused());
  ExpectDataLoss(DecodeQueueRecord(QueueKey("other"), q.SerializeAsString()).status(),
                 "names queue");
  ExpectDataLoss(DecodeQueueRecord("meta", q.SerializeAsString()).status(), "not a queue key");
}

TEST(RecordsTest, EventMustCarryItsKeysSeqAndAKnownType) {
  v1::Event ev;
  ev.set_seq(7);
  ev.set_type(v1::EVENT_TYPE_MESSAGE);
  ev.mutable_time()->set_seconds(1'800'000'000);
  ASSERT_TRUE(DecodeEvent(EncodeBE64(7), ev.SerializeAsString()).ok());
  ExpectDataLoss(DecodeEvent(EncodeBE64(8), ev.SerializeAsString()).status(), "names seq 7");
  ev.set_type(static_cast<v1::EventType>(1000));
  ExpectDataLoss(DecodeEvent(EncodeBE64(7), ev.SerializeAsString()).status(), "unknown type");
  ExpectDataLoss(DecodeEvent("x", "").status(), "malformed event key");
}

TEST(RecordsTest, MetaRecord) {
  MetaRecord m;
  m.set_format_version(1);
  m.set_boot_epoch(9);
  auto ok = DecodeMetaRecord(m.SerializeAsString());
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->boot_epoch(), 9u);
  ExpectDataLoss(DecodeMetaRecord("\x08").status(), "meta record is corrupt");
}

}  // namespace
}  // namespace errand::store
