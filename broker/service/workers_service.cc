#include "service/workers_service.h"

#include <memory>

#include "service/auth_check.h"
#include "service/call_limits.h"
#include "service/grpc_status.h"
#include "service/parsed_bidi.h"
#include "service/worker_stream.h"
#include "util/time.h"

namespace errand::service {
namespace {

// A long-polling Lease call. The client may go away while it waits: OnCancel
// then withdraws the waiter on core. `State` lives on core only; the reactor
// is deleted by gRPC after Finish, so core never touches it after finishing.
class LeaseReactor final : public grpc::ServerUnaryReactor {
 public:
  struct State {
    LeaseReactor* reactor = nullptr;
    bool finished = false;
    uint64_t waiter_id = 0;
  };

  LeaseReactor(const ServiceContext* ctx, v1::LeaseResponse* response, CallLimiter::Slot slot)
      : ctx_(ctx), response_(response), slot_(std::move(slot)),
        state_(std::make_shared<State>()) {
    state_->reactor = this;
  }

  void Start(dispatch::LeaseSpec spec) {
    ctx_->OnCore([ctx = ctx_, st = state_, response = response_, spec = std::move(spec)]() mutable {
      uint64_t wid = ctx->engine->Lease(
          std::move(spec), [st, response](absl::StatusOr<std::vector<v1::Lease>> r) {
            if (st->finished) return;
            st->finished = true;
            if (!r.ok()) {
              st->reactor->Finish(ToGrpc(r.status()));
              return;
            }
            for (v1::Lease& l : *r) *response->add_leases() = std::move(l);
            st->reactor->Finish(grpc::Status::OK);
          });
      if (!st->finished) st->waiter_id = wid;
    });
  }

  void OnCancel() override {
    ctx_->OnCore([ctx = ctx_, st = state_] {
      if (st->finished || st->waiter_id == 0) return;
      if (!ctx->engine->CancelLeaseWait(st->waiter_id)) return;  // being answered
      st->finished = true;
      st->reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "lease wait cancelled"));
    });
  }

  void OnDone() override { delete this; }

 private:
  const ServiceContext* const ctx_;
  v1::LeaseResponse* const response_;
  CallLimiter::Slot slot_;  // --max-long-polls; released when gRPC deletes the reactor
  std::shared_ptr<State> state_;
};

}  // namespace

grpc::ServerUnaryReactor* WorkersService::Lease(grpc::CallbackServerContext* context,
                                                const v1::LeaseRequest* request,
                                                v1::LeaseResponse* response) {
  auto who = Authorize(ctx_, context, need::kWork, "errand.v1.Workers/Lease");
  absl::Status s = who.status();
  if (s.ok()) s = ValidateLease(*request);
  for (int i = 0; s.ok() && i < request->queues_size(); ++i) {
    s = AllowQueue(*who, request->queues(i));
  }
  // Only a Lease that may wait is a long poll.
  absl::StatusOr<CallLimiter::Slot> slot = CallLimiter::Slot();
  if (s.ok() && (request->wait().seconds() > 0 || request->wait().nanos() > 0)) {
    slot = ctx_->Admit(CallLimiter::Kind::kLongPoll, context);
    s = slot.status();
  }
  if (!s.ok()) {
    auto* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  dispatch::LeaseSpec spec;
  spec.queues.assign(request->queues().begin(), request->queues().end());
  spec.max_jobs = request->max_jobs() == 0 ? 1 : request->max_jobs();
  spec.wait = util::DurationFromProto(request->wait());
  spec.lease_duration = util::DurationFromProto(request->lease_duration());
  spec.worker_id = request->worker_id();
  if (spec.worker_id.empty()) spec.worker_id = context->peer();
  auto* reactor = new LeaseReactor(ctx_, response, std::move(*slot));
  reactor->Start(std::move(spec));
  return reactor;
}

WorkersService::WorkersService(const ServiceContext* ctx) : ctx_(ctx) {
  MarkMethodRawCallback(MethodIndex("errand.v1.Workers.Connect", Streaming::kBidi),
                        RawBidiHandler([this](grpc::CallbackServerContext* context) {
                          return ConnectRaw(context);
                        }));
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* WorkersService::ConnectRaw(
    grpc::CallbackServerContext* context) {
  auto who = Authorize(ctx_, context, need::kWork, "errand.v1.Workers/Connect");
  if (!who.ok()) {
    return RejectedBidi<grpc::ByteBuffer, grpc::ByteBuffer>(ToGrpc(who.status()));
  }
  return NewWorkerStream(ctx_, context, std::move(*who));
}

grpc::ServerUnaryReactor* WorkersService::Complete(grpc::CallbackServerContext* context,
                                                   const v1::CompleteRequest* request,
                                                   v1::CompleteResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto who = Authorize(ctx_, context, need::kWork, "errand.v1.Workers/Complete");
  absl::Status s = who.status();
  if (s.ok()) s = ValidateComplete(*request, ctx_->limits);
  if (!s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  uint64_t id = *ParseJobIdField(request->job_id(), "job_id");
  ctx_->OnCore([ctx = ctx_, reactor, response, id, token = request->lease_token(),
                result = request->result(), who = std::move(*who)]() mutable {
    if (auto s = AllowJob(ctx, who, id); !s.ok()) {
      reactor->Finish(ToGrpc(s));
      return;
    }
    ctx->engine->Complete(id, token, std::move(result),
                          [reactor, response](absl::StatusOr<v1::Job> r) {
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

grpc::ServerUnaryReactor* WorkersService::Fail(grpc::CallbackServerContext* context,
                                               const v1::FailRequest* request,
                                               v1::FailResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto who = Authorize(ctx_, context, need::kWork, "errand.v1.Workers/Fail");
  absl::Status s = who.status();
  if (s.ok()) s = ValidateFail(*request, ctx_->limits);
  if (!s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  uint64_t id = *ParseJobIdField(request->job_id(), "job_id");
  dispatch::FailSpec spec;
  spec.error = request->error();
  spec.retry_after = util::DurationFromProto(request->retry_after());
  spec.non_retryable = request->non_retryable();
  ctx_->OnCore([ctx = ctx_, reactor, response, id, token = request->lease_token(),
                spec = std::move(spec), who = std::move(*who)]() mutable {
    if (auto s = AllowJob(ctx, who, id); !s.ok()) {
      reactor->Finish(ToGrpc(s));
      return;
    }
    ctx->engine->Fail(id, token, std::move(spec), [reactor, response](absl::StatusOr<v1::Job> r) {
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

grpc::ServerUnaryReactor* WorkersService::Extend(grpc::CallbackServerContext* context,
                                                 const v1::ExtendRequest* request,
                                                 v1::ExtendResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto who = Authorize(ctx_, context, need::kWork, "errand.v1.Workers/Extend");
  absl::Status s = who.status();
  if (s.ok()) s = ValidateExtend(*request);
  if (!s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  uint64_t id = *ParseJobIdField(request->job_id(), "job_id");
  std::optional<v1::Progress> progress;
  if (request->has_progress()) progress = request->progress();
  ctx_->OnCore([ctx = ctx_, reactor, response, id, token = request->lease_token(),
                by = util::DurationFromProto(request->extend_by()),
                progress = std::move(progress), who = std::move(*who)]() mutable {
    if (auto s = AllowJob(ctx, who, id); !s.ok()) {
      reactor->Finish(ToGrpc(s));
      return;
    }
    ctx->engine->Extend(id, token, by, std::move(progress),
                        [reactor, response](absl::StatusOr<dispatch::ExtendOutcome> r) {
                          if (!r.ok()) {
                            reactor->Finish(ToGrpc(r.status()));
                            return;
                          }
                          *response->mutable_deadline() = util::ToProto(r->deadline);
                          response->set_cancel_requested(r->cancel_requested);
                          reactor->Finish(grpc::Status::OK);
                        });
  });
  return reactor;
}

}  // namespace errand::service
