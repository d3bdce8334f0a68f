#include "dispatch/backoff.h"

#include <algorithm>
#include <cmath>

namespace errand::dispatch {

std::chrono::microseconds ComputeBackoff(const BackoffPolicy& policy, uint32_t attempt,
                                         double u) {
  const double max_us = static_cast<double>(policy.max.count());
  double base = static_cast<double>(policy.initial.count());
  const double mult = std::max(1.0, policy.multiplier);
  for (uint32_t i = 1; i < attempt && base < max_us; ++i) base *= mult;
  base = std::min(base, max_us);
  const double jitter = std::clamp(policy.jitter, 0.0, 1.0);
  u = std::clamp(u, 0.0, 1.0);
  double wait = base * (1.0 - jitter * u);
  return std::chrono::microseconds(static_cast<int64_t>(std::max(0.0, wait)));
}

}  // namespace errand::dispatch
