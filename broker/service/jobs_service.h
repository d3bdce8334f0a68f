#pragma once

#include "errand/v1/jobs.grpc.pb.h"
#include "service/context.h"

namespace errand::service {

// errand.v1.Jobs. Thread: gRPC callback threads; work runs on core.
class JobsService final : public v1::Jobs::CallbackService {
 public:
  // `ctx` must outlive the service.
  // EnqueueStream and EnqueueBatch are registered raw (see
  // service/parsed_bidi.h, EnqueueBatchRaw).
  explicit JobsService(const ServiceContext* ctx);

  grpc::ServerUnaryReactor* Enqueue(grpc::CallbackServerContext* context,
                                    const v1::EnqueueRequest* request,
                                    v1::EnqueueResponse* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const v1::GetJobRequest* request,
                                   v1::GetJobResponse* response) override;
  grpc::ServerUnaryReactor* WaitJob(grpc::CallbackServerContext* context,
                                    const v1::WaitJobRequest* request,
                                    v1::WaitJobResponse* response) override;
  grpc::ServerWriteReactor<v1::WatchJobResponse>* EnqueueAndWatch(
      grpc::CallbackServerContext* context, const v1::EnqueueRequest* request) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const v1::CancelJobRequest* request,
                                      v1::CancelJobResponse* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override;

 private:
  // EnqueueBatch, raw: the jobs are counted against --max-batch in the bytes
  // before they are parsed.
  grpc::ServerUnaryReactor* EnqueueBatchRaw(grpc::CallbackServerContext* context,
                                            const grpc::ByteBuffer* raw_request,
                                            grpc::ByteBuffer* raw_response);
  // EnqueueStream, raw: the reactor parses each message itself.
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* EnqueueStreamRaw(
      grpc::CallbackServerContext* context);

  const ServiceContext* const ctx_;
};

}  // namespace errand::service
