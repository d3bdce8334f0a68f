#include "service/events_service.h"

#include "service/auth_check.h"
#include "service/call_limits.h"
#include "service/event_stream.h"
#include "service/grpc_status.h"
#include "service/parsed_bidi.h"
#include "util/time.h"

namespace errand::service {

EventsService::EventsService(const ServiceContext* ctx) : ctx_(ctx) {
  MarkMethodRawCallback(
      MethodIndex("errand.v1.Events.Subscribe", Streaming::kServer),
      new grpc::internal::CallbackServerStreamingHandler<grpc::ByteBuffer, grpc::ByteBuffer>(
          [this](grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
            return SubscribeRaw(context, request);
          }));
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* EventsService::SubscribeRaw(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw_request) {
  v1::SubscribeRequest request;
  if (absl::Status parsed = ParseRequest(*raw_request, &request); !parsed.ok()) {
    return RejectedWrite<grpc::ByteBuffer>(ToGrpc(parsed));
  }
  auto who = Authorize(ctx_, context, need::kObserve, "errand.v1.Events/Subscribe");
  absl::Status s = who.status();
  if (s.ok()) s = AllowSubscribe(*who, request);
  if (!s.ok()) return RejectedWrite<grpc::ByteBuffer>(ToGrpc(s));
  return NewSubscribeReactor(ctx_, context, &request);
}

grpc::ServerUnaryReactor* EventsService::Publish(grpc::CallbackServerContext* context,
                                                 const v1::PublishRequest* request,
                                                 v1::PublishResponse* response) {
  auto* reactor = context->DefaultReactor();
  auto who = Authorize(ctx_, context, need::kProduce, "errand.v1.Events/Publish");
  absl::Status s = who.status();
  if (s.ok()) s = ValidatePublish(*request, ctx_->limits);
  if (s.ok()) s = AllowQueue(*who, request->topic(), "topic");
  if (!s.ok()) {
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  commit::Mutation m;
  m.sync = request->durability() == v1::DURABILITY_SYNC ||
           (request->durability() == v1::DURABILITY_UNSPECIFIED && ctx_->sync_by_default);
  v1::Event ev;
  ev.set_type(v1::EVENT_TYPE_MESSAGE);
  *ev.mutable_time() = util::ToProto(ctx_->clock->Now());
  ev.set_topic(request->topic());
  ev.set_payload(request->payload());
  *ev.mutable_headers() = request->headers();
  m.events.push_back(std::move(ev));
  ctx_->OnCore([ctx = ctx_, reactor, response, m = std::move(m)]() mutable {
    if (ctx->stopping) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "broker is shutting down"));
      return;
    }
    ctx->pipeline->Submit(std::move(m), [ctx, reactor, response](commit::CommitResult&& r) {
      if (!r.status.ok()) {
        reactor->Finish(ToGrpc(r.status));
        return;
      }
      response->set_seq(r.first_event_seq);
      response->set_durability(r.synced ? v1::DURABILITY_SYNC : v1::DURABILITY_ASYNC);
      reactor->Finish(grpc::Status::OK);
    });
  });
  return reactor;
}

}  // namespace errand::service
