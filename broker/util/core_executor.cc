#include "util/core_executor.h"

#include <asio/post.hpp>
#include <utility>
#include <vector>

namespace errand::util {
namespace {

thread_local int in_core_depth = 0;
// The AfterThisClosure hooks of the closure running on this thread (null
// outside Drain).
thread_local std::vector<CoreExecutor::Fn>* after_closure = nullptr;

struct InCoreScope {
  explicit InCoreScope(std::vector<CoreExecutor::Fn>* hooks) : saved(after_closure) {
    ++in_core_depth;
    after_closure = hooks;
  }
  ~InCoreScope() {
    --in_core_depth;
    after_closure = saved;
  }
  std::vector<CoreExecutor::Fn>* const saved;
};

void RunHooks(std::vector<CoreExecutor::Fn>& hooks) {
  for (size_t i = 0; i < hooks.size(); ++i) {
    CoreExecutor::Fn f = std::move(hooks[i]);  // a hook may add hooks (and grow the vector)
    std::move(f)();
  }
  hooks.clear();
}

}  // namespace

bool CoreExecutor::InCore() { return in_core_depth > 0; }

void CoreExecutor::AfterThisClosure(Fn f) {
  if (after_closure == nullptr) {
    std::move(f)();
    return;
  }
  after_closure->push_back(std::move(f));
}

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
  std::vector<Fn> hooks;
  InCoreScope scope(&hooks);
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
    RunHooks(hooks);
  }
  WakeCoreThread();
}

CoreExecutor::Counts CoreExecutor::counts() const {
  absl::MutexLock lock(&mu_);
  return counts_;
}

}  // namespace errand::util
