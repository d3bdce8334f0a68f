// End to end: the served API surface. Every RPC of errand.v1 is served (none
// answers UNIMPLEMENTED), and a method the broker does not know answers
// UNIMPLEMENTED, as gRPC clients newer than the broker expect.

#include <grpcpp/generic/generic_stub.h>

#include <functional>
#include <future>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

class SurfaceE2E : public BrokerTest {};

// Calls whose answers come at once: mostly requests that fail validation, so
// that no call changes state or waits.
struct Probe {
  const char* method;
  std::function<grpc::Status(Client&, grpc::ClientContext*)> call;
};

std::vector<Probe> AllRpcs() {
  std::vector<Probe> p;
  // Jobs.
  p.push_back({"Jobs/Enqueue", [](Client& c, grpc::ClientContext* ctx) {
                 v1::EnqueueResponse r;
                 return c.jobs->Enqueue(ctx, NewJob(""), &r);
               }});
  p.push_back({"Jobs/EnqueueBatch", [](Client& c, grpc::ClientContext* ctx) {
                 v1::EnqueueBatchResponse r;
                 return c.jobs->EnqueueBatch(ctx, v1::EnqueueBatchRequest(), &r);
               }});
  p.push_back({"Jobs/EnqueueStream", [](Client& c, grpc::ClientContext* ctx) {
                 auto stream = c.jobs->EnqueueStream(ctx);
                 stream->WritesDone();
                 v1::EnqueueStreamResponse m;
                 while (stream->Read(&m)) {
                 }
                 return stream->Finish();
               }});
  p.push_back({"Jobs/GetJob", [](Client& c, grpc::ClientContext* ctx) {
                 v1::GetJobResponse r;
                 return c.jobs->GetJob(ctx, v1::GetJobRequest(), &r);
               }});
  p.push_back({"Jobs/WaitJob", [](Client& c, grpc::ClientContext* ctx) {
                 v1::WaitJobResponse r;
                 return c.jobs->WaitJob(ctx, v1::WaitJobRequest(), &r);
               }});
  p.push_back({"Jobs/EnqueueAndWatch", [](Client& c, grpc::ClientContext* ctx) {
                 auto reader = c.jobs->EnqueueAndWatch(ctx, NewJob(""));
                 v1::WatchJobResponse m;
                 while (reader->Read(&m)) {
                 }
                 return reader->Finish();
               }});
  p.push_back({"Jobs/CancelJob", [](Client& c, grpc::ClientContext* ctx) {
                 v1::CancelJobResponse r;
                 return c.jobs->CancelJob(ctx, v1::CancelJobRequest(), &r);
               }});
  p.push_back({"Jobs/ListJobs", [](Client& c, grpc::ClientContext* ctx) {
                 v1::ListJobsResponse r;
                 return c.jobs->ListJobs(ctx, v1::ListJobsRequest(), &r);
               }});
  // Workers.
  p.push_back({"Workers/Lease", [](Client& c, grpc::ClientContext* ctx) {
                 v1::LeaseResponse r;
                 return c.workers->Lease(ctx, v1::LeaseRequest(), &r);
               }});
  p.push_back({"Workers/Connect", [](Client& c, grpc::ClientContext* ctx) {
                 auto stream = c.workers->Connect(ctx);
                 stream->WritesDone();
                 v1::ConnectResponse m;
                 while (stream->Read(&m)) {
                 }
                 return stream->Finish();
               }});
  p.push_back({"Workers/Complete", [](Client& c, grpc::ClientContext* ctx) {
                 v1::CompleteResponse r;
                 return c.workers->Complete(ctx, v1::CompleteRequest(), &r);
               }});
  p.push_back({"Workers/Fail", [](Client& c, grpc::ClientContext* ctx) {
                 v1::FailResponse r;
                 return c.workers->Fail(ctx, v1::FailRequest(), &r);
               }});
  p.push_back({"Workers/Extend", [](Client& c, grpc::ClientContext* ctx) {
                 v1::ExtendResponse r;
                 return c.workers->Extend(ctx, v1::ExtendRequest(), &r);
               }});
  // Events.
  p.push_back({"Events/Subscribe", [](Client& c, grpc::ClientContext* ctx) {
                 v1::SubscribeRequest req;
                 req.add_queues("not a queue");
                 auto reader = c.events->Subscribe(ctx, req);
                 v1::SubscribeResponse m;
                 while (reader->Read(&m)) {
                 }
                 return reader->Finish();
               }});
  p.push_back({"Events/Publish", [](Client& c, grpc::ClientContext* ctx) {
                 v1::PublishResponse r;
                 return c.events->Publish(ctx, v1::PublishRequest(), &r);
               }});
  // Admin.
  p.push_back({"Admin/ListQueues", [](Client& c, grpc::ClientContext* ctx) {
                 v1::ListQueuesResponse r;
                 return c.admin->ListQueues(ctx, v1::ListQueuesRequest(), &r);
               }});
  p.push_back({"Admin/GetQueueStats", [](Client& c, grpc::ClientContext* ctx) {
                 v1::GetQueueStatsResponse r;
                 return c.admin->GetQueueStats(ctx, v1::GetQueueStatsRequest(), &r);
               }});
  p.push_back({"Admin/PauseQueue", [](Client& c, grpc::ClientContext* ctx) {
                 v1::PauseQueueResponse r;
                 return c.admin->PauseQueue(ctx, v1::PauseQueueRequest(), &r);
               }});
  p.push_back({"Admin/ResumeQueue", [](Client& c, grpc::ClientContext* ctx) {
                 v1::ResumeQueueResponse r;
                 return c.admin->ResumeQueue(ctx, v1::ResumeQueueRequest(), &r);
               }});
  p.push_back({"Admin/PurgeQueue", [](Client& c, grpc::ClientContext* ctx) {
                 v1::PurgeQueueResponse r;
                 return c.admin->PurgeQueue(ctx, v1::PurgeQueueRequest(), &r);
               }});
  p.push_back({"Admin/ListDeadJobs", [](Client& c, grpc::ClientContext* ctx) {
                 v1::ListDeadJobsResponse r;
                 return c.admin->ListDeadJobs(ctx, v1::ListDeadJobsRequest(), &r);
               }});
  p.push_back({"Admin/RedriveJobs", [](Client& c, grpc::ClientContext* ctx) {
                 v1::RedriveJobsResponse r;
                 return c.admin->RedriveJobs(ctx, v1::RedriveJobsRequest(), &r);
               }});
  p.push_back({"Admin/GetServerInfo", [](Client& c, grpc::ClientContext* ctx) {
                 v1::GetServerInfoResponse r;
                 return c.admin->GetServerInfo(ctx, v1::GetServerInfoRequest(), &r);
               }});
  return p;
}

TEST_F(SurfaceE2E, EveryV1RpcIsServed) {
  for (const Probe& probe : AllRpcs()) {
    SCOPED_TRACE(probe.method);
    grpc::ClientContext ctx;
    // Streams that are served and valid run until this deadline at most.
    ctx.set_deadline(testing::In(2s));
    grpc::Status s = probe.call(client(), &ctx);
    EXPECT_NE(s.error_code(), grpc::StatusCode::UNIMPLEMENTED)
        << probe.method << " is not served: " << Show(s);
  }
}

TEST_F(SurfaceE2E, EmptyRequestsAreRejectedNamingAField) {
  // The unary RPCs whose every field is optional are left out.
  for (const Probe& probe : AllRpcs()) {
    const std::string m = probe.method;
    if (m == "Admin/ListQueues" || m == "Admin/GetServerInfo" || m == "Jobs/EnqueueStream" ||
        m == "Workers/Connect" || m == "Events/Subscribe") {
      continue;
    }
    SCOPED_TRACE(m);
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(2s));
    grpc::Status s = probe.call(client(), &ctx);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << m << ": " << Show(s);
    EXPECT_FALSE(s.error_message().empty()) << m;
  }
}

TEST_F(SurfaceE2E, UnknownMethodIsUnimplemented) {
  grpc::GenericStub stub(client().channel);
  for (const char* method : {"/errand.v1.Jobs/Frobnicate", "/errand.v2.Jobs/Enqueue"}) {
    SCOPED_TRACE(method);
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(5s));
    grpc::Slice empty(std::string{});
    grpc::ByteBuffer request(&empty, 1);  // an empty message
    grpc::ByteBuffer response;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response,
                   [&](grpc::Status s) { done.set_value(std::move(s)); });
    grpc::Status s = done.get_future().get();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED) << Show(s);
  }
}

}  // namespace
}  // namespace errand::e2e
