// End to end: Jobs.EnqueueStream, the producer fast path. Many requests on
// one stream (some packed with `more`), each answered exactly once, bad ones
// with error_code set while the stream goes on; half-close ends with OK after
// the last answer; concurrent requests share fsyncs (group commit).

#include <map>
#include <set>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

class StreamsE2EEnqueue : public BrokerTest {};

using EnqueueStreamRw =
    grpc::ClientReaderWriter<v1::EnqueueStreamRequest, v1::EnqueueStreamResponse>;

// Reads every answer until the stream ends, flattening `more`.
std::vector<v1::EnqueueStreamResponse> ReadAll(EnqueueStreamRw* stream, size_t* messages) {
  std::vector<v1::EnqueueStreamResponse> out;
  v1::EnqueueStreamResponse m;
  *messages = 0;
  while (stream->Read(&m)) {
    ++*messages;
    for (const auto& more : m.more()) {
      EXPECT_EQ(more.more_size(), 0);
      out.push_back(more);
    }
    m.clear_more();
    out.push_back(m);
  }
  return out;
}

TEST_F(StreamsE2EEnqueue, ThousandsOfRequestsEachAnsweredOnceAndFsyncsShared) {
  constexpr uint64_t kRequests = 2000;
  const std::string q = "stream-q";
  const v1::GetServerInfoResponse info0 = client().ServerInfo();

  // Requests 1..2000; every 101st is invalid (no queue); packed 1 to 7 per
  // message. Plus one message whose packed request carries its own `more`.
  std::vector<v1::EnqueueStreamRequest> msgs;
  std::set<uint64_t> invalid;
  uint64_t next = 1;
  for (int m = 0; next <= kRequests; ++m) {
    v1::EnqueueStreamRequest msg;
    const int k = m % 7 + 1;
    for (int i = 0; i < k && next <= kRequests; ++i, ++next) {
      v1::EnqueueStreamRequest* r = i == 0 ? &msg : msg.add_more();
      r->set_request_id(next);
      *r->mutable_job() = NewJob(next % 101 == 0 ? "" : q, "p" + std::to_string(next));
      if (next % 101 == 0) invalid.insert(next);
    }
    msgs.push_back(std::move(msg));
  }
  {
    v1::EnqueueStreamRequest msg;
    msg.set_request_id(5000);
    *msg.mutable_job() = NewJob(q, "outer");
    auto* inner = msg.add_more();
    inner->set_request_id(5001);
    *inner->mutable_job() = NewJob(q, "nested");
    auto* too_deep = inner->add_more();
    too_deep->set_request_id(5002);
    *too_deep->mutable_job() = NewJob(q, "too deep");
    msgs.push_back(std::move(msg));
  }

  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(60s));
  auto stream = client().jobs->EnqueueStream(&ctx);
  // Write everything without waiting for answers; half-close at the end.
  std::thread writer([&] {
    for (const auto& m : msgs) {
      if (!stream->Write(m)) return;
    }
    stream->WritesDone();
  });
  size_t messages = 0;
  std::vector<v1::EnqueueStreamResponse> answers = ReadAll(stream.get(), &messages);
  writer.join();
  grpc::Status s = stream->Finish();
  ASSERT_TRUE(s.ok()) << Show(s);

  std::map<uint64_t, int> times;
  std::set<std::string> job_ids;
  size_t ok = 0;
  for (const auto& a : answers) {
    times[a.request_id()]++;
    if (a.request_id() == 5002) continue;  // inside a rejected request
    const bool bad = invalid.count(a.request_id()) > 0 || a.request_id() == 5001;
    if (bad) {
      EXPECT_EQ(a.error_code(), 3) << a.DebugString();  // INVALID_ARGUMENT
      EXPECT_FALSE(a.error_message().empty());
      EXPECT_FALSE(a.has_result());
      if (a.request_id() != 5001) {
        EXPECT_NE(a.error_message().find("job.queue"), std::string::npos) << a.error_message();
      }
    } else {
      EXPECT_EQ(a.error_code(), 0) << a.DebugString();
      EXPECT_EQ(a.result().job_id().size(), 16u) << a.DebugString();
      EXPECT_EQ(a.result().durability(), v1::DURABILITY_SYNC);
      EXPECT_GT(a.result().commit_seq(), 0u);
      job_ids.insert(a.result().job_id());
      ++ok;
    }
  }
  for (uint64_t id = 1; id <= kRequests; ++id) {
    EXPECT_EQ(times[id], 1) << "request_id " << id << " answered " << times[id] << " times";
  }
  EXPECT_EQ(times[5000], 1);
  EXPECT_EQ(times[5001], 1);
  EXPECT_LE(times[5002], 1);
  for (const auto& [id, n] : times) {
    EXPECT_TRUE((id >= 1 && id <= kRequests) || (id >= 5000 && id <= 5002)) << "unknown id " << id;
  }
  const size_t want_ok = kRequests - invalid.size() + 1;  // + request 5000
  EXPECT_EQ(ok, want_ok);
  EXPECT_EQ(job_ids.size(), want_ok);
  EXPECT_EQ(client().Stats(q).ready(), want_ok);

  // Group commit: the burst shared fsyncs.
  const v1::GetServerInfoResponse info1 = client().ServerInfo();
  const uint64_t writes = info1.writes() - info0.writes();
  const uint64_t fsyncs = info1.fsyncs() - info0.fsyncs();
  std::cout << "[ enqueue stream ] " << answers.size() << " answers in " << messages
            << " messages; " << writes << " writes, " << fsyncs << " fsyncs\n";
  EXPECT_GE(writes, want_ok);
  EXPECT_LT(fsyncs, writes / 2) << "sync enqueues on one stream did not share fsyncs";
}

TEST_F(StreamsE2EEnqueue, HalfCloseEndsOkOnlyAfterEveryAnswer) {
  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(20s));
  auto stream = client().jobs->EnqueueStream(&ctx);
  v1::EnqueueStreamRequest a;
  a.set_request_id(1);
  *a.mutable_job() = NewJob("half-close");
  for (uint64_t id = 2; id <= 4; ++id) {
    auto* m = a.add_more();
    m->set_request_id(id);
    *m->mutable_job() = NewJob("half-close");
  }
  ASSERT_TRUE(stream->Write(a));
  v1::EnqueueStreamRequest b;
  b.set_request_id(5);
  *b.mutable_job() = NewJob("half-close");
  b.mutable_job()->set_durability(v1::DURABILITY_ASYNC);
  ASSERT_TRUE(stream->Write(b));
  ASSERT_TRUE(stream->WritesDone());
  size_t messages = 0;
  auto answers = ReadAll(stream.get(), &messages);
  grpc::Status s = stream->Finish();
  ASSERT_TRUE(s.ok()) << Show(s);
  std::set<uint64_t> ids;
  for (const auto& ans : answers) {
    EXPECT_EQ(ans.error_code(), 0) << ans.DebugString();
    EXPECT_TRUE(ids.insert(ans.request_id()).second) << "answered twice: " << ans.request_id();
  }
  EXPECT_EQ(ids, (std::set<uint64_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(client().Stats("half-close").ready(), 5u);
}

TEST_F(StreamsE2EEnqueue, BadRequestIsAnsweredAndStreamGoesOn) {
  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(20s));
  auto stream = client().jobs->EnqueueStream(&ctx);
  auto round_trip = [&](uint64_t id, v1::EnqueueRequest job) {
    v1::EnqueueStreamRequest r;
    r.set_request_id(id);
    *r.mutable_job() = std::move(job);
    EXPECT_TRUE(stream->Write(r));
    v1::EnqueueStreamResponse resp;
    EXPECT_TRUE(stream->Read(&resp));
    EXPECT_EQ(resp.more_size(), 0);
    EXPECT_EQ(resp.request_id(), id);
    return resp;
  };
  v1::EnqueueRequest bad = NewJob("bad queue!");
  v1::EnqueueStreamResponse r1 = round_trip(10, bad);
  EXPECT_EQ(r1.error_code(), 3);
  EXPECT_NE(r1.error_message().find("job.queue"), std::string::npos) << r1.error_message();
  v1::EnqueueRequest too_big = NewJob("goes-on", std::string((1 << 20) + 1, 'x'));
  v1::EnqueueStreamResponse r2 = round_trip(11, too_big);
  EXPECT_EQ(r2.error_code(), 3);
  EXPECT_NE(r2.error_message().find("payload"), std::string::npos) << r2.error_message();
  v1::EnqueueRequest async = NewJob("goes-on", "fine");
  async.set_durability(v1::DURABILITY_ASYNC);
  v1::EnqueueStreamResponse r3 = round_trip(12, async);
  EXPECT_EQ(r3.error_code(), 0) << r3.DebugString();
  EXPECT_EQ(r3.result().durability(), v1::DURABILITY_ASYNC);
  v1::EnqueueStreamResponse r4 = round_trip(13, NewJob("goes-on", "fine too"));
  EXPECT_EQ(r4.error_code(), 0) << r4.DebugString();
  EXPECT_EQ(r4.result().durability(), v1::DURABILITY_SYNC);
  EXPECT_GT(r4.result().commit_seq(), r3.result().commit_seq());
  ASSERT_TRUE(stream->WritesDone());
  v1::EnqueueStreamResponse extra;
  EXPECT_FALSE(stream->Read(&extra)) << extra.DebugString();
  grpc::Status s = stream->Finish();
  EXPECT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(client().MustGetJob(r3.result().job_id()).payload(), "fine");
  EXPECT_EQ(client().Stats("goes-on").ready(), 2u);
}

}  // namespace
}  // namespace errand::e2e
