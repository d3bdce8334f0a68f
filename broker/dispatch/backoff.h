#pragma once

#include <chrono>
#include <cstdint>

namespace errand::dispatch {

// Exponential backoff with jitter.
struct BackoffPolicy {
  std::chrono::microseconds initial{std::chrono::seconds(1)};
  std::chrono::microseconds max{std::chrono::minutes(5)};
  double multiplier = 2.0;
  // Fraction of the wait that is random, in [0, 1].
  double jitter = 0.5;
};

// The wait before the retry that follows failed attempt number `attempt`
// (1-based): min(max, initial * multiplier^(attempt-1)) * (1 - jitter * u)
// with u in [0, 1). `u` is passed in so tests are deterministic.
std::chrono::microseconds ComputeBackoff(const BackoffPolicy& policy, uint32_t attempt, double u);

}  // namespace errand::dispatch
