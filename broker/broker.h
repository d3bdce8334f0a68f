#pragma once

#include <absl/status/statusor.h>
#include <grpcpp/grpcpp.h>

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/thread_pool.hpp>
#include <chrono>
#include <memory>
#include <thread>

#include "auth/authenticator.h"
#include "commit/commit_pipeline.h"
#include "config.h"
#include "dispatch/engine.h"
#include "hub/event_hub.h"
#include "ops_http.h"
#include "service/admin_service.h"
#include "service/context.h"
#include "service/events_service.h"
#include "service/jobs_service.h"
#include "service/worker_stream.h"
#include "service/workers_service.h"
#include "store/job_store.h"
#include "util/clock.h"
#include "util/core_executor.h"

namespace errand {

// The composition root: owns the store, the commit pipeline, the core thread
// with its Engine, and the gRPC server, and starts and stops them in order.
//
// Thread: Start and Stop are called from the main thread.
class Broker {
 public:
  // Opens the store, recovers, starts every thread and serves.
  static absl::StatusOr<std::unique_ptr<Broker>> Start(const Config& config);
  ~Broker();
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  // The bound gRPC port.
  int port() const { return port_; }
  // The bound HTTP port (/metrics, /healthz, /readyz); 0 when disabled.
  int http_port() const { return ops_http_ ? ops_http_->port() : 0; }

  // Graceful stop: refuse new work, answer waiting calls, let in-flight calls
  // finish (up to the shutdown grace), commit and fsync everything queued,
  // close the store. Idempotent.
  absl::Status Stop();

  // SIGHUP: re-reads --token-file. On error the current tokens stay and the
  // status says why; FAILED_PRECONDITION when the broker runs without one.
  absl::Status ReloadTokens();

 private:
  // Waits (up to `limit`) until every write submitted so far has committed
  // and its answer ran on core: the pipeline must be seen idle twice in a
  // row, since the results of the last write are posted to core before it
  // reports idle and the second look runs after them. Thread: not core.
  void AwaitCommitsAnswered(std::chrono::steady_clock::duration limit);
  explicit Broker(const Config& config) : config_(config) {}

  Config config_;
  util::SystemClock clock_;
  std::unique_ptr<store::JobStore> store_;
  asio::io_context core_{1};
  // Core: closures run one at a time, in place on the calling thread when
  // core is idle, else by whoever runs it (see util/core_executor.h).
  util::CoreExecutor exec_{core_};
  std::unique_ptr<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::thread core_thread_;
  std::unique_ptr<commit::CommitPipeline> pipeline_;
  std::unique_ptr<dispatch::Engine> engine_;
  asio::thread_pool readers_{1};  // event log reads for catching-up subscribers
  std::unique_ptr<hub::EventHub> hub_;
  service::WorkerRegistry workers_;  // Thread: core
  service::ServiceContext ctx_;
  // Admits streams and long polls; outlives the server (slots are released
  // as gRPC deletes reactors).
  std::unique_ptr<service::CallLimiter> call_limiter_;
  std::unique_ptr<service::JobsService> jobs_service_;
  std::unique_ptr<service::WorkersService> workers_service_;
  std::unique_ptr<service::EventsService> events_service_;
  std::unique_ptr<service::AdminService> admin_service_;
  std::unique_ptr<auth::Authenticator> auth_;  // null without --token-file
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool stopped_ = false;
  std::unique_ptr<OpsHttp> ops_http_;  // --http-listen; stopped before core
};

}  // namespace errand
