#pragma once

// Helpers shared by the client library's sources. Not part of the API.

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "errand/options.h"

namespace errand::internal {

inline absl::Status ToAbsl(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

inline std::chrono::system_clock::time_point After(std::chrono::milliseconds d) {
  return std::chrono::system_clock::now() + d;
}

// The n-th wait (n >= 1) of a retry policy, with +-20% jitter.
std::chrono::milliseconds BackoffFor(const RetryPolicy& p, int n);
std::chrono::milliseconds Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max,
                                  double multiplier, int n);

// A random 128-bit value as 32 lowercase hex digits.
std::string RandomKey();

// Runs functions at given times on one thread. Stop() runs every function
// still queued at once (they see the owner's closing flag), then joins.
// Thread-safe.
class Scheduler {
 public:
  Scheduler();
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;
  // Runs `fn` on the scheduler thread after `delay`.
  void After(std::chrono::milliseconds delay, std::function<void()> fn);
  void Stop();

 private:
  void Run();
  std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<std::chrono::steady_clock::time_point, std::function<void()>> tasks_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace errand::internal
