// End to end: fencing tokens and job ids on Complete, Fail and Extend.

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

class FencingE2E : public BrokerTest {};

TEST_F(FencingE2E, WrongTokenIsRejectedAndChangesNothing) {
  const std::string id = client().MustEnqueue(NewJob("fence", "x"));
  v1::Lease lease = client().MustLeaseOne("fence", 0ms, "owner");
  ASSERT_EQ(lease.job().id(), id);
  const uint64_t wrong = lease.lease_token() + 1;
  const v1::Job before = client().MustGetJob(id);

  grpc::Status s = client().Complete(id, wrong, "stolen");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);
  EXPECT_NE(s.error_message().find("lease_token"), std::string::npos) << s.error_message();

  v1::FailRequest fail;
  fail.set_job_id(id);
  fail.set_lease_token(wrong);
  fail.set_error("nope");
  fail.set_non_retryable(true);
  s = client().Fail(fail);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);

  v1::ExtendRequest ext;
  ext.set_job_id(id);
  ext.set_lease_token(wrong);
  *ext.mutable_extend_by() = Dur(10h);
  ext.mutable_progress()->set_message("hijacked");
  v1::ExtendResponse ext_resp;
  s = client().Extend(ext, &ext_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);

  v1::Job after = client().MustGetJob(id);
  EXPECT_EQ(after.state(), v1::JOB_STATE_LEASED);
  EXPECT_EQ(after.attempts(), 1u);
  EXPECT_EQ(after.result(), "");
  EXPECT_EQ(after.error(), "");
  EXPECT_FALSE(after.has_progress());
  EXPECT_EQ(Time(after.lease_deadline()), Time(before.lease_deadline()));
  EXPECT_EQ(Time(after.updated_at()), Time(before.updated_at()));
  ASSERT_EQ(after.history_size(), 1);
  EXPECT_EQ(after.history(0).outcome(), v1::ATTEMPT_OUTCOME_RUNNING);

  // The right token still works, once.
  s = client().Complete(id, lease.lease_token(), "mine");
  ASSERT_TRUE(s.ok()) << Show(s);
  s = client().Complete(id, lease.lease_token(), "again");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);
  s = client().Fail(id, lease.lease_token(), "too late");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);
  s = client().Extend(id, lease.lease_token(), &ext_resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);
  v1::Job done = client().MustGetJob(id);
  EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(done.result(), "mine");
  EXPECT_EQ(done.error(), "");
}

TEST_F(FencingE2E, OutcomeForAJobThatIsNotLeasedIsFailedPrecondition) {
  const std::string id = client().MustEnqueue(NewJob("fence-ready"));
  grpc::Status s = client().Complete(id, 1, "r");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);
  s = client().Fail(id, 1, "e");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);
  v1::ExtendResponse ext;
  s = client().Extend(id, 1, &ext);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);
  v1::Job job = client().MustGetJob(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_READY);
  EXPECT_EQ(job.attempts(), 0u);
  // Still deliverable.
  EXPECT_EQ(client().MustLeaseOne("fence-ready").job().id(), id);
}

TEST_F(FencingE2E, UnknownJobIdIsNotFound) {
  const std::string unknown = "00000000000000ff";
  v1::Job job;
  grpc::Status s = client().GetJob(unknown, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << Show(s);
  EXPECT_NE(s.error_message().find(unknown), std::string::npos) << s.error_message();
  s = client().Complete(unknown, 7, "r");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << Show(s);
  s = client().Fail(unknown, 7, "e");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << Show(s);
  v1::ExtendResponse ext;
  s = client().Extend(unknown, 7, &ext);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << Show(s);
}

TEST_F(FencingE2E, MalformedJobIdIsInvalidArgumentNamingTheField) {
  for (const std::string bad :
       {"", "xyz", "123", "00000000000000f", "00000000000000fff", "000000000000000g",
        "0000000000000000", "-000000000000001"}) {
    SCOPED_TRACE("job_id \"" + bad + "\"");
    v1::Job job;
    grpc::Status s = client().GetJob(bad, &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
    EXPECT_NE(s.error_message().find("job_id"), std::string::npos) << s.error_message();
    s = client().Complete(bad, 7, "r");
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
    EXPECT_NE(s.error_message().find("job_id"), std::string::npos) << s.error_message();
    s = client().Fail(bad, 7, "e");
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
    v1::ExtendResponse ext;
    s = client().Extend(bad, 7, &ext);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
  }
}

TEST_F(FencingE2E, MissingLeaseTokenIsInvalidArgument) {
  const std::string id = client().MustEnqueue(NewJob("fence-zero"));
  v1::Lease lease = client().MustLeaseOne("fence-zero");
  ASSERT_EQ(lease.job().id(), id);
  grpc::Status s = client().Complete(id, 0, "r");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
  EXPECT_NE(s.error_message().find("lease_token"), std::string::npos) << s.error_message();
  s = client().Fail(id, 0, "e");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
  v1::ExtendResponse ext;
  s = client().Extend(id, 0, &ext);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
  EXPECT_EQ(client().MustGetJob(id).state(), v1::JOB_STATE_LEASED);
}

}  // namespace
}  // namespace errand::e2e
