#include "service/events_service.h"

#include "service/unimplemented.h"

namespace errand::service {

grpc::ServerWriteReactor<v1::SubscribeResponse>* EventsService::Subscribe(
    grpc::CallbackServerContext*, const v1::SubscribeRequest*) {
  return new UnimplementedWriter<v1::SubscribeResponse>("errand.v1.Events/Subscribe");
}

grpc::ServerUnaryReactor* EventsService::Publish(grpc::CallbackServerContext* context,
                                                 const v1::PublishRequest*,
                                                 v1::PublishResponse*) {
  return UnimplementedUnary(context, "errand.v1.Events/Publish");
}

}  // namespace errand::service
