#pragma once

#include <grpcpp/grpcpp.h>

#include "errand/v1/events.pb.h"
#include "errand/v1/jobs.pb.h"
#include "service/context.h"

namespace errand::service {

// Events.Subscribe: a server stream fed by the EventHub.
// Thread: gRPC reactions post to core; only core writes and finishes.
// While open it counts as a subscriber and a stream (--max-subscribers,
// --max-streams, --max-streams-per-connection); so does EnqueueAndWatch.
grpc::ServerWriteReactor<v1::SubscribeResponse>* NewSubscribeReactor(
    const ServiceContext* ctx, grpc::CallbackServerContext* context,
    const v1::SubscribeRequest* request);

// Jobs.EnqueueAndWatch: enqueue, then stream the job's events until it ends.
grpc::ServerWriteReactor<v1::WatchJobResponse>* NewWatchReactor(
    const ServiceContext* ctx, grpc::CallbackServerContext* context,
    const v1::EnqueueRequest* request);

}  // namespace errand::service
