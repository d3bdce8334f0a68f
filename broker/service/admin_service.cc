#include "service/admin_service.h"

#include "service/grpc_status.h"
#include "service/unimplemented.h"
#include "util/time.h"

namespace errand::service {

grpc::ServerUnaryReactor* AdminService::ListQueues(grpc::CallbackServerContext* context,
                                                   const v1::ListQueuesRequest*,
                                                   v1::ListQueuesResponse* response) {
  auto* reactor = context->DefaultReactor();
  ctx_->OnCore([ctx = ctx_, reactor, response] {
    for (v1::QueueStats& q : ctx->engine->ListQueues()) *response->add_queues() = std::move(q);
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::GetQueueStats(grpc::CallbackServerContext* context,
                                                      const v1::GetQueueStatsRequest* request,
                                                      v1::GetQueueStatsResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (auto s = ValidateQueueName(request->queue(), "queue"); !s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  ctx_->OnCore([ctx = ctx_, reactor, response, queue = request->queue()] {
    *response->mutable_stats() = ctx->engine->QueueStats(queue);
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::PauseQueue(grpc::CallbackServerContext* context,
                                                   const v1::PauseQueueRequest*,
                                                   v1::PauseQueueResponse*) {
  return UnimplementedUnary(context, "errand.v1.Admin/PauseQueue");
}

grpc::ServerUnaryReactor* AdminService::ResumeQueue(grpc::CallbackServerContext* context,
                                                    const v1::ResumeQueueRequest*,
                                                    v1::ResumeQueueResponse*) {
  return UnimplementedUnary(context, "errand.v1.Admin/ResumeQueue");
}

grpc::ServerUnaryReactor* AdminService::PurgeQueue(grpc::CallbackServerContext* context,
                                                   const v1::PurgeQueueRequest*,
                                                   v1::PurgeQueueResponse*) {
  return UnimplementedUnary(context, "errand.v1.Admin/PurgeQueue");
}

grpc::ServerUnaryReactor* AdminService::ListDeadJobs(grpc::CallbackServerContext* context,
                                                     const v1::ListDeadJobsRequest*,
                                                     v1::ListDeadJobsResponse*) {
  return UnimplementedUnary(context, "errand.v1.Admin/ListDeadJobs");
}

grpc::ServerUnaryReactor* AdminService::RedriveJobs(grpc::CallbackServerContext* context,
                                                    const v1::RedriveJobsRequest*,
                                                    v1::RedriveJobsResponse*) {
  return UnimplementedUnary(context, "errand.v1.Admin/RedriveJobs");
}

grpc::ServerUnaryReactor* AdminService::GetServerInfo(grpc::CallbackServerContext* context,
                                                      const v1::GetServerInfoRequest*,
                                                      v1::GetServerInfoResponse* response) {
  auto* reactor = context->DefaultReactor();
  ctx_->OnCore([ctx = ctx_, reactor, response] {
    response->set_version(ctx->version);
    response->set_commit_mode(ctx->sync_by_default ? "sync" : "async");
    *response->mutable_sync_interval() = util::DurationToProto(
        std::chrono::duration_cast<std::chrono::microseconds>(ctx->sync_interval));
    *response->mutable_started_at() = util::ToProto(ctx->started_at);
    response->set_jobs(ctx->engine->job_count());
    auto st = ctx->pipeline->stats();
    response->set_commits(st.groups);
    response->set_fsyncs(st.fsyncs);
    response->set_writes(st.writes);
    response->set_boot_epoch(ctx->boot_epoch);
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

}  // namespace errand::service
