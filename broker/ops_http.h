#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>

#include <chrono>
#include <memory>
#include <string>

#include "config.h"
#include "http/http_server.h"
#include "metrics/broker_metrics.h"
#include "service/context.h"
#include "store/job_store.h"

namespace errand {

// The operators' HTTP endpoints on --http-listen:
//   /metrics  Prometheus text format (metrics/broker_metrics.h)
//   /healthz  200 while the process serves HTTP at all
//   /readyz   200 when the store is open, the broker accepts writes (not
//             shutting down, the last commit did not fail) and the data
//             directory's filesystem has at least --ready-min-free-bytes
//             free; 503 with the reason otherwise
// Figures owned by core (queues, subscribers, long polls) are gathered by
// posting to core at scrape time, so the hot paths pay nothing for them;
// the rest are atomics or RocksDB properties read on the HTTP thread.
//
// Thread: Start and Stop from the main thread. REQUIRES: stopped before
// core stops and before the store closes.
class OpsHttp {
 public:
  // `ctx` and `store` must outlive this object.
  static absl::StatusOr<std::unique_ptr<OpsHttp>> Start(const Config& config,
                                                        const service::ServiceContext* ctx,
                                                        store::JobStore* store);
  OpsHttp(const OpsHttp&) = delete;
  OpsHttp& operator=(const OpsHttp&) = delete;

  int port() const { return server_->port(); }
  void Stop() { server_->Stop(); }

 private:
  OpsHttp(const Config& config, const service::ServiceContext* ctx, store::JobStore* store)
      : config_(config), ctx_(ctx), store_(store) {}

  http::Response Metrics();
  http::Response Readyz();
  // Copies what core owns into `s` (nullptr: only `stopping`); false when
  // core did not answer in time.
  bool GatherOnCore(metrics::BrokerSample* s, bool* stopping);
  // OK when ready, else why not.
  absl::Status Readiness(bool core_answered, bool stopping) const;

  const Config config_;
  const service::ServiceContext* const ctx_;
  store::JobStore* const store_;
  std::unique_ptr<http::HttpServer> server_;
};

}  // namespace errand
