#include "util/core_executor.h"

#include <asio/post.hpp>
#include <utility>

namespace errand::util {
namespace {

thread_local int in_core_depth = 0;

struct InCoreScope {
  InCoreScope() { ++in_core_depth; }
  ~InCoreScope() { --in_core_depth; }
};

}  // namespace

bool CoreExecutor::InCore() { return in_core_depth > 0; }

void CoreExecutor::Run(Fn f) {
  bool closed;
  {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(f));
    if (running_) return;  // whoever runs core runs it
    running_ = true;
    closed = closed_;
  }
  if (closed) {
    WakeCoreThread();
    return;
  }
  Drain(max_in_place_, /*on_core_thread=*/false);
}

void CoreExecutor::Post(Fn f) {
  {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(f));
    if (running_) return;
    running_ = true;
  }
  WakeCoreThread();
}

void CoreExecutor::CloseInPlace() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
}

void CoreExecutor::WakeCoreThread() {
  asio::post(io_, [this] { Drain(max_in_place_, /*on_core_thread=*/true); });
}

void CoreExecutor::Drain(size_t limit, bool on_core_thread) {
  InCoreScope scope;
  for (size_t n = 0;; ++n) {
    Fn next;
    {
      absl::MutexLock lock(&mu_);
      if (queue_.empty()) {
        running_ = false;
        return;
      }
      if (n == limit) break;  // still owns core: hand it to the core thread
      next = std::move(queue_.front());
      queue_.pop_front();
      (on_core_thread ? counts_.core_thread : counts_.in_place)++;
    }
    std::move(next)();
  }
  WakeCoreThread();
}

CoreExecutor::Counts CoreExecutor::counts() const {
  absl::MutexLock lock(&mu_);
  return counts_;
}

}  // namespace errand::util
