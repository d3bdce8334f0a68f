#pragma once

#include "errand/v1/workers.grpc.pb.h"
#include "service/context.h"

namespace errand::service {

// errand.v1.Workers. Thread: gRPC callback threads; work runs on core.
class WorkersService final : public v1::Workers::CallbackService {
 public:
  // `ctx` must outlive the service.
  explicit WorkersService(const ServiceContext* ctx) : ctx_(ctx) {}

  grpc::ServerUnaryReactor* Lease(grpc::CallbackServerContext* context,
                                  const v1::LeaseRequest* request,
                                  v1::LeaseResponse* response) override;
  grpc::ServerBidiReactor<v1::ConnectRequest, v1::ConnectResponse>* Connect(
      grpc::CallbackServerContext* context) override;
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
  const ServiceContext* const ctx_;
};

}  // namespace errand::service
