#pragma once

#include "errand/v1/events.grpc.pb.h"
#include "service/context.h"

namespace errand::service {

// errand.v1.Events. Thread: gRPC callback threads; work runs on core.
class EventsService final : public v1::Events::CallbackService {
 public:
  explicit EventsService(const ServiceContext* ctx) : ctx_(ctx) {}

  grpc::ServerWriteReactor<v1::SubscribeResponse>* Subscribe(
      grpc::CallbackServerContext* context, const v1::SubscribeRequest* request) override;
  grpc::ServerUnaryReactor* Publish(grpc::CallbackServerContext* context,
                                    const v1::PublishRequest* request,
                                    v1::PublishResponse* response) override;

 private:
  const ServiceContext* const ctx_;
};

}  // namespace errand::service
