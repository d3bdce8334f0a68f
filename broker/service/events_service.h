#pragma once

#include <grpcpp/support/byte_buffer.h>

#include "errand/v1/events.grpc.pb.h"
#include "service/context.h"

namespace errand::service {

// errand.v1.Events. Thread: gRPC callback threads; work runs on core.
//
// Subscribe is registered raw (bytes in, bytes out): it writes each event's
// one shared serialization to every subscriber (see NewSubscribeReactor).
// Server reflection still describes it with its proto types, which come
// from the descriptors, not from the handler.
class EventsService final : public v1::Events::CallbackService {
 public:
  explicit EventsService(const ServiceContext* ctx);

  // Events.Subscribe: parses the request itself (INVALID_ARGUMENT naming
  // the type when it does not parse, as the typed methods answer).
  grpc::ServerWriteReactor<grpc::ByteBuffer>* SubscribeRaw(grpc::CallbackServerContext* context,
                                                           const grpc::ByteBuffer* request);
  grpc::ServerUnaryReactor* Publish(grpc::CallbackServerContext* context,
                                    const v1::PublishRequest* request,
                                    v1::PublishResponse* response) override;

 private:
  const ServiceContext* const ctx_;
};

}  // namespace errand::service
