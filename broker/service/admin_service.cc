#include "service/admin_service.h"

#include "service/auth_check.h"
#include "service/grpc_status.h"
#include "store/keys.h"
#include "util/time.h"

namespace errand::service {
namespace {

// The completion of an engine operation that counts what it did: sets the
// count on the response and finishes, or finishes with the error.
template <typename SetCount>
dispatch::Engine::CountDone AnswerCount(grpc::ServerUnaryReactor* reactor, SetCount set) {
  return [reactor, set](absl::StatusOr<uint64_t> r) {
    if (!r.ok()) {
      reactor->Finish(ToGrpc(r.status()));
      return;
    }
    set(*r);
    reactor->Finish(grpc::Status::OK);
  };
}

}  // namespace

grpc::ServerUnaryReactor* AdminService::ListQueues(grpc::CallbackServerContext* context,
                                                   const v1::ListQueuesRequest*,
                                                   v1::ListQueuesResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto who = Authorize(ctx_, context, need::kAdmin, "errand.v1.Admin/ListQueues");
  if (!who.ok()) {
    reactor->Finish(ToGrpc(who.status()));
    return reactor;
  }
  ctx_->OnCore([ctx = ctx_, reactor, response, who = std::move(*who)] {
    // A token restricted to some queues sees only those.
    for (v1::QueueStats& q : ctx->engine->ListQueues()) {
      if (AllowQueue(who, q.queue()).ok()) *response->add_queues() = std::move(q);
    }
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::GetQueueStats(grpc::CallbackServerContext* context,
                                                      const v1::GetQueueStatsRequest* request,
                                                      v1::GetQueueStatsResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto who = Authorize(ctx_, context, need::kAdmin, "errand.v1.Admin/GetQueueStats");
  absl::Status s = who.status();
  if (s.ok()) s = ValidateQueueName(request->queue(), "queue");
  if (s.ok()) s = AllowQueue(*who, request->queue());
  if (!s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  ctx_->OnCore([ctx = ctx_, reactor, response, queue = request->queue()] {
    *response->mutable_stats() = ctx->engine->QueueStats(queue);
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

namespace {

// Runs engine->SetPaused(queue, paused) and answers.
grpc::ServerUnaryReactor* SetPausedCall(const ServiceContext* ctx,
                                        grpc::CallbackServerContext* context,
                                        const std::string& queue, bool paused) {
  auto* reactor = context->DefaultReactor();
  auto who = Authorize(ctx, context, need::kAdmin,
                       paused ? "errand.v1.Admin/PauseQueue" : "errand.v1.Admin/ResumeQueue");
  absl::Status s = who.status();
  if (s.ok()) s = ValidateQueueName(queue, "queue");
  if (s.ok()) s = AllowQueue(*who, queue);
  if (!s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  ctx->OnCore([ctx, reactor, queue, paused] {
    ctx->engine->SetPaused(queue, paused,
                           [reactor](absl::Status s) { reactor->Finish(ToGrpc(s)); });
  });
  return reactor;
}

}  // namespace

grpc::ServerUnaryReactor* AdminService::PauseQueue(grpc::CallbackServerContext* context,
                                                   const v1::PauseQueueRequest* request,
                                                   v1::PauseQueueResponse*) {
  return SetPausedCall(ctx_, context, request->queue(), true);
}

grpc::ServerUnaryReactor* AdminService::ResumeQueue(grpc::CallbackServerContext* context,
                                                    const v1::ResumeQueueRequest* request,
                                                    v1::ResumeQueueResponse*) {
  return SetPausedCall(ctx_, context, request->queue(), false);
}

grpc::ServerUnaryReactor* AdminService::PurgeQueue(grpc::CallbackServerContext* context,
                                                   const v1::PurgeQueueRequest* request,
                                                   v1::PurgeQueueResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto who = Authorize(ctx_, context, need::kAdmin, "errand.v1.Admin/PurgeQueue");
  absl::Status s = who.status();
  if (s.ok()) s = ValidateQueueName(request->queue(), "queue");
  if (s.ok()) s = AllowQueue(*who, request->queue());
  if (!s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  ctx_->OnCore([ctx = ctx_, reactor, response, queue = request->queue()] {
    ctx->engine->Purge(queue, AnswerCount(reactor, [response](uint64_t n) {
                         response->set_purged(n);
                       }));
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::ListDeadJobs(grpc::CallbackServerContext* context,
                                                     const v1::ListDeadJobsRequest* request,
                                                     v1::ListDeadJobsResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto who = Authorize(ctx_, context, need::kAdmin, "errand.v1.Admin/ListDeadJobs");
  absl::Status s = who.status();
  if (s.ok()) s = ValidateQueueName(request->queue(), "queue");
  auto size = ParsePageSize(request->page_size(), "page_size");
  auto after = ParsePageToken(request->page_token(), "page_token");
  if (s.ok()) s = size.status();
  if (s.ok()) s = after.status();
  if (s.ok()) s = AllowQueue(*who, request->queue());
  if (!s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  dispatch::ListSpec spec;
  spec.queue = request->queue();
  spec.state = v1::JOB_STATE_DEAD;
  spec.page_size = *size;
  spec.after = *after;
  ctx_->OnCore([ctx = ctx_, reactor, response, spec = std::move(spec)] {
    dispatch::ListPage page = ctx->engine->ListJobs(spec);
    for (v1::Job& j : page.jobs) *response->add_jobs() = std::move(j);
    response->set_next_page_token(MakePageToken(page.next));
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::RedriveJobs(grpc::CallbackServerContext* context,
                                                    const v1::RedriveJobsRequest* request,
                                                    v1::RedriveJobsResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto who = Authorize(ctx_, context, need::kAdmin, "errand.v1.Admin/RedriveJobs");
  absl::Status s = who.status();
  if (s.ok()) s = ValidateRedrive(*request);
  if (s.ok() && *who && (*who)->restricted()) {
    // The engine checks that listed jobs belong to `queue`, so naming an
    // allowed queue covers them.
    s = request->queue().empty()
            ? absl::PermissionDeniedError("token \"" + (*who)->name +
                                          "\" is restricted to some queues: name the queue")
            : AllowQueue(*who, request->queue());
  }
  if (s.ok() && request->replace_payload() &&
      request->payload().size() > ctx_->limits.max_payload_bytes) {
    s = absl::InvalidArgumentError("payload is " + std::to_string(request->payload().size()) +
                                   " bytes; the limit is " +
                                   std::to_string(ctx_->limits.max_payload_bytes) +
                                   " bytes (--max-payload-bytes)");
  }
  if (!s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  std::vector<uint64_t> ids;
  for (const std::string& id : request->job_ids()) ids.push_back(*store::ParseJobId(id));
  std::optional<std::string> payload;
  if (request->replace_payload()) payload = request->payload();
  ctx_->OnCore([ctx = ctx_, reactor, response, queue = request->queue(), ids = std::move(ids),
                payload = std::move(payload)]() mutable {
    ctx->engine->Redrive(queue, std::move(ids), std::move(payload),
                         AnswerCount(reactor, [response](uint64_t n) {
                           response->set_redriven(n);
                         }));
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::SetQueueConfig(grpc::CallbackServerContext* context,
                                                       const v1::SetQueueConfigRequest* request,
                                                       v1::SetQueueConfigResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto who = Authorize(ctx_, context, need::kAdmin, "errand.v1.Admin/SetQueueConfig");
  absl::Status s = who.status();
  if (s.ok()) s = ValidateQueueName(request->queue(), "queue");
  if (s.ok()) s = AllowQueue(*who, request->queue());
  if (s.ok() && request->max_leased_per_key() > kMaxLeasedPerKey) {
    s = absl::InvalidArgumentError("max_leased_per_key is " +
                                   std::to_string(request->max_leased_per_key()) +
                                   "; the limit is " + std::to_string(kMaxLeasedPerKey));
  }
  if (!s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  ctx_->OnCore([ctx = ctx_, reactor, response, queue = request->queue(),
                limit = request->max_leased_per_key()] {
    ctx->engine->SetQueueConfig(queue, limit, [ctx, reactor, response, queue](absl::Status s) {
      if (s.ok()) *response->mutable_stats() = ctx->engine->QueueStats(queue);
      reactor->Finish(ToGrpc(s));
    });
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::GetServerInfo(grpc::CallbackServerContext* context,
                                                      const v1::GetServerInfoRequest*,
                                                      v1::GetServerInfoResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (auto who = Authorize(ctx_, context, need::kAdmin, "errand.v1.Admin/GetServerInfo");
      !who.ok()) {
    reactor->Finish(ToGrpc(who.status()));
    return reactor;
  }
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
    if (ctx->call_limiter != nullptr) {
      response->set_open_streams(ctx->call_limiter->streams());
      response->set_open_subscribers(ctx->call_limiter->subscribers());
      response->set_open_long_polls(ctx->call_limiter->long_polls());
    }
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

}  // namespace errand::service
