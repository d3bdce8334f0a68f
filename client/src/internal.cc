#include "internal.h"

#include <cmath>
#include <cstdio>

namespace errand::internal {
namespace {

std::mt19937_64& Rng() {
  thread_local std::mt19937_64 rng([] {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd() ^
           static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }());
  return rng;
}

}  // namespace

std::chrono::milliseconds Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max,
                                  double multiplier, int n) {
  double ms = static_cast<double>(initial.count()) * std::pow(std::max(1.0, multiplier), n - 1);
  ms = std::min(ms, static_cast<double>(max.count()));
  std::uniform_real_distribution<double> jitter(0.8, 1.2);
  ms *= jitter(Rng());
  return std::chrono::milliseconds(std::max<int64_t>(1, static_cast<int64_t>(ms)));
}

std::chrono::milliseconds BackoffFor(const RetryPolicy& p, int n) {
  return Backoff(p.initial_backoff, p.max_backoff, p.multiplier, n);
}

std::string RandomKey() {
  char buf[33];
  uint64_t a = Rng()(), b = Rng()();
  std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(a),
                static_cast<unsigned long long>(b));
  return buf;
}

Scheduler::Scheduler() : thread_([this] { Run(); }) {}

Scheduler::~Scheduler() { Stop(); }

void Scheduler::After(std::chrono::milliseconds delay, std::function<void()> fn) {
  std::unique_lock<std::mutex> lock(mu_);
  if (stop_) {
    lock.unlock();
    fn();  // The owner is closing: run at once, it reports CANCELLED.
    return;
  }
  tasks_.emplace(std::chrono::steady_clock::now() + delay, std::move(fn));
  cv_.notify_one();
}

void Scheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    stop_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

void Scheduler::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (stop_) {
      // Run whatever is left at once.
      while (!tasks_.empty()) {
        auto fn = std::move(tasks_.begin()->second);
        tasks_.erase(tasks_.begin());
        lock.unlock();
        fn();
        lock.lock();
      }
      return;
    }
    if (tasks_.empty()) {
      cv_.wait(lock);
      continue;
    }
    auto first = tasks_.begin()->first;
    if (std::chrono::steady_clock::now() < first) {
      cv_.wait_until(lock, first);
      continue;
    }
    auto fn = std::move(tasks_.begin()->second);
    tasks_.erase(tasks_.begin());
    lock.unlock();
    fn();
    lock.lock();
  }
}

}  // namespace errand::internal
