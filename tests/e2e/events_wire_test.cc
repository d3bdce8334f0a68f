// End to end: Events.Subscribe is registered raw and writes each event's one
// shared serialization to every subscriber. The bytes on the wire must be a
// SubscribeResponse exactly as protobuf serializes it, a request that does
// not parse is refused naming its type (as the typed methods are), and
// subscribers with different filters each get exactly their events.

#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/impl/codegen/sync_stream.h>

#include <algorithm>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

class EventsE2EWire : public BrokerTest {};

// Events.Subscribe read as bytes, as a client without the generated code
// sees it.
class RawSubscription {
 public:
  RawSubscription(const std::shared_ptr<grpc::Channel>& channel, const std::string& request)
      : method_("/errand.v1.Events/Subscribe", grpc::internal::RpcMethod::SERVER_STREAMING) {
    ctx_.set_deadline(testing::In(30s));
    grpc::Slice slice(request);
    grpc::ByteBuffer req(&slice, 1);
    reader_.reset(grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(
        channel.get(), method_, &ctx_, req));
  }
  ~RawSubscription() {
    if (finished_) return;
    ctx_.TryCancel();
    grpc::ByteBuffer b;
    while (reader_->Read(&b)) {
    }
    reader_->Finish();
  }

  // The next message's bytes; false at the end of the stream.
  bool Read(std::string* bytes) {
    grpc::ByteBuffer b;
    if (!reader_->Read(&b)) return false;
    std::vector<grpc::Slice> slices;
    EXPECT_TRUE(b.Dump(&slices).ok());
    bytes->clear();
    for (const auto& s : slices) bytes->append(reinterpret_cast<const char*>(s.begin()), s.size());
    return true;
  }
  // Once Read returned false.
  grpc::Status Finish() {
    finished_ = true;
    return reader_->Finish();
  }

 private:
  bool finished_ = false;
  grpc::internal::RpcMethod method_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader_;
};

TEST_F(EventsE2EWire, WireBytesAreTheSubscribeResponseAsProtobufSerializesIt) {
  const std::string q = "wire.q";
  const uint64_t head = HeadSeq(client());
  RawSubscription raw(client().channel, SubscribeReq({q}, {}, head).SerializeAsString());
  EventStream typed(client().events.get(), SubscribeReq({q}, {}, head));

  v1::EnqueueRequest job = NewJob(q, std::string("pay\0load", 8));
  (*job.mutable_headers())["trace"] = "t-1";
  const std::string id = client().MustEnqueue(job);
  v1::Lease lease = client().MustLeaseOne(q);
  ASSERT_TRUE(client().Complete(id, lease.lease_token(), "done").ok());

  const std::vector<v1::EventType> want = {v1::EVENT_TYPE_ENQUEUED, v1::EVENT_TYPE_LEASED,
                                           v1::EVENT_TYPE_SUCCEEDED};
  std::vector<v1::Event> from_typed = typed.Take(want.size());
  ASSERT_EQ(from_typed.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    std::string bytes;
    ASSERT_TRUE(raw.Read(&bytes)) << "message " << i;
    v1::SubscribeResponse parsed;
    ASSERT_TRUE(parsed.ParseFromString(bytes)) << "message " << i;
    // Serializing the parsed response gives the same bytes: the broker sent
    // what the proto response serializes to (one map entry: no order to
    // differ in).
    EXPECT_EQ(parsed.SerializeAsString(), bytes) << "message " << i;
    const v1::Event& ev = parsed.event();
    EXPECT_EQ(ev.type(), want[i]);
    EXPECT_EQ(ev.job_id(), id);
    EXPECT_EQ(ev.queue(), q);
    EXPECT_EQ(ev.job().id(), id);
    EXPECT_GT(ev.seq(), head);
    // The generated client reads the same event.
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(ev, from_typed[i]))
        << ev.ShortDebugString() << "\nvs\n"
        << from_typed[i].ShortDebugString();
  }
  EXPECT_EQ(from_typed.back().job().result(), "done");
}

TEST_F(EventsE2EWire, MalformedSubscribeRequestIsRefusedNamingItsType) {
  // A length that runs past the end of the message.
  RawSubscription bad(client().channel, std::string("\x0a\x10" "emai", 6));
  std::string bytes;
  EXPECT_FALSE(bad.Read(&bytes));
  grpc::Status s = bad.Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
  EXPECT_NE(s.error_message().find("not a valid errand.v1.SubscribeRequest"), std::string::npos)
      << Show(s);
  // Well-formed bytes that fail validation are checked as before.
  v1::SubscribeRequest both;
  both.set_after_seq(1);
  both.set_from_oldest(true);
  RawSubscription invalid(client().channel, both.SerializeAsString());
  EXPECT_FALSE(invalid.Read(&bytes));
  s = invalid.Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
  // The broker still serves subscriptions.
  const uint64_t head = HeadSeq(client());
  EventStream ok(client().events.get(), SubscribeReq({}, {"wire.t"}, head));
  const uint64_t seq = MustPublish(client(), "wire.t", "x");
  auto ev = ok.Next();
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->seq(), seq);
}

TEST_F(EventsE2EWire, SubscribersWithDifferentFiltersEachGetExactlyTheirEvents) {
  const uint64_t head = HeadSeq(client());
  v1::SubscribeRequest only_a = SubscribeReq({"wire.a"}, {}, head);
  v1::SubscribeRequest b_succeeded = SubscribeReq({"wire.b"}, {}, head);
  b_succeeded.add_types(v1::EVENT_TYPE_SUCCEEDED);
  v1::SubscribeRequest topic = SubscribeReq({}, {"wire.t"}, head);
  v1::SubscribeRequest everything = SubscribeReq({}, {}, head);
  // Several streams per filter, so that one event goes to many writers.
  constexpr int kEach = 5;
  std::vector<std::unique_ptr<EventStream>> streams;
  for (const auto* r : {&only_a, &b_succeeded, &topic, &everything}) {
    for (int i = 0; i < kEach; ++i) {
      streams.push_back(std::make_unique<EventStream>(client().events.get(), *r));
    }
  }
  std::vector<uint64_t> a_seqs, b_done, t_seqs;
  for (const std::string q : {"wire.a", "wire.b"}) {
    const std::string id = client().MustEnqueue(NewJob(q, "p"));
    v1::Lease lease = client().MustLeaseOne(q);
    ASSERT_TRUE(client().Complete(id, lease.lease_token(), "r").ok());
  }
  const uint64_t msg = MustPublish(client(), "wire.t", "m");
  // 3 events per job, then the message.
  const size_t all = 7;
  std::vector<v1::Event> every = streams.back()->Take(all);
  ASSERT_EQ(every.size(), all);
  for (const auto& ev : every) {
    if (ev.queue() == "wire.a") a_seqs.push_back(ev.seq());
    if (ev.queue() == "wire.b" && ev.type() == v1::EVENT_TYPE_SUCCEEDED) b_done.push_back(ev.seq());
    if (ev.type() == v1::EVENT_TYPE_MESSAGE) t_seqs.push_back(ev.seq());
  }
  ASSERT_EQ(a_seqs.size(), 3u);
  ASSERT_EQ(b_done.size(), 1u);
  ASSERT_EQ(t_seqs, std::vector<uint64_t>{msg});
  const std::vector<std::vector<uint64_t>> want = {a_seqs, b_done, t_seqs};
  std::vector<uint64_t> every_seqs;
  for (const auto& ev : every) every_seqs.push_back(ev.seq());
  for (size_t i = 0; i < streams.size(); ++i) {
    const std::vector<uint64_t>& expect = i / kEach < want.size() ? want[i / kEach] : every_seqs;
    std::vector<v1::Event> got = i + 1 == streams.size() ? every : streams[i]->Take(expect.size());
    std::vector<uint64_t> seqs;
    for (const auto& ev : got) seqs.push_back(ev.seq());
    EXPECT_EQ(seqs, expect) << "stream " << i;
  }
  // Nothing more arrives for anyone: a final marker on an unrelated topic
  // reaches only the unfiltered streams, and by then every filtered stream
  // has been sent all it will get.
  const uint64_t marker = MustPublish(client(), "wire.other", "end");
  for (size_t i = want.size() * kEach; i < streams.size(); ++i) {
    auto ev = streams[i]->Next();
    ASSERT_TRUE(ev.has_value()) << "stream " << i;
    EXPECT_EQ(ev->seq(), marker);
  }
  for (size_t i = 0; i < want.size() * kEach; ++i) {
    auto ev = streams[i]->Next(50ms);
    EXPECT_FALSE(ev.has_value()) << "stream " << i << " got " << ev->ShortDebugString();
  }
}

}  // namespace
}  // namespace errand::e2e
