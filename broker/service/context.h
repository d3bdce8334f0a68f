#pragma once

#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <chrono>
#include <string>
#include <utility>

#include "commit/commit_pipeline.h"
#include "dispatch/engine.h"
#include "service/validate.h"
#include "util/clock.h"

namespace errand::service {

// What the gRPC services share. Services run on gRPC callback threads: they
// validate, then post to core, and never block or touch the store.
struct ServiceContext {
  asio::io_context* core = nullptr;
  dispatch::Engine* engine = nullptr;  // Thread: core
  const commit::CommitPipeline* pipeline = nullptr;
  const util::Clock* clock = nullptr;
  Limits limits;
  bool sync_by_default = true;
  std::chrono::milliseconds sync_interval{100};
  std::chrono::system_clock::time_point started_at;
  uint64_t boot_epoch = 0;
  std::string version;

  template <typename F>
  void OnCore(F&& f) const {
    asio::post(*core, std::forward<F>(f));
  }
};

}  // namespace errand::service
