#include "service/validate.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "util/time.h"

namespace errand::service {
namespace {

using std::chrono::hours;
using std::chrono::microseconds;
using std::chrono::minutes;
using std::chrono::seconds;
using ::testing::AllOf;
using ::testing::HasSubstr;

const std::chrono::system_clock::time_point kNow(seconds(1'700'000'000));
const char kJobId[] = "0000018bcfe56800";

// Asserts INVALID_ARGUMENT whose message contains every fragment in `parts`.
#define EXPECT_INVALID(expr, ...)                                                     \
  do {                                                                                \
    absl::Status _s = (expr);                                                         \
    EXPECT_EQ(_s.code(), absl::StatusCode::kInvalidArgument) << _s;                   \
    for (const char* _part : {__VA_ARGS__}) EXPECT_THAT(std::string(_s.message()), HasSubstr(_part)); \
  } while (0)

google::protobuf::Duration Dur(int64_t seconds, int32_t nanos = 0) {
  google::protobuf::Duration d;
  d.set_seconds(seconds);
  d.set_nanos(nanos);
  return d;
}

v1::EnqueueRequest ValidEnqueue() {
  v1::EnqueueRequest req;
  req.set_queue("emails.send");
  req.set_payload("{\"to\":\"a@example.com\"}");
  (*req.mutable_headers())["trace"] = "abc";
  req.set_priority(5);
  *req.mutable_delay() = Dur(10);
  req.set_max_attempts(3);
  *req.mutable_lease_duration() = Dur(60);
  req.set_idempotency_key("k-1");
  req.set_durability(v1::DURABILITY_SYNC);
  return req;
}

// ---------------------------------------------------------------------------
// Queue names.

TEST(ValidateTest, QueueNameAcceptsAllowedCharacters) {
  EXPECT_TRUE(ValidateQueueName("a", "queue").ok());
  EXPECT_TRUE(ValidateQueueName("Az09._:/-", "queue").ok());
  EXPECT_TRUE(ValidateQueueName(std::string(kMaxQueueNameLength, 'q'), "queue").ok());
}

TEST(ValidateTest, QueueNameEmptyIsRejected) {
  EXPECT_INVALID(ValidateQueueName("", "queue"), "queue", "required");
}

TEST(ValidateTest, QueueNameTooLongIsRejectedWithLimit) {
  EXPECT_INVALID(ValidateQueueName(std::string(kMaxQueueNameLength + 1, 'q'), "queue"), "queue",
                 "129", "128");
}

TEST(ValidateTest, QueueNameWithBadCharacterIsRejected) {
  for (const char* bad : {"a b", "a*b", "ä", "a\nb", "q!", "a,b"}) {
    EXPECT_INVALID(ValidateQueueName(bad, "queues[2]"), "queues[2]", "[A-Za-z0-9._:/-]");
  }
  EXPECT_INVALID(ValidateQueueName(std::string_view("a\0b", 3), "queue"), "queue");
}

// ---------------------------------------------------------------------------
// Job ids.

TEST(ValidateTest, ParseJobIdFieldAcceptsSixteenHexDigits) {
  auto id = ParseJobIdField(kJobId, "job_id");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*id, 0x0000018bcfe56800ULL);
}

TEST(ValidateTest, ParseJobIdFieldRejectsMissingMalformedAndZero) {
  EXPECT_INVALID(ParseJobIdField("", "job_id").status(), "job_id", "required");
  EXPECT_INVALID(ParseJobIdField("xyz", "job_id").status(), "job_id", "xyz", "16 hex digits");
  EXPECT_INVALID(ParseJobIdField("0000000000000000", "job_id").status(), "job_id");
  // A huge bad id is not echoed in full.
  absl::Status s = ParseJobIdField(std::string(10000, 'z'), "job_id").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(s.message().size(), 200u);
}

// ---------------------------------------------------------------------------
// Durations.

TEST(ValidateTest, DurationWithinBoundsPasses) {
  EXPECT_TRUE(ValidateDuration(Dur(1), "d", seconds(1), hours(1), false).ok());
  EXPECT_TRUE(ValidateDuration(Dur(3600), "d", seconds(1), hours(1), false).ok());
  EXPECT_TRUE(ValidateDuration(Dur(0), "d", seconds(1), hours(1), true).ok());
}

TEST(ValidateTest, DurationZeroRejectedUnlessAllowed) {
  EXPECT_INVALID(ValidateDuration(Dur(0), "extend_by", seconds(1), hours(1), false), "extend_by",
                 "at least 1s");
}

TEST(ValidateTest, DurationNegativeIsRejected) {
  EXPECT_INVALID(ValidateDuration(Dur(-5), "delay", microseconds(0), hours(1), true), "delay",
                 "negative");
  EXPECT_INVALID(ValidateDuration(Dur(0, -1), "delay", microseconds(0), hours(1), true), "delay",
                 "negative");
}

TEST(ValidateTest, DurationOverMaxIsRejectedWithLimit) {
  EXPECT_INVALID(ValidateDuration(Dur(3600, 1000), "wait", microseconds(0), hours(1), true),
                 "wait", "1h");
  EXPECT_INVALID(ValidateDuration(Dur(301), "wait", microseconds(0), minutes(5), true), "wait",
                 "5m");
}

TEST(ValidateTest, DurationHugeSecondsDoNotOverflow) {
  // Valid protobuf Durations whose microseconds would overflow int64.
  EXPECT_INVALID(ValidateDuration(Dur(315576000000LL), "delay", microseconds(0), hours(1), true),
                 "delay", "exceeds");
  EXPECT_INVALID(
      ValidateDuration(Dur(315576000000LL, 999999999), "delay", microseconds(0), hours(1), true),
      "delay", "exceeds");
  EXPECT_INVALID(ValidateDuration(Dur(9223372036LL), "delay", microseconds(0), hours(1), true),
                 "delay", "exceeds");
  // Out of protobuf's own range: not a valid Duration at all.
  EXPECT_INVALID(
      ValidateDuration(Dur(9223372036854LL), "delay", microseconds(0), hours(1), true), "delay",
      "not a valid duration");
  EXPECT_INVALID(ValidateDuration(Dur(std::numeric_limits<int64_t>::max()), "delay",
                                  microseconds(0), hours(1), true),
                 "delay", "not a valid duration");
  EXPECT_INVALID(ValidateDuration(Dur(std::numeric_limits<int64_t>::min()), "delay",
                                  microseconds(0), hours(1), true),
                 "delay", "not a valid duration");
}

TEST(ValidateTest, DurationWithInvalidNanosIsRejected) {
  EXPECT_INVALID(ValidateDuration(Dur(1, 1000000000), "d", microseconds(0), hours(1), true), "d",
                 "not a valid duration");
  EXPECT_INVALID(ValidateDuration(Dur(1, -1), "d", microseconds(0), hours(1), true), "d",
                 "not a valid duration");
  EXPECT_INVALID(ValidateDuration(Dur(-1, 1), "d", microseconds(0), hours(1), true), "d",
                 "not a valid duration");
}

TEST(ValidateTest, DurationBelowMinIsRejected) {
  EXPECT_INVALID(ValidateDuration(Dur(0, 500000000), "lease_duration", seconds(1), hours(24),
                                  true),
                 "lease_duration", "at least 1s");
}

// ---------------------------------------------------------------------------
// Enqueue.

TEST(ValidateTest, ValidEnqueuePasses) {
  EXPECT_TRUE(ValidateEnqueue(ValidEnqueue(), Limits(), kNow).ok());
  v1::EnqueueRequest minimal;
  minimal.set_queue("q");
  EXPECT_TRUE(ValidateEnqueue(minimal, Limits(), kNow).ok());
}

TEST(ValidateTest, EnqueueQueueIsChecked) {
  v1::EnqueueRequest req = ValidEnqueue();
  req.clear_queue();
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "queue", "required");
  req.set_queue(std::string(200, 'x'));
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "queue", "128");
  req.set_queue("bad queue");
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "queue");
}

TEST(ValidateTest, EnqueuePayloadOverLimitMentionsTheLimit) {
  Limits limits;
  limits.max_payload_bytes = 100;
  v1::EnqueueRequest req = ValidEnqueue();
  req.set_payload(std::string(100, 'p'));
  EXPECT_TRUE(ValidateEnqueue(req, limits, kNow).ok());
  req.set_payload(std::string(101, 'p'));
  EXPECT_INVALID(ValidateEnqueue(req, limits, kNow), "payload", "101", "100",
                 "--max-payload-bytes");
}

TEST(ValidateTest, EnqueueHeadersOverLimitAreRejected) {
  Limits limits;
  limits.max_headers_bytes = 10;
  v1::EnqueueRequest req = ValidEnqueue();
  req.clear_headers();
  (*req.mutable_headers())["abcde"] = "12345";  // exactly 10
  EXPECT_TRUE(ValidateEnqueue(req, limits, kNow).ok());
  (*req.mutable_headers())["x"] = "";
  EXPECT_INVALID(ValidateEnqueue(req, limits, kNow), "headers", "11", "10",
                 "--max-headers-bytes");
}

TEST(ValidateTest, EnqueueHeaderWithEmptyKeyIsRejected) {
  v1::EnqueueRequest req = ValidEnqueue();
  (*req.mutable_headers())[""] = "v";
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "headers", "empty key");
}

TEST(ValidateTest, EnqueueRunAtAndDelayAreExclusive) {
  v1::EnqueueRequest req = ValidEnqueue();
  *req.mutable_run_at() = util::ToProto(kNow + seconds(5));
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "run_at", "delay", "mutually exclusive");
}

TEST(ValidateTest, EnqueueRunAtMoreThanAYearAheadIsRejected) {
  v1::EnqueueRequest req = ValidEnqueue();
  req.clear_delay();
  *req.mutable_run_at() = util::ToProto(kNow + hours(24 * 365));
  EXPECT_TRUE(ValidateEnqueue(req, Limits(), kNow).ok());
  *req.mutable_run_at() = util::ToProto(kNow + hours(24 * 365) + seconds(1));
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "run_at", "365 days");
  // Still representable as a system_clock time (before 2262-04-11).
  req.mutable_run_at()->set_seconds(9'000'000'000LL);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "run_at", "365 days");
}

// A run_at beyond a nanosecond time_point's range (after 2262) must not wrap
// into the past and pass the "365 days ahead" check.
TEST(ValidateTest, EnqueueRunAtBeyondNanosecondRangeIsRejected) {
  v1::EnqueueRequest req = ValidEnqueue();
  req.clear_delay();
  for (int64_t secs : {9'223'372'037LL, 10'000'000'000LL, 253402300799LL}) {
    req.mutable_run_at()->set_seconds(secs);
    req.mutable_run_at()->set_nanos(0);
    EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "run_at");
  }
}

TEST(ValidateTest, EnqueueRunAtInThePastIsAccepted) {
  v1::EnqueueRequest req = ValidEnqueue();
  req.clear_delay();
  *req.mutable_run_at() = util::ToProto(kNow - hours(1));
  EXPECT_TRUE(ValidateEnqueue(req, Limits(), kNow).ok());
}

TEST(ValidateTest, EnqueueInvalidRunAtTimestampIsRejected) {
  v1::EnqueueRequest req = ValidEnqueue();
  req.clear_delay();
  req.mutable_run_at()->set_seconds(-1);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "run_at", "not a valid timestamp");
  req.mutable_run_at()->set_seconds(253402300800LL);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "run_at", "not a valid timestamp");
  req.mutable_run_at()->set_seconds(std::numeric_limits<int64_t>::max());
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "run_at", "not a valid timestamp");
  req.mutable_run_at()->set_seconds(1'700'000'000);
  req.mutable_run_at()->set_nanos(-1);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "run_at", "not a valid timestamp");
  req.mutable_run_at()->set_nanos(1000000000);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "run_at", "not a valid timestamp");
}

TEST(ValidateTest, EnqueueNegativeDelayIsRejected) {
  v1::EnqueueRequest req = ValidEnqueue();
  *req.mutable_delay() = Dur(-1);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "delay", "negative");
}

TEST(ValidateTest, EnqueueOversizeDelayIsRejected) {
  v1::EnqueueRequest req = ValidEnqueue();
  *req.mutable_delay() = Dur(365 * 24 * 3600);
  EXPECT_TRUE(ValidateEnqueue(req, Limits(), kNow).ok());
  *req.mutable_delay() = Dur(365 * 24 * 3600, 1000);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "delay", "exceeds", "8760h");
  *req.mutable_delay() = Dur(315576000000LL);  // would overflow as microseconds
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "delay", "exceeds");
  *req.mutable_delay() = Dur(std::numeric_limits<int64_t>::max());
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "delay", "not a valid duration");
}

TEST(ValidateTest, EnqueueMaxAttemptsOverLimitIsRejected) {
  v1::EnqueueRequest req = ValidEnqueue();
  req.set_max_attempts(kMaxAttempts);
  EXPECT_TRUE(ValidateEnqueue(req, Limits(), kNow).ok());
  req.set_max_attempts(kMaxAttempts + 1);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "max_attempts", "1001", "1000");
}

TEST(ValidateTest, EnqueueLeaseDurationBoundsAreChecked) {
  v1::EnqueueRequest req = ValidEnqueue();
  *req.mutable_lease_duration() = Dur(0, 999999999);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "lease_duration", "at least 1s");
  *req.mutable_lease_duration() = Dur(24 * 3600 + 1);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "lease_duration", "24h");
  *req.mutable_lease_duration() = Dur(-3);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "lease_duration", "negative");
  *req.mutable_lease_duration() = Dur(0);  // unset: the default applies
  EXPECT_TRUE(ValidateEnqueue(req, Limits(), kNow).ok());
}

TEST(ValidateTest, EnqueueKeysOverLimitAreRejected) {
  v1::EnqueueRequest req = ValidEnqueue();
  req.set_idempotency_key(std::string(kMaxKeyLength, 'k'));
  req.set_concurrency_key(std::string(kMaxKeyLength, 'c'));
  EXPECT_TRUE(ValidateEnqueue(req, Limits(), kNow).ok());
  req.set_idempotency_key(std::string(kMaxKeyLength + 1, 'k'));
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "idempotency_key", "256");
  req.set_idempotency_key("k");
  req.set_concurrency_key(std::string(kMaxKeyLength + 1, 'c'));
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "concurrency_key", "256");
}

TEST(ValidateTest, EnqueueUnknownDurabilityIsRejected) {
  v1::EnqueueRequest req = ValidEnqueue();
  req.set_durability(static_cast<v1::Durability>(42));
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "durability");
}

TEST(ValidateTest, EnqueueRetryPolicyIsChecked) {
  v1::EnqueueRequest req = ValidEnqueue();
  v1::RetryPolicy* r = req.mutable_retry();
  *r->mutable_initial_backoff() = Dur(5);
  *r->mutable_max_backoff() = Dur(600);
  r->set_multiplier(1.5);
  r->set_jitter(0.2);
  EXPECT_TRUE(ValidateEnqueue(req, Limits(), kNow).ok());

  *r->mutable_initial_backoff() = Dur(-1);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "retry.initial_backoff", "negative");
  *r->mutable_initial_backoff() = Dur(25 * 3600);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "retry.initial_backoff", "24h");
  *r->mutable_initial_backoff() = Dur(5);

  *r->mutable_max_backoff() = Dur(315576000000LL);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "retry.max_backoff", "exceeds");
  *r->mutable_max_backoff() = Dur(600);

  r->set_multiplier(0.5);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "retry.multiplier", "[1, 100]");
  r->set_multiplier(101);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "retry.multiplier", "[1, 100]");
  r->set_multiplier(std::nan(""));
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "retry.multiplier");
  r->set_multiplier(0);  // unset: the default applies
  EXPECT_TRUE(ValidateEnqueue(req, Limits(), kNow).ok());

  r->set_jitter(-0.1);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "retry.jitter", "[0, 1]");
  r->set_jitter(1.5);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "retry.jitter", "[0, 1]");
  r->set_jitter(std::nan(""));
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "retry.jitter");
}

TEST(ValidateTest, EnqueueRetentionIsChecked) {
  v1::EnqueueRequest req = ValidEnqueue();
  *req.mutable_retention() = Dur(7 * 24 * 3600);
  EXPECT_TRUE(ValidateEnqueue(req, Limits(), kNow).ok());
  *req.mutable_retention() = Dur(-1);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "retention", "negative");
  *req.mutable_retention() = Dur(315576000000LL);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow), "retention", "exceeds");
}

TEST(ValidateTest, EnqueueFieldPrefixIsPrepended) {
  v1::EnqueueRequest req = ValidEnqueue();
  req.set_max_attempts(5000);
  EXPECT_INVALID(ValidateEnqueue(req, Limits(), kNow, "jobs[7]."), "jobs[7].max_attempts");
}

// ---------------------------------------------------------------------------
// EnqueueBatch.

TEST(ValidateTest, ValidBatchPasses) {
  v1::EnqueueBatchRequest batch;
  for (int i = 0; i < 3; ++i) *batch.add_jobs() = ValidEnqueue();
  EXPECT_TRUE(ValidateEnqueueBatch(batch, Limits(), kNow).ok());
}

TEST(ValidateTest, BatchEmptyIsRejected) {
  v1::EnqueueBatchRequest batch;
  EXPECT_INVALID(ValidateEnqueueBatch(batch, Limits(), kNow), "jobs", "empty");
}

TEST(ValidateTest, BatchOverLimitIsRejectedWithLimit) {
  Limits limits;
  limits.max_batch = 2;
  v1::EnqueueBatchRequest batch;
  for (int i = 0; i < 2; ++i) *batch.add_jobs() = ValidEnqueue();
  EXPECT_TRUE(ValidateEnqueueBatch(batch, limits, kNow).ok());
  *batch.add_jobs() = ValidEnqueue();
  EXPECT_INVALID(ValidateEnqueueBatch(batch, limits, kNow), "jobs", "3", "2", "--max-batch");
}

TEST(ValidateTest, BatchErrorNamesTheJobIndex) {
  v1::EnqueueBatchRequest batch;
  for (int i = 0; i < 4; ++i) *batch.add_jobs() = ValidEnqueue();
  batch.mutable_jobs(2)->set_queue("no spaces allowed");
  EXPECT_INVALID(ValidateEnqueueBatch(batch, Limits(), kNow), "jobs[2].queue");
  batch.mutable_jobs(2)->set_queue("ok");
  batch.mutable_jobs(3)->set_payload(std::string((1 << 20) + 1, 'p'));
  EXPECT_INVALID(ValidateEnqueueBatch(batch, Limits(), kNow), "jobs[3].payload");
}

TEST(ValidateTest, BatchUnknownDurabilityIsRejected) {
  v1::EnqueueBatchRequest batch;
  *batch.add_jobs() = ValidEnqueue();
  batch.set_durability(static_cast<v1::Durability>(9));
  EXPECT_INVALID(ValidateEnqueueBatch(batch, Limits(), kNow), "durability");
}

// ---------------------------------------------------------------------------
// Lease.

v1::LeaseRequest ValidLease() {
  v1::LeaseRequest req;
  req.add_queues("a");
  req.add_queues("b");
  req.set_max_jobs(10);
  *req.mutable_wait() = Dur(30);
  *req.mutable_lease_duration() = Dur(60);
  req.set_worker_id("w1");
  return req;
}

TEST(ValidateTest, ValidLeasePasses) {
  EXPECT_TRUE(ValidateLease(ValidLease()).ok());
  v1::LeaseRequest minimal;
  minimal.add_queues("a");
  EXPECT_TRUE(ValidateLease(minimal).ok());
}

TEST(ValidateTest, LeaseWithoutQueuesIsRejected) {
  v1::LeaseRequest req = ValidLease();
  req.clear_queues();
  EXPECT_INVALID(ValidateLease(req), "queues", "empty");
}

TEST(ValidateTest, LeaseWithTooManyQueuesIsRejected) {
  v1::LeaseRequest req;
  for (int i = 0; i < 65; ++i) req.add_queues("q" + std::to_string(i));
  EXPECT_INVALID(ValidateLease(req), "queues", "64");
}

TEST(ValidateTest, LeaseBadQueueNameNamesTheIndex) {
  v1::LeaseRequest req = ValidLease();
  req.add_queues("");
  EXPECT_INVALID(ValidateLease(req), "queues[2]");
}

TEST(ValidateTest, LeaseMaxJobsOverLimitIsRejected) {
  v1::LeaseRequest req = ValidLease();
  req.set_max_jobs(kMaxLeaseJobs);
  EXPECT_TRUE(ValidateLease(req).ok());
  req.set_max_jobs(kMaxLeaseJobs + 1);
  EXPECT_INVALID(ValidateLease(req), "max_jobs", "1001", "1000");
}

TEST(ValidateTest, LeaseWaitOverFiveMinutesIsRejected) {
  v1::LeaseRequest req = ValidLease();
  *req.mutable_wait() = Dur(300);
  EXPECT_TRUE(ValidateLease(req).ok());
  *req.mutable_wait() = Dur(300, 1000);
  EXPECT_INVALID(ValidateLease(req), "wait", "5m");
  *req.mutable_wait() = Dur(-1);
  EXPECT_INVALID(ValidateLease(req), "wait", "negative");
}

TEST(ValidateTest, LeaseDurationUnderOneSecondIsRejected) {
  v1::LeaseRequest req = ValidLease();
  *req.mutable_lease_duration() = Dur(0, 999000000);
  EXPECT_INVALID(ValidateLease(req), "lease_duration", "at least 1s");
  *req.mutable_lease_duration() = Dur(24 * 3600 + 1);
  EXPECT_INVALID(ValidateLease(req), "lease_duration", "24h");
}

TEST(ValidateTest, LeaseWorkerIdOverLimitIsRejected) {
  v1::LeaseRequest req = ValidLease();
  req.set_worker_id(std::string(kMaxKeyLength + 1, 'w'));
  EXPECT_INVALID(ValidateLease(req), "worker_id");
}

// ---------------------------------------------------------------------------
// Complete, Fail, Extend.

TEST(ValidateTest, ValidCompleteFailExtendPass) {
  v1::CompleteRequest c;
  c.set_job_id(kJobId);
  c.set_lease_token(7);
  c.set_result("ok");
  EXPECT_TRUE(ValidateComplete(c, Limits()).ok());

  v1::FailRequest f;
  f.set_job_id(kJobId);
  f.set_lease_token(7);
  f.set_error("boom");
  *f.mutable_retry_after() = Dur(30);
  EXPECT_TRUE(ValidateFail(f, Limits()).ok());

  v1::ExtendRequest e;
  e.set_job_id(kJobId);
  e.set_lease_token(7);
  *e.mutable_extend_by() = Dur(30);
  e.mutable_progress()->set_fraction(0.5);
  e.mutable_progress()->set_message("halfway");
  EXPECT_TRUE(ValidateExtend(e).ok());
  e.mutable_progress()->set_fraction(1.0);
  EXPECT_TRUE(ValidateExtend(e).ok());
  e.clear_extend_by();  // the job's lease duration
  EXPECT_TRUE(ValidateExtend(e).ok());
}

TEST(ValidateTest, CompleteRejectsBadJobIdZeroTokenAndLargeResult) {
  Limits limits;
  limits.max_result_bytes = 4;
  v1::CompleteRequest c;
  c.set_job_id("not-an-id");
  c.set_lease_token(7);
  EXPECT_INVALID(ValidateComplete(c, limits), "job_id");
  c.set_job_id(kJobId);
  c.set_lease_token(0);
  EXPECT_INVALID(ValidateComplete(c, limits), "lease_token");
  c.set_lease_token(7);
  c.set_result("12345");
  EXPECT_INVALID(ValidateComplete(c, limits), "result", "5", "4", "--max-result-bytes");
}

TEST(ValidateTest, FailRejectsBadJobIdZeroTokenLargeErrorAndBadRetryAfter) {
  Limits limits;
  limits.max_error_bytes = 4;
  v1::FailRequest f;
  f.set_lease_token(7);
  EXPECT_INVALID(ValidateFail(f, limits), "job_id", "required");
  f.set_job_id("0000000000000000");
  EXPECT_INVALID(ValidateFail(f, limits), "job_id");
  f.set_job_id(kJobId);
  f.set_lease_token(0);
  EXPECT_INVALID(ValidateFail(f, limits), "lease_token");
  f.set_lease_token(7);
  f.set_error("12345");
  EXPECT_INVALID(ValidateFail(f, limits), "error", "5", "4");
  f.set_error("x");
  *f.mutable_retry_after() = Dur(-1);
  EXPECT_INVALID(ValidateFail(f, limits), "retry_after", "negative");
  *f.mutable_retry_after() = Dur(315576000000LL);
  EXPECT_INVALID(ValidateFail(f, limits), "retry_after", "exceeds");
}

TEST(ValidateTest, ExtendRejectsBadJobIdZeroTokenAndBadProgress) {
  v1::ExtendRequest e;
  e.set_job_id("0123456789abcdeg");
  e.set_lease_token(7);
  EXPECT_INVALID(ValidateExtend(e), "job_id");
  e.set_job_id(kJobId);
  e.set_lease_token(0);
  EXPECT_INVALID(ValidateExtend(e), "lease_token");
  e.set_lease_token(7);
  for (double bad : {-0.01, 1.01, std::nan(""), std::numeric_limits<double>::infinity()}) {
    e.mutable_progress()->set_fraction(bad);
    EXPECT_INVALID(ValidateExtend(e), "progress.fraction", "[0, 1]");
  }
  e.mutable_progress()->set_fraction(0.1);
  e.mutable_progress()->set_message(std::string(4097, 'm'));
  EXPECT_INVALID(ValidateExtend(e), "progress.message", "4096");
}

TEST(ValidateTest, ExtendByBoundsAreChecked) {
  v1::ExtendRequest e;
  e.set_job_id(kJobId);
  e.set_lease_token(7);
  *e.mutable_extend_by() = Dur(0, 500000000);
  EXPECT_INVALID(ValidateExtend(e), "extend_by", "at least 1s");
  *e.mutable_extend_by() = Dur(25 * 3600);
  EXPECT_INVALID(ValidateExtend(e), "extend_by", "24h");
  *e.mutable_extend_by() = Dur(-10);
  EXPECT_INVALID(ValidateExtend(e), "extend_by", "negative");
  *e.mutable_extend_by() = Dur(315576000000LL);
  EXPECT_INVALID(ValidateExtend(e), "extend_by", "exceeds");
}

// ---------------------------------------------------------------------------
// Cancel, listing, redrive.

TEST(ValidateTest, CancelChecksJobIdAndReasonLength) {
  v1::CancelJobRequest req;
  req.set_job_id(kJobId);
  req.set_reason(std::string(kMaxReasonBytes, 'r'));
  EXPECT_TRUE(ValidateCancel(req).ok());
  req.set_reason(std::string(kMaxReasonBytes + 1, 'r'));
  EXPECT_INVALID(ValidateCancel(req), "reason", "4097", "4096");
  req.set_reason("");
  req.set_job_id("nope");
  EXPECT_INVALID(ValidateCancel(req), "job_id");
  req.clear_job_id();
  EXPECT_INVALID(ValidateCancel(req), "job_id", "required");
}

TEST(ValidateTest, PageSizeDefaultsAndIsCapped) {
  EXPECT_EQ(ParsePageSize(0, "page_size").value(), kDefaultPageSize);
  EXPECT_EQ(ParsePageSize(1, "page_size").value(), 1u);
  EXPECT_EQ(ParsePageSize(kMaxPageSize, "page_size").value(), kMaxPageSize);
  EXPECT_INVALID(ParsePageSize(kMaxPageSize + 1, "page_size").status(), "page_size", "1001",
                 "1000");
}

TEST(ValidateTest, PageTokensRoundTrip) {
  EXPECT_EQ(MakePageToken(0), "");
  EXPECT_EQ(ParsePageToken("", "page_token").value(), 0u);
  for (uint64_t after : {uint64_t{1}, uint64_t{0x0000018bcfe56800ULL}, ~uint64_t{0}}) {
    EXPECT_EQ(ParsePageToken(MakePageToken(after), "page_token").value(), after);
  }
  EXPECT_INVALID(ParsePageToken("garbage", "page_token").status(), "page_token");
  EXPECT_INVALID(ParsePageToken("0000000000000000", "page_token").status(), "page_token");
}

TEST(ValidateTest, ListJobsChecksEveryField) {
  v1::ListJobsRequest req;
  req.set_queue("q");
  req.set_state(v1::JOB_STATE_DEAD);
  req.set_order(v1::SORT_ORDER_NEWEST_FIRST);
  req.set_page_size(50);
  req.set_page_token(MakePageToken(42));
  EXPECT_TRUE(ValidateListJobs(req).ok());

  v1::ListJobsRequest bad = req;
  bad.clear_queue();
  EXPECT_INVALID(ValidateListJobs(bad), "queue", "required");
  bad = req;
  bad.set_state(static_cast<v1::JobState>(77));
  EXPECT_INVALID(ValidateListJobs(bad), "state", "77");
  bad = req;
  bad.set_order(static_cast<v1::SortOrder>(9));
  EXPECT_INVALID(ValidateListJobs(bad), "order", "9");
  bad = req;
  bad.set_page_size(kMaxPageSize + 1);
  EXPECT_INVALID(ValidateListJobs(bad), "page_size");
  bad = req;
  bad.set_page_token("not-a-token");
  EXPECT_INVALID(ValidateListJobs(bad), "page_token");
}

TEST(ValidateTest, RedriveNeedsAQueueOrIds) {
  v1::RedriveJobsRequest req;
  EXPECT_INVALID(ValidateRedrive(req), "queue", "job_ids", "required");
  req.set_queue("dead-letters");
  EXPECT_TRUE(ValidateRedrive(req).ok());
  req.clear_queue();
  req.add_job_ids(kJobId);
  EXPECT_TRUE(ValidateRedrive(req).ok());
}

TEST(ValidateTest, RedriveChecksQueueAndEachId) {
  v1::RedriveJobsRequest req;
  req.set_queue("bad queue");
  EXPECT_INVALID(ValidateRedrive(req), "queue");
  req.set_queue("q");
  req.add_job_ids(kJobId);
  req.add_job_ids("zzz");
  EXPECT_INVALID(ValidateRedrive(req), "job_ids[1]", "zzz");
  req.clear_job_ids();
  for (int i = 0; i < 10001; ++i) req.add_job_ids(kJobId);
  EXPECT_INVALID(ValidateRedrive(req), "job_ids", "10001", "10000");
}

TEST(ValidateTest, InvalidUtf8AndControlBytesAreShownEscaped) {
  absl::Status s = ValidateQueueName(std::string("q\xff\x01", 3), "queue");
  EXPECT_INVALID(s, "queue \"q\\xff\\x01\"", "outside [A-Za-z0-9._:/-]");
  auto id = ParseJobIdField(std::string("\xc3\x28", 2), "job_id");
  EXPECT_INVALID(id.status(), "job_id \"\\xc3(\"", "not a job id");
}

TEST(ValidateTest, HelloChecksQueuesWorkerIdAndLease) {
  v1::ConnectHello h;
  EXPECT_INVALID(ValidateHello(h), "hello.queues is empty");
  h.add_queues("ok");
  EXPECT_TRUE(ValidateHello(h).ok());
  h.add_queues("bad name");
  EXPECT_INVALID(ValidateHello(h), "hello.queues[1]");
  h.mutable_queues()->RemoveLast();
  for (int i = 0; i < 64; ++i) h.add_queues("q");
  EXPECT_INVALID(ValidateHello(h), "hello.queues has more than 64 entries");
  h.clear_queues();
  h.add_queues("q");
  h.set_worker_id(std::string(300, 'w'));
  EXPECT_INVALID(ValidateHello(h), "hello.worker_id");
  h.clear_worker_id();
  *h.mutable_lease_duration() = Dur(0, 1000);
  EXPECT_INVALID(ValidateHello(h), "hello.lease_duration");
}

TEST(ValidateTest, SubscribeChecksFiltersAndStart) {
  v1::SubscribeRequest r;
  EXPECT_TRUE(ValidateSubscribe(r).ok());
  r.add_queues("q");
  r.add_topics("t");
  r.add_job_ids(kJobId);
  r.add_types(v1::EVENT_TYPE_SUCCEEDED);
  EXPECT_TRUE(ValidateSubscribe(r).ok());
  r.mutable_types()->Add(999);
  EXPECT_INVALID(ValidateSubscribe(r), "unknown event type 999");
  r.mutable_types()->RemoveLast();
  r.add_job_ids("nope");
  EXPECT_INVALID(ValidateSubscribe(r), "job_ids[1]");
  r.mutable_job_ids()->RemoveLast();
  r.add_topics(std::string("t\xff", 2));
  EXPECT_INVALID(ValidateSubscribe(r), "topics[1]", "t\\xff");
  r.mutable_topics()->RemoveLast();
  r.set_from_oldest(true);
  r.set_after_seq(3);
  EXPECT_INVALID(ValidateSubscribe(r), "mutually exclusive");
  v1::SubscribeRequest many;
  for (int i = 0; i < 1025; ++i) many.add_queues("q");
  EXPECT_INVALID(ValidateSubscribe(many), "more than 1024 filter entries");
}

TEST(ValidateTest, PublishChecksTopicSizesAndDurability) {
  Limits limits;
  limits.max_payload_bytes = 10;
  limits.max_headers_bytes = 4;
  v1::PublishRequest r;
  EXPECT_INVALID(ValidatePublish(r, limits), "topic is required");
  r.set_topic("news");
  EXPECT_TRUE(ValidatePublish(r, limits).ok());
  r.set_payload(std::string(11, 'x'));
  EXPECT_INVALID(ValidatePublish(r, limits), "payload is 11 bytes", "--max-payload-bytes");
  r.clear_payload();
  (*r.mutable_headers())["key"] = "vv";
  EXPECT_INVALID(ValidatePublish(r, limits), "headers total 5 bytes", "--max-headers-bytes");
  r.clear_headers();
  r.set_durability(static_cast<v1::Durability>(42));
  EXPECT_INVALID(ValidatePublish(r, limits), "durability");
}

}  // namespace
}  // namespace errand::service
