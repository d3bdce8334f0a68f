#pragma once

#include "errand/v1/workers.grpc.pb.h"
#include "service/context.h"

namespace errand::service {

// errand.v1.Workers. Thread: gRPC callback threads; work runs on core.
class WorkersService final : public v1::Workers::CallbackService {
 public:
  // `ctx` must outlive the service.
  // Connect is registered raw (see service/parsed_bidi.h).
  explicit WorkersService(const ServiceContext* ctx);

  grpc::ServerUnaryReactor* Lease(grpc::CallbackServerContext* context,
                                  const v1::LeaseRequest* request,
                                  v1::LeaseResponse* response) override;
  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* context,
                                     const v1::CompleteRequest* request,
                                     v1::CompleteResponse* response) override;
  grpc::ServerUnaryReactor* Fail(grpc::CallbackServerContext* context,
                                 const v1::FailRequest* request,
                                 v1::FailResponse* response) override;
  grpc::ServerUnaryReactor* Extend(grpc::CallbackServerContext* context,
                                   const v1::ExtendRequest* request,
                                   v1::ExtendResponse* response) override;

 private:
  // Connect, raw: the reactor parses each message itself.
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ConnectRaw(
      grpc::CallbackServerContext* context);

  const ServiceContext* const ctx_;
};

}  // namespace errand::service
