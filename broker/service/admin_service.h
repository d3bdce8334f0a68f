#pragma once

#include "errand/v1/admin.grpc.pb.h"
#include "service/context.h"

namespace errand::service {

// errand.v1.Admin. Thread: gRPC callback threads; work runs on core.
class AdminService final : public v1::Admin::CallbackService {
 public:
  explicit AdminService(const ServiceContext* ctx) : ctx_(ctx) {}

  grpc::ServerUnaryReactor* ListQueues(grpc::CallbackServerContext* context,
                                       const v1::ListQueuesRequest* request,
                                       v1::ListQueuesResponse* response) override;
  grpc::ServerUnaryReactor* GetQueueStats(grpc::CallbackServerContext* context,
                                          const v1::GetQueueStatsRequest* request,
                                          v1::GetQueueStatsResponse* response) override;
  grpc::ServerUnaryReactor* PauseQueue(grpc::CallbackServerContext* context,
                                       const v1::PauseQueueRequest* request,
                                       v1::PauseQueueResponse* response) override;
  grpc::ServerUnaryReactor* ResumeQueue(grpc::CallbackServerContext* context,
                                        const v1::ResumeQueueRequest* request,
                                        v1::ResumeQueueResponse* response) override;
  grpc::ServerUnaryReactor* PurgeQueue(grpc::CallbackServerContext* context,
                                       const v1::PurgeQueueRequest* request,
                                       v1::PurgeQueueResponse* response) override;
  grpc::ServerUnaryReactor* ListDeadJobs(grpc::CallbackServerContext* context,
                                         const v1::ListDeadJobsRequest* request,
                                         v1::ListDeadJobsResponse* response) override;
  grpc::ServerUnaryReactor* RedriveJobs(grpc::CallbackServerContext* context,
                                        const v1::RedriveJobsRequest* request,
                                        v1::RedriveJobsResponse* response) override;
  grpc::ServerUnaryReactor* SetQueueConfig(grpc::CallbackServerContext* context,
                                           const v1::SetQueueConfigRequest* request,
                                           v1::SetQueueConfigResponse* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request,
                                          v1::GetServerInfoResponse* response) override;

 private:
  const ServiceContext* const ctx_;
};

}  // namespace errand::service
