// End to end: a message that is not valid protobuf, sent on a bidi stream
// (Jobs.EnqueueStream, Workers.Connect) after valid ones. The stream ends with
// INVALID_ARGUMENT naming the message's position and type, what the valid
// messages before it did is kept, and the broker still serves.

#include <grpcpp/impl/rpc_method.h>
#include <grpcpp/support/sync_stream.h>

#include <thread>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

// A bidi stream of raw bytes: the broker sees exactly what is written.
class RawStream {
 public:
  RawStream(const std::shared_ptr<grpc::Channel>& channel, const char* method)
      : method_(method, grpc::internal::RpcMethod::BIDI_STREAMING) {
    ctx_.set_deadline(testing::In(Client::kRpcTimeout));
    stream_.reset(grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::
                      Create(channel.get(), method_, &ctx_));
  }

  bool Write(const std::string& bytes) {
    grpc::Slice slice(bytes);
    grpc::ByteBuffer b(&slice, 1);
    return stream_->Write(b);
  }
  bool Write(const google::protobuf::Message& m) { return Write(m.SerializeAsString()); }

  // The next message parsed as T; false at the end of the stream.
  template <typename T>
  bool Read(T* out) {
    grpc::ByteBuffer b;
    if (!stream_->Read(&b)) return false;
    std::vector<grpc::Slice> slices;
    EXPECT_TRUE(b.Dump(&slices).ok());
    std::string bytes;
    for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    EXPECT_TRUE(out->ParseFromString(bytes));
    return true;
  }

  // Half-closes (the broker may have ended the stream already) and returns
  // the final status.
  grpc::Status Finish() {
    stream_->WritesDone();
    grpc::ByteBuffer rest;
    while (stream_->Read(&rest)) {
    }
    return stream_->Finish();
  }

 private:
  grpc::internal::RpcMethod method_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream_;
};

using testing::WireField;

class HostileStream : public BrokerTest {
 protected:
  // Two valid jobs, then `bad`: both jobs are answered and kept, and the
  // stream ends with INVALID_ARGUMENT naming message 3.
  void EnqueueStreamThen(const std::string& queue, const std::string& bad) {
    RawStream s(broker_->Channel(), "/errand.v1.Jobs/EnqueueStream");
    for (uint64_t rid : {1, 2}) {
      v1::EnqueueStreamRequest r;
      r.set_request_id(rid);
      *r.mutable_job() = NewJob(queue, "job " + std::to_string(rid));
      ASSERT_TRUE(s.Write(r));
    }
    (void)s.Write(bad);
    std::map<uint64_t, std::string> ids;
    v1::EnqueueStreamResponse a;
    while (s.Read(&a)) {
      std::vector<v1::EnqueueStreamResponse> all{a};
      for (const auto& m : a.more()) all.push_back(m);
      for (const auto& one : all) {
        EXPECT_EQ(one.error_code(), 0) << one.error_message();
        ids[one.request_id()] = one.result().job_id();
      }
    }
    grpc::Status st = s.Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(st);
    EXPECT_NE(st.error_message().find(
                  "message 3 on the stream is not a valid errand.v1.EnqueueStreamRequest"),
              std::string::npos)
        << Show(st);
    ASSERT_EQ(ids.size(), 2u);
    for (uint64_t rid : {1, 2}) {
      EXPECT_EQ(client().MustGetJob(ids[rid]).payload(), "job " + std::to_string(rid));
    }
    EXPECT_EQ(client().Stats(queue).ready(), 2u);
  }
};

TEST_F(HostileStream, MalformedMessageOnEnqueueStreamEndsItWithInvalidArgument) {
  // A length that runs past the end of the message.
  EnqueueStreamThen("hostile.s1", std::string("\x12\x10\x0a\x02q", 5));
  // Invalid UTF-8 in the job's queue (a string field).
  EnqueueStreamThen("hostile.s2", WireField(2, WireField(1, "q\xff\xfe")));
  ExpectHealthy();
}

TEST_F(HostileStream, MalformedMessageOnConnectEndsItAndKeepsTheCompletion) {
  const std::string id = client().MustEnqueue(NewJob("hostile.conn", "work"));
  RawStream s(broker_->Channel(), "/errand.v1.Workers/Connect");
  v1::ConnectRequest hello;
  hello.mutable_hello()->add_queues("hostile.conn");
  hello.mutable_hello()->set_credits(1);
  ASSERT_TRUE(s.Write(hello));
  v1::ConnectResponse delivery;
  ASSERT_TRUE(s.Read(&delivery));
  ASSERT_TRUE(delivery.has_delivery());
  ASSERT_EQ(delivery.delivery().job().id(), id);
  v1::ConnectRequest done;
  done.set_request_id(7);
  done.mutable_complete()->set_job_id(id);
  done.mutable_complete()->set_lease_token(delivery.delivery().lease_token());
  done.mutable_complete()->set_result("done");
  ASSERT_TRUE(s.Write(done));
  // A field with wire type 7 (there is none).
  (void)s.Write(std::string("\x0f\x01", 2));
  grpc::Status st = s.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(st);
  EXPECT_NE(st.error_message().find("message 3 on the stream is not a valid errand.v1.ConnectRequest"),
            std::string::npos)
      << Show(st);
  // The completion sent before it stands.
  v1::Job job;
  for (int i = 0; i < 500; ++i) {
    job = client().MustGetJob(id);
    if (job.state() == v1::JOB_STATE_SUCCEEDED) break;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(job.result(), "done");
  ExpectHealthy();
}

TEST_F(HostileStream, HalfCloseStillEndsStreamsWithOk) {
  RawStream e(broker_->Channel(), "/errand.v1.Jobs/EnqueueStream");
  v1::EnqueueStreamRequest r;
  r.set_request_id(1);
  *r.mutable_job() = NewJob("hostile.ok");
  ASSERT_TRUE(e.Write(r));
  grpc::Status st = e.Finish();
  EXPECT_TRUE(st.ok()) << Show(st);
  EXPECT_EQ(client().Stats("hostile.ok").ready(), 1u);
  RawStream c(broker_->Channel(), "/errand.v1.Workers/Connect");
  v1::ConnectRequest hello;
  hello.mutable_hello()->add_queues("hostile.none");
  ASSERT_TRUE(c.Write(hello));
  st = c.Finish();
  EXPECT_TRUE(st.ok()) << Show(st);
}

}  // namespace
}  // namespace errand::e2e
