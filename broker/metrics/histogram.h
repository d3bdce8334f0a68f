#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

namespace errand::metrics {

// A Prometheus-style histogram with fixed bucket bounds. Observe is
// lock-free (relaxed atomics), so the hot path that records pays a few
// uncontended atomic adds; Read gathers a consistent-enough copy for a
// scrape (count is the sum of the buckets read).
//
// Thread: any, for Observe and Read.
class Histogram {
 public:
  // `upper_bounds` ascending; an implicit +Inf bucket follows the last.
  explicit Histogram(std::vector<double> upper_bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  void Observe(double value);

  struct Snapshot {
    std::vector<double> bounds;       // as given
    std::vector<uint64_t> cumulative;  // per bound, then +Inf (bounds.size() + 1)
    uint64_t count = 0;                // == cumulative.back()
    double sum = 0;
  };
  Snapshot Read() const;

  // 1, 2, 4, ... up to `max` (a power of two).
  static std::vector<double> PowersOfTwo(double max);
  // `start`, start*factor, ... `count` bounds.
  static std::vector<double> Exponential(double start, double factor, int count);

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // bounds_.size() + 1
  std::atomic<double> sum_{0};
};

}  // namespace errand::metrics
