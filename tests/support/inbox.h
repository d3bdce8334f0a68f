#pragma once

#include <absl/base/thread_annotations.h>
#include <absl/synchronization/mutex.h>
#include <absl/time/time.h>

#include <deque>
#include <functional>

namespace errand::testing {

// Stands in for the broker's core thread in unit tests: a component posts
// closures here (Poster(), e.g. as the CommitPipeline's `post`) and the test
// thread runs them.
class Inbox {
 public:
  std::function<void(std::function<void()>)> Poster() {
    return [this](std::function<void()> fn) {
      absl::MutexLock lock(&mu_);
      closures_.push_back(std::move(fn));
    };
  }

  // Runs posted closures until `done()` holds; false if `timeout` passes first.
  bool RunUntil(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(20)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!done()) {
      std::deque<std::function<void()>> batch;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !closures_.empty(); };
        if (!mu_.AwaitWithDeadline(absl::Condition(&ready), deadline)) return done();
        batch.swap(closures_);
      }
      for (auto& fn : batch) fn();
    }
    return true;
  }

 private:
  absl::Mutex mu_;
  std::deque<std::function<void()>> closures_ ABSL_GUARDED_BY(mu_);
};

}  // namespace errand::testing
