#include "service/jobs_service.h"

#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "service/auth_check.h"
#include "service/call_limits.h"
#include "service/enqueue_stream.h"
#include "service/event_stream.h"
#include "service/grpc_status.h"
#include "service/malformed_request.h"
#include "service/parsed_bidi.h"
#include "service/validate.h"
#include "service/wire_scan.h"
#include "store/keys.h"
#include "util/time.h"

namespace errand::service {
namespace {

v1::Durability Reached(bool synced) {
  return synced ? v1::DURABILITY_SYNC : v1::DURABILITY_ASYNC;
}

// An EnqueueBatchRequest from its bytes. The jobs are counted in the bytes
// first: a batch over --max-batch is refused before they are parsed (a 64 MiB
// message holds 33 million empty jobs, some 8 GB once parsed).
absl::Status ParseBatch(const grpc::ByteBuffer& raw, const Limits& limits,
                        v1::EnqueueBatchRequest* out) {
  uint64_t jobs = 0;
  if (!CountLengthDelimited(raw, v1::EnqueueBatchRequest::kJobsFieldNumber, &jobs)) {
    return absl::InvalidArgumentError("request " +
                                      MalformedMessage("errand.v1.EnqueueBatchRequest"));
  }
  if (auto s = ValidateBatchSize(jobs, limits); !s.ok()) return s;
  return ParseRequest(raw, out);
}

}  // namespace

grpc::ServerUnaryReactor* JobsService::Enqueue(grpc::CallbackServerContext* context,
                                               const v1::EnqueueRequest* request,
                                               v1::EnqueueResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto who = Authorize(ctx_, context, need::kProduce, "errand.v1.Jobs/Enqueue");
  absl::Status s = who.status();
  if (s.ok()) s = ValidateEnqueue(*request, ctx_->limits, ctx_->clock->Now());
  if (s.ok()) s = AllowQueue(*who, request->queue());
  if (!s.ok()) {
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
                           if (!r->duplicate.empty() && r->duplicate[0]) {
                             response->set_duplicate(true);
                             *response->mutable_job() = std::move(r->jobs[0]);
                           }
                           reactor->Finish(grpc::Status::OK);
                         });
  });
  return reactor;
}

grpc::ServerUnaryReactor* JobsService::EnqueueBatchRaw(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* raw_request,
                                                       grpc::ByteBuffer* raw_response) {
  auto* reactor = context->DefaultReactor();
  auto who = Authorize(ctx_, context, need::kProduce, "errand.v1.Jobs/EnqueueBatch");
  absl::Status s = who.status();
  v1::EnqueueBatchRequest parsed;
  const v1::EnqueueBatchRequest* request = &parsed;
  if (s.ok()) s = ParseBatch(*raw_request, ctx_->limits, &parsed);
  if (s.ok()) s = ValidateEnqueueBatch(*request, ctx_->limits, ctx_->clock->Now());
  for (int i = 0; s.ok() && i < request->jobs_size(); ++i) {
    s = AllowQueue(*who, request->jobs(i).queue());
  }
  if (!s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  std::vector<v1::EnqueueRequest> reqs(std::make_move_iterator(parsed.mutable_jobs()->begin()),
                                       std::make_move_iterator(parsed.mutable_jobs()->end()));
  v1::Durability durability = request->durability();
  ctx_->OnCore([ctx = ctx_, reactor, raw_response, reqs = std::move(reqs), durability]() mutable {
    ctx->engine->Enqueue(std::move(reqs), durability,
                         [reactor, raw_response](absl::StatusOr<dispatch::EnqueueOutcome> r) {
                           if (!r.ok()) {
                             reactor->Finish(ToGrpc(r.status()));
                             return;
                           }
                           v1::EnqueueBatchResponse answer;
                           v1::EnqueueBatchResponse* response = &answer;
                           for (size_t i = 0; i < r->job_ids.size(); ++i) {
                             auto* one = response->add_results();
                             one->set_job_id(r->job_ids[i]);
                             one->set_durability(Reached(r->synced));
                             one->set_commit_seq(r->commit_seq);
                             if (i < r->duplicate.size() && r->duplicate[i]) {
                               one->set_duplicate(true);
                               *one->mutable_job() = std::move(r->jobs[i]);
                             }
                           }
                           response->set_durability(Reached(r->synced));
                           response->set_commit_seq(r->commit_seq);
                           bool own = false;
                           reactor->Finish(
                               grpc::SerializationTraits<v1::EnqueueBatchResponse>::Serialize(
                                   answer, raw_response, &own));
                         });
  });
  return reactor;
}

JobsService::JobsService(const ServiceContext* ctx) : ctx_(ctx) {
  MarkMethodRawCallback(
      MethodIndex("errand.v1.Jobs.EnqueueBatch", Streaming::kNone),
      new grpc::internal::CallbackUnaryHandler<grpc::ByteBuffer, grpc::ByteBuffer>(
          [this](grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                 grpc::ByteBuffer* response) { return EnqueueBatchRaw(context, request, response); }));
  MarkMethodRawCallback(MethodIndex("errand.v1.Jobs.EnqueueStream", Streaming::kBidi),
                        RawBidiHandler([this](grpc::CallbackServerContext* context) {
                          return EnqueueStreamRaw(context);
                        }));
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* JobsService::EnqueueStreamRaw(
    grpc::CallbackServerContext* context) {
  auto who = Authorize(ctx_, context, need::kProduce, "errand.v1.Jobs/EnqueueStream");
  if (!who.ok()) {
    return RejectedBidi<grpc::ByteBuffer, grpc::ByteBuffer>(ToGrpc(who.status()));
  }
  return NewEnqueueStream(ctx_, context, std::move(*who));
}

grpc::ServerUnaryReactor* JobsService::GetJob(grpc::CallbackServerContext* context,
                                              const v1::GetJobRequest* request,
                                              v1::GetJobResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto who = Authorize(ctx_, context, need::kObserve, "errand.v1.Jobs/GetJob");
  absl::StatusOr<uint64_t> id =
      who.ok() ? ParseJobIdField(request->job_id(), "job_id") : who.status();
  if (!id.ok()) {
    reactor->Finish(ToGrpc(id.status()));
    return reactor;
  }
  ctx_->OnCore([ctx = ctx_, reactor, response, id = *id, who = std::move(*who)] {
    if (auto s = AllowJob(ctx, who, id); !s.ok()) {
      reactor->Finish(ToGrpc(s));
      return;
    }
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

namespace {

// A WaitJob long poll; withdrawn on core when its client goes away. `State`
// lives on core; the reactor is deleted by gRPC after Finish.
class WaitJobReactor final : public grpc::ServerUnaryReactor {
 public:
  struct State {
    WaitJobReactor* reactor = nullptr;
    bool finished = false;
    uint64_t waiter_id = 0;
  };

  WaitJobReactor(const ServiceContext* ctx, v1::WaitJobResponse* response,
                 CallLimiter::Slot slot)
      : ctx_(ctx), response_(response), slot_(std::move(slot)),
        state_(std::make_shared<State>()) {
    state_->reactor = this;
  }

  void Start(uint64_t id, std::chrono::microseconds timeout, auth::PrincipalRef who) {
    ctx_->OnCore([ctx = ctx_, st = state_, response = response_, id, timeout,
                  who = std::move(who)] {
      if (auto s = AllowJob(ctx, who, id); !s.ok()) {
        st->finished = true;
        st->reactor->Finish(ToGrpc(s));
        return;
      }
      uint64_t wid = ctx->engine->WaitJob(
          id, timeout, [st, response](absl::StatusOr<v1::Job> job, bool terminal) {
            if (st->finished) return;
            st->finished = true;
            if (!job.ok()) {
              st->reactor->Finish(ToGrpc(job.status()));
              return;
            }
            *response->mutable_job() = std::move(*job);
            response->set_done(terminal);
            st->reactor->Finish(grpc::Status::OK);
          });
      if (!st->finished) st->waiter_id = wid;
    });
  }

  void OnCancel() override {
    ctx_->OnCore([ctx = ctx_, st = state_] {
      if (st->finished || st->waiter_id == 0) return;
      if (!ctx->engine->CancelWaitJob(st->waiter_id)) return;
      st->finished = true;
      st->reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "wait cancelled"));
    });
  }

  void OnDone() override { delete this; }

 private:
  const ServiceContext* const ctx_;
  v1::WaitJobResponse* const response_;
  CallLimiter::Slot slot_;  // --max-long-polls; released when gRPC deletes the reactor
  std::shared_ptr<State> state_;
};

}  // namespace

grpc::ServerUnaryReactor* JobsService::WaitJob(grpc::CallbackServerContext* context,
                                               const v1::WaitJobRequest* request,
                                               v1::WaitJobResponse* response) {
  auto who = Authorize(ctx_, context, need::kObserve, "errand.v1.Jobs/WaitJob");
  absl::StatusOr<uint64_t> id =
      who.ok() ? ParseJobIdField(request->job_id(), "job_id") : who.status();
  absl::Status s = id.status();
  if (s.ok()) {
    s = ValidateDuration(request->timeout(), "timeout", std::chrono::microseconds(0), kMaxWait,
                         true);
  }
  absl::StatusOr<CallLimiter::Slot> slot = CallLimiter::Slot();
  if (s.ok()) {
    slot = ctx_->Admit(CallLimiter::Kind::kLongPoll, context);
    s = slot.status();
  }
  if (!s.ok()) {
    auto* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  auto timeout = request->has_timeout() ? util::DurationFromProto(request->timeout())
                                        : std::chrono::microseconds(std::chrono::seconds(30));
  // Answer a little before the caller's own deadline, so it gets the state
  // rather than DEADLINE_EXCEEDED.
  auto until_deadline = std::chrono::duration_cast<std::chrono::microseconds>(
      context->deadline() - std::chrono::system_clock::now() - std::chrono::milliseconds(50));
  if (until_deadline.count() > 0 && until_deadline < timeout) timeout = until_deadline;
  auto* reactor = new WaitJobReactor(ctx_, response, std::move(*slot));
  reactor->Start(*id, timeout, std::move(*who));
  return reactor;
}

grpc::ServerWriteReactor<v1::WatchJobResponse>* JobsService::EnqueueAndWatch(
    grpc::CallbackServerContext* context, const v1::EnqueueRequest* request) {
  auto who = Authorize(ctx_, context, need::kProduce, "errand.v1.Jobs/EnqueueAndWatch");
  absl::Status s = who.status();
  if (s.ok()) s = AllowQueue(*who, request->queue());
  if (!s.ok()) return RejectedWrite<v1::WatchJobResponse>(ToGrpc(s));
  return NewWatchReactor(ctx_, context, request);
}

grpc::ServerUnaryReactor* JobsService::CancelJob(grpc::CallbackServerContext* context,
                                                 const v1::CancelJobRequest* request,
                                                 v1::CancelJobResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto who = Authorize(ctx_, context, need::kProduce, "errand.v1.Jobs/CancelJob");
  absl::Status s = who.status();
  if (s.ok()) s = ValidateCancel(*request);
  if (!s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  uint64_t id = *ParseJobIdField(request->job_id(), "job_id");
  ctx_->OnCore([ctx = ctx_, reactor, response, id, reason = request->reason(),
                who = std::move(*who)]() mutable {
    if (auto s = AllowJob(ctx, who, id); !s.ok()) {
      reactor->Finish(ToGrpc(s));
      return;
    }
    ctx->engine->Cancel(id, std::move(reason), [reactor, response](absl::StatusOr<v1::Job> r) {
      if (!r.ok()) {
        reactor->Finish(ToGrpc(r.status()));
        return;
      }
      *response->mutable_job() = std::move(*r);
      reactor->Finish(grpc::Status::OK);
    });
  });
  return reactor;
}

grpc::ServerUnaryReactor* JobsService::ListJobs(grpc::CallbackServerContext* context,
                                                const v1::ListJobsRequest* request,
                                                v1::ListJobsResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto who = Authorize(ctx_, context, need::kObserve, "errand.v1.Jobs/ListJobs");
  absl::Status s = who.status();
  if (s.ok()) s = ValidateListJobs(*request);
  if (s.ok()) s = AllowQueue(*who, request->queue());
  if (!s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  dispatch::ListSpec spec;
  spec.queue = request->queue();
  spec.state = request->state();
  spec.newest_first = request->order() == v1::SORT_ORDER_NEWEST_FIRST;
  spec.page_size = *ParsePageSize(request->page_size(), "page_size");
  spec.after = *ParsePageToken(request->page_token(), "page_token");
  spec.omit_payload = request->omit_payload();
  ctx_->OnCore([ctx = ctx_, reactor, response, spec = std::move(spec)] {
    dispatch::ListPage page = ctx->engine->ListJobs(spec);
    for (v1::Job& j : page.jobs) *response->add_jobs() = std::move(j);
    response->set_next_page_token(MakePageToken(page.next));
    reactor->Finish(grpc::Status::OK);
  });
  return reactor;
}

}  // namespace errand::service
