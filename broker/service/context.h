#pragma once

#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <chrono>
#include <string>
#include <utility>

#include "auth/authenticator.h"
#include "commit/commit_pipeline.h"
#include "dispatch/engine.h"
#include "hub/event_hub.h"
#include "service/validate.h"
#include "util/clock.h"

namespace errand::service {

class WorkerRegistry;

// What the gRPC services share. Services run on gRPC callback threads: they
// validate, then post to core, and never block or touch the store.
struct ServiceContext {
  asio::io_context* core = nullptr;
  dispatch::Engine* engine = nullptr;  // Thread: core
  commit::CommitPipeline* pipeline = nullptr;
  hub::EventHub* hub = nullptr;  // Thread: core
  WorkerRegistry* workers = nullptr;  // Thread: core
  // How long a dropped Connect stream's leases are kept. Default: 10s.
  std::chrono::milliseconds worker_grace{10000};
  const util::Clock* clock = nullptr;
  Limits limits;
  bool sync_by_default = true;
  std::chrono::milliseconds sync_interval{100};
  std::chrono::system_clock::time_point started_at;
  uint64_t boot_epoch = 0;
  // Set on core when shutdown begins. Thread: core.
  mutable bool stopping = false;
  std::string version;

  // Security (--token-file): checks each call's bearer token; nullptr when
  // the broker runs without tokens (every call allowed). Outlives the
  // services.
  const auth::Authenticator* auth = nullptr;

  template <typename F>
  void OnCore(F&& f) const {
    asio::post(*core, std::forward<F>(f));
  }
};

}  // namespace errand::service
