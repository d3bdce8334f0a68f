#include "service/jobs_service.h"

#include <vector>

#include "service/grpc_status.h"
#include "service/unimplemented.h"
#include "store/keys.h"

namespace errand::service {
namespace {

v1::Durability Reached(bool synced) {
  return synced ? v1::DURABILITY_SYNC : v1::DURABILITY_ASYNC;
}

}  // namespace

grpc::ServerUnaryReactor* JobsService::Enqueue(grpc::CallbackServerContext* context,
                                               const v1::EnqueueRequest* request,
                                               v1::EnqueueResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (auto s = ValidateEnqueue(*request, ctx_->limits, ctx_->clock->Now()); !s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  std::vector<v1::EnqueueRequest> reqs(1, *request);
  v1::Durability durability = request->durability();
  ctx_->OnCore([ctx = ctx_, reactor, response, reqs = std::move(reqs), durability]() mutable {
    ctx->engine->Enqueue(std::move(reqs), durability,
                         [reactor, response](absl::StatusOr<dispatch::EnqueueOutcome> r) {
                           if (!r.ok()) {
                             reactor->Finish(ToGrpc(r.status()));
                             return;
                           }
                           response->set_job_id(r->job_ids.at(0));
                           response->set_durability(Reached(r->synced));
                           response->set_commit_seq(r->commit_seq);
                           reactor->Finish(grpc::Status::OK);
                         });
  });
  return reactor;
}

grpc::ServerUnaryReactor* JobsService::EnqueueBatch(grpc::CallbackServerContext* context,
                                                    const v1::EnqueueBatchRequest* request,
                                                    v1::EnqueueBatchResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (auto s = ValidateEnqueueBatch(*request, ctx_->limits, ctx_->clock->Now()); !s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  std::vector<v1::EnqueueRequest> reqs(request->jobs().begin(), request->jobs().end());
  v1::Durability durability = request->durability();
  ctx_->OnCore([ctx = ctx_, reactor, response, reqs = std::move(reqs), durability]() mutable {
    ctx->engine->Enqueue(std::move(reqs), durability,
                         [reactor, response](absl::StatusOr<dispatch::EnqueueOutcome> r) {
                           if (!r.ok()) {
                             reactor->Finish(ToGrpc(r.status()));
                             return;
                           }
                           for (const std::string& id : r->job_ids) {
                             auto* one = response->add_results();
                             one->set_job_id(id);
                             one->set_durability(Reached(r->synced));
                             one->set_commit_seq(r->commit_seq);
                           }
                           response->set_durability(Reached(r->synced));
                           response->set_commit_seq(r->commit_seq);
                           reactor->Finish(grpc::Status::OK);
                         });
  });
  return reactor;
}

grpc::ServerBidiReactor<v1::EnqueueStreamRequest, v1::EnqueueStreamResponse>*
JobsService::EnqueueStream(grpc::CallbackServerContext*) {
  return new UnimplementedBidi<v1::EnqueueStreamRequest, v1::EnqueueStreamResponse>(
      "errand.v1.Jobs/EnqueueStream");
}

grpc::ServerUnaryReactor* JobsService::GetJob(grpc::CallbackServerContext* context,
                                              const v1::GetJobRequest* request,
                                              v1::GetJobResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto id = ParseJobIdField(request->job_id(), "job_id");
  if (!id.ok()) {
    reactor->Finish(ToGrpc(id.status()));
    return reactor;
  }
  ctx_->OnCore([ctx = ctx_, reactor, response, id = *id] {
    auto job = ctx->engine->GetJob(id);
    if (!job.ok()) {
      reactor->Finish(ToGrpc(job.status()));
      return;
    }
    *response->mutable_job() = std::move(*job);
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* JobsService::WaitJob(grpc::CallbackServerContext* context,
                                               const v1::WaitJobRequest*, v1::WaitJobResponse*) {
  return UnimplementedUnary(context, "errand.v1.Jobs/WaitJob");
}

grpc::ServerWriteReactor<v1::WatchJobResponse>* JobsService::EnqueueAndWatch(
    grpc::CallbackServerContext*, const v1::EnqueueRequest*) {
  return new UnimplementedWriter<v1::WatchJobResponse>("errand.v1.Jobs/EnqueueAndWatch");
}

grpc::ServerUnaryReactor* JobsService::CancelJob(grpc::CallbackServerContext* context,
                                                 const v1::CancelJobRequest*,
                                                 v1::CancelJobResponse*) {
  return UnimplementedUnary(context, "errand.v1.Jobs/CancelJob");
}

grpc::ServerUnaryReactor* JobsService::ListJobs(grpc::CallbackServerContext* context,
                                                const v1::ListJobsRequest*,
                                                v1::ListJobsResponse*) {
  return UnimplementedUnary(context, "errand.v1.Jobs/ListJobs");
}

}  // namespace errand::service
