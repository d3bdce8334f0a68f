#pragma once

#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <chrono>
#include <string>
#include <utility>

#include "auth/authenticator.h"
#include "commit/commit_pipeline.h"
#include "service/call_limits.h"
#include "dispatch/engine.h"
#include "hub/event_hub.h"
#include "service/validate.h"
#include "util/clock.h"
#include "util/core_executor.h"

namespace errand::service {

class WorkerRegistry;

// What the gRPC services share. Services run on gRPC callback threads: they
// validate, then hand the rest to core (OnCore), and never block or touch the
// store outside it. "Thread: core" below means: only inside core's closures
// (util::CoreExecutor), whichever OS thread runs them.
struct ServiceContext {
  // Core's io_context: timers are created on it, and their handlers enter
  // core with OnCore.
  asio::io_context* core = nullptr;
  util::CoreExecutor* exec = nullptr;
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
  // Admits streams and long polls (--max-streams and friends); owned by the
  // Broker. nullptr: no limits. Thread: any.
  CallLimiter* call_limiter = nullptr;

  // A slot for one call of `kind` from the call's peer connection; an empty
  // slot when there are no limits.
  absl::StatusOr<CallLimiter::Slot> Admit(CallLimiter::Kind kind,
                                          const grpc::CallbackServerContext* context) const {
    if (call_limiter == nullptr) return CallLimiter::Slot();
    return call_limiter->Acquire(kind, context->peer());
  }

  // Security (--token-file): checks each call's bearer token; nullptr when
  // the broker runs without tokens (every call allowed). Outlives the
  // services.
  const auth::Authenticator* auth = nullptr;

  // Runs `f` in core: in place when core is idle (the calling gRPC thread
  // does the work and writes the answer itself), otherwise after what is
  // queued. Never nested in the closure that calls it.
  template <typename F>
  void OnCore(F&& f) const {
    exec->Run(std::forward<F>(f));
  }
};

}  // namespace errand::service
