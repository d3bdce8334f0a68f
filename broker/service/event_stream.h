#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include "errand/v1/events.pb.h"
#include "errand/v1/jobs.pb.h"
#include "hub/event_hub.h"
#include "service/context.h"

namespace errand::service {

// The bytes of a response message whose one field set is the event, field
// number `field` (SubscribeResponse.event is 1, WatchJobResponse.event 2):
// the field's tag and length, then the event's serialization, shared with
// every other response made of the same event (not copied).
// Thread: any.
grpc::ByteBuffer EventResponseBytes(int field, const hub::SharedEvent& ev);

// Events.Subscribe: a server stream fed by the EventHub; it writes each
// event as the bytes of a SubscribeResponse (EventResponseBytes), so the
// method is registered raw (see EventsService).
// Thread: core queues events and finishes; writes go on from gRPC's thread.
// While open it counts as a subscriber and a stream (--max-subscribers,
// --max-streams, --max-streams-per-connection); so does EnqueueAndWatch.
grpc::ServerWriteReactor<grpc::ByteBuffer>* NewSubscribeReactor(
    const ServiceContext* ctx, grpc::CallbackServerContext* context,
    const v1::SubscribeRequest* request);

// Jobs.EnqueueAndWatch: enqueue, then stream the job's events until it ends.
grpc::ServerWriteReactor<v1::WatchJobResponse>* NewWatchReactor(
    const ServiceContext* ctx, grpc::CallbackServerContext* context,
    const v1::EnqueueRequest* request);

}  // namespace errand::service
