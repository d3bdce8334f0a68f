#pragma once

#include <absl/container/btree_set.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <tuple>

namespace errand::dispatch {

// READY jobs in delivery order: higher priority first, FIFO (by the order in
// which jobs became ready) within one priority.
//
// A B-tree of 24-byte entries (about 26-30 bytes per job with the node
// overhead, against 64 for a std::set node): a queue may hold millions of
// jobs.
//
// Thread: core. Not synchronised.
class ReadyQueue {
 public:

  struct Entry {
    int32_t priority;
    // Increases each time any job becomes ready; orders FIFO within a
    // priority.
    uint64_t ready_seq;
    uint64_t job_id;
  };

  void Push(const Entry& e);
  // Removes `e` if present; returns whether it was.
  bool Erase(const Entry& e);
  // The next job to deliver, without removing it.
  std::optional<Entry> Front() const;
  std::optional<Entry> PopFront();
  size_t size() const { return by_order_.size(); }
  bool empty() const { return by_order_.empty(); }

  // True when `a` is delivered before `b`.
  static bool Before(const Entry& a, const Entry& b) {
    return std::make_tuple(-static_cast<int64_t>(a.priority), a.ready_seq, a.job_id) <
           std::make_tuple(-static_cast<int64_t>(b.priority), b.ready_seq, b.job_id);
  }

 private:
  struct ByOrder {
    bool operator()(const Entry& a, const Entry& b) const { return Before(a, b); }
  };
  absl::btree_set<Entry, ByOrder> by_order_;
};

}  // namespace errand::dispatch
