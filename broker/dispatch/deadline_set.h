#pragma once

#include <absl/container/btree_set.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "util/clock.h"

namespace errand::dispatch {

// Job ids keyed by a time: lease deadlines, run_at times of scheduled jobs
// (on util::Clock), the deadlines of long polls (on the steady clock, see
// WaitDeadlines). The broker arms one timer at Earliest() instead of one per
// job (as beanstalkd's prottick does). A B-tree: millions of scheduled jobs
// cost ~20 bytes each, not a 64-byte std::set node.
//
// Thread: core. Not synchronised.
template <class Time>
class BasicDeadlineSet {
 public:
  using TimePoint = Time;

  void Add(TimePoint t, uint64_t job_id) { set_.emplace(t, job_id); }
  bool Remove(TimePoint t, uint64_t job_id) { return set_.erase({t, job_id}) > 0; }
  std::optional<TimePoint> Earliest() const {
    if (set_.empty()) return std::nullopt;
    return set_.begin()->first;
  }
  // Removes and returns every id whose time is <= now, earliest first.
  std::vector<uint64_t> PopDue(TimePoint now) {
    std::vector<uint64_t> due;
    while (!set_.empty() && set_.begin()->first <= now) {
      due.push_back(set_.begin()->second);
      set_.erase(set_.begin());
    }
    return due;
  }
  // As PopDue, but at most `limit` ids.
  std::vector<uint64_t> PopDue(TimePoint now, size_t limit) {
    std::vector<uint64_t> due;
    while (due.size() < limit && !set_.empty() && set_.begin()->first <= now) {
      due.push_back(set_.begin()->second);
      set_.erase(set_.begin());
    }
    return due;
  }
  size_t size() const { return set_.size(); }

 private:
  absl::btree_set<std::pair<TimePoint, uint64_t>> set_;
};

using DeadlineSet = BasicDeadlineSet<util::Clock::TimePoint>;

}  // namespace errand::dispatch
