// End to end: hostile input against the real broker. Malformed and deeply
// nested protobufs sent as raw bytes, oversized messages, invalid UTF-8 in
// names, huge headers and batches of very many tiny jobs each get a clear
// status whose message names the problem, and afterwards the broker still
// serves: health, enqueue, get.


#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

using testing::WireField;
using testing::WireVarint;

// Raw bytes on the wire: the test binary's own protobuf never sees them.
grpc::Status RawUnary(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                      const std::string& bytes, std::string* answer = nullptr) {
  return testing::RawUnaryCall(channel, method, bytes, Client::kRpcTimeout, answer);
}

// An unknown group field (number 99) nested `depth` levels deep.
std::string NestedGroups(int depth) {
  const std::string start = WireVarint(99 << 3 | 3);
  const std::string end = WireVarint(99 << 3 | 4);
  std::string out;
  for (int i = 0; i < depth; ++i) out += start;
  for (int i = 0; i < depth; ++i) out += end;
  return out;
}

::testing::AssertionResult Invalid(const grpc::Status& s, const std::vector<std::string>& parts) {
  if (s.error_code() != grpc::StatusCode::INVALID_ARGUMENT) {
    return ::testing::AssertionFailure() << "expected INVALID_ARGUMENT, got " << Show(s);
  }
  for (const auto& p : parts) {
    if (s.error_message().find(p) == std::string::npos) {
      return ::testing::AssertionFailure() << "message lacks \"" << p << "\": " << Show(s);
    }
  }
  return ::testing::AssertionSuccess();
}

class Hostile : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override {
    return {"--max-message-bytes=1048576", "--max-payload-bytes=65536", "--max-batch=100",
            "--max-headers-bytes=4096"};
  }

};

TEST_F(Hostile, MalformedProtobufGetsInvalidArgumentNamingTheMessage) {
  auto ch = broker_->Channel();
  // A length that runs past the end of the message.
  EXPECT_TRUE(Invalid(RawUnary(ch, "/errand.v1.Jobs/Enqueue", "\x0a\x10" "emai"),
                      {"not a valid errand.v1.EnqueueRequest"}));
  // A varint that never ends.
  EXPECT_TRUE(Invalid(RawUnary(ch, "/errand.v1.Jobs/GetJob", std::string(12, '\xff')),
                      {"not a valid errand.v1.GetJobRequest"}));
  // A field with wire type 7 (there is none).
  EXPECT_TRUE(Invalid(RawUnary(ch, "/errand.v1.Workers/Lease", "\x0f\x01"),
                      {"not a valid errand.v1.LeaseRequest"}));
  // An end-group tag with no start.
  EXPECT_TRUE(Invalid(RawUnary(ch, "/errand.v1.Admin/PauseQueue", WireVarint(5 << 3 | 4)),
                      {"not a valid errand.v1.PauseQueueRequest"}));
  // Well-formed bytes of the wrong shape are checked as the message they
  // parse as: here no queue.
  EXPECT_TRUE(Invalid(RawUnary(ch, "/errand.v1.Jobs/Enqueue", WireField(4, "payload only")),
                      {"queue is required"}));
  ExpectHealthy();
}

TEST_F(Hostile, DeeplyNestedProtobufIsRefusedShallowNestingIsIgnored) {
  auto ch = broker_->Channel();
  const std::string job = WireField(1, "hostile.nest") + WireField(4, "p");
  // Unknown fields nested 50 deep are within protobuf's limit: skipped.
  std::string answer;
  grpc::Status s = RawUnary(ch, "/errand.v1.Jobs/Enqueue", job + NestedGroups(50), &answer);
  EXPECT_TRUE(s.ok()) << Show(s);
  v1::EnqueueResponse resp;
  ASSERT_TRUE(resp.ParseFromString(answer));
  EXPECT_FALSE(resp.job_id().empty());
  // 100,000 deep is refused before it can exhaust the stack.
  s = RawUnary(ch, "/errand.v1.Jobs/Enqueue", job + NestedGroups(100000));
  EXPECT_TRUE(Invalid(s, {"not a valid errand.v1.EnqueueRequest", "nesting"}));
  // Inside a batch's repeated message field as well.
  s = RawUnary(ch, "/errand.v1.Jobs/EnqueueBatch", WireField(1, job + NestedGroups(1000)));
  EXPECT_TRUE(Invalid(s, {"not a valid errand.v1.EnqueueBatchRequest"}));
  EXPECT_EQ(client().Stats("hostile.nest").ready(), 1u);
  ExpectHealthy();
}

TEST_F(Hostile, OversizedMessageGetsResourceExhaustedOversizedPayloadInvalidArgument) {
  v1::EnqueueResponse resp;
  // Over --max-message-bytes: refused by gRPC before it is read.
  grpc::Status s = client().Enqueue(NewJob("hostile.big", std::string(1536 << 10, 'x')), &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Show(s);
  EXPECT_NE(s.error_message().find("larger than max"), std::string::npos) << Show(s);
  // Under it but over --max-payload-bytes: refused by validation.
  s = client().Enqueue(NewJob("hostile.big", std::string(100 << 10, 'x')), &resp);
  EXPECT_TRUE(Invalid(s, {"payload is 102400 bytes", "--max-payload-bytes"}));
  EXPECT_EQ(TotalJobs(client().Stats("hostile.big")), 0u);
  ExpectHealthy();
}

TEST_F(Hostile, InvalidUtf8InNamesIsRefused) {
  auto ch = broker_->Channel();
  const std::string bad = "emails\xff\xfe";
  // Invalid UTF-8 in a proto3 string field fails to parse.
  EXPECT_TRUE(Invalid(RawUnary(ch, "/errand.v1.Jobs/Enqueue", WireField(1, bad)),
                      {"not a valid errand.v1.EnqueueRequest", "UTF-8"}));
  EXPECT_TRUE(Invalid(RawUnary(ch, "/errand.v1.Events/Publish", WireField(1, bad)),
                      {"not a valid errand.v1.PublishRequest", "UTF-8"}));
  EXPECT_TRUE(Invalid(RawUnary(ch, "/errand.v1.Jobs/GetJob", WireField(1, "\xc3\x28")),
                      {"not a valid errand.v1.GetJobRequest"}));
  // Valid UTF-8 outside the allowed characters: named, and shown escaped.
  v1::EnqueueResponse resp;
  grpc::Status s = client().Enqueue(NewJob("caf\xc3\xa9"), &resp);
  EXPECT_TRUE(Invalid(s, {"queue \"caf\\xc3\\xa9\"", "outside [A-Za-z0-9._:/-]"}));
  // A control character in a job id.
  v1::Job job;
  s = client().GetJob(std::string("0123\x01", 5), &job);
  EXPECT_TRUE(Invalid(s, {"job_id \"0123\\x01\"", "not a job id"}));
  ExpectHealthy();
}

TEST_F(Hostile, HugeHeadersAreRefused) {
  // Job headers over --max-headers-bytes.
  v1::EnqueueRequest req = NewJob("hostile.headers");
  for (int i = 0; i < 100; ++i) (*req.mutable_headers())["h" + std::to_string(i)] = std::string(100, 'v');
  v1::EnqueueResponse resp;
  grpc::Status s = client().Enqueue(req, &resp);
  EXPECT_TRUE(Invalid(s, {"headers total", "--max-headers-bytes"}));
  // Topic message headers too.
  grpc::ClientContext pctx;
  pctx.set_deadline(testing::In(Client::kRpcTimeout));
  v1::PublishRequest pub;
  pub.set_topic("hostile.t");
  (*pub.mutable_headers())["big"] = std::string(5000, 'v');
  v1::PublishResponse presp;
  s = client().events->Publish(&pctx, pub, &presp);
  EXPECT_TRUE(Invalid(s, {"headers total", "--max-headers-bytes"}));
  // gRPC metadata far over HTTP/2's header list limit: refused by gRPC
  // without reaching the service. On a connection of its own: gRPC may close
  // the connection that carried it, which would fail the next calls on a
  // shared one ("Socket closed").
  {
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);
    Client junk(grpc::CreateCustomChannel(broker_->address(), grpc::InsecureChannelCredentials(),
                                          args));
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(Client::kRpcTimeout));
    ctx.AddMetadata("x-junk", std::string(64 << 10, 'm'));
    v1::Job job;
    v1::GetJobRequest get;
    get.set_job_id("0000000000000001");
    v1::GetJobResponse gresp;
    s = junk.jobs->GetJob(&ctx, get, &gresp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Show(s);
    EXPECT_NE(s.error_message().find("metadata size exceeds limit"), std::string::npos) << Show(s);
  }
  EXPECT_EQ(TotalJobs(client().Stats("hostile.headers")), 0u);
  ExpectHealthy();
}

TEST_F(Hostile, BatchOfManyTinyJobsBeyondMaxBatchIsRefused) {
  v1::EnqueueBatchRequest batch;
  for (int i = 0; i < 101; ++i) *batch.add_jobs() = NewJob("hostile.batch");
  v1::EnqueueBatchResponse resp;
  grpc::Status s = client().EnqueueBatch(batch, &resp);
  EXPECT_TRUE(Invalid(s, {"jobs has 101 entries", "the limit is 100", "--max-batch"}));
  // Far more (600,000 jobs of 2 bytes each) than one message may hold.
  std::string many;
  for (int i = 0; i < 600000; ++i) many += WireField(1, "");
  s = RawUnary(broker_->Channel(), "/errand.v1.Jobs/EnqueueBatch", many);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Show(s);
  EXPECT_EQ(TotalJobs(client().Stats("hostile.batch")), 0u);
  ExpectHealthy();
}

// The default limits: a million tiny jobs fit in one 64 MiB message and are
// parsed; --max-batch refuses them, and the broker is none the worse.
class HostileDefaults : public BrokerTest {};

TEST_F(HostileDefaults, MillionTinyJobsInOneBatchAreRefusedByMaxBatch) {
  std::string many;
  const std::string job = WireField(1, "q");
  many.reserve(job.size() * 1'000'000 + 8);
  for (int i = 0; i < 1'000'000; ++i) many += WireField(1, job);
  grpc::Status s = RawUnary(broker_->Channel(), "/errand.v1.Jobs/EnqueueBatch", many);
  EXPECT_TRUE(Invalid(s, {"jobs has 1000000 entries", "the limit is 1000", "--max-batch"}));
  EXPECT_EQ(TotalJobs(client().Stats("q")), 0u);
  int health = 0;
  EXPECT_TRUE(testing::HealthCheck(broker_->Channel(), "", &health).ok());
  EXPECT_EQ(health, 1);
  EXPECT_FALSE(client().MustEnqueue(NewJob("q")).empty());
}

}  // namespace
}  // namespace errand::e2e
