#include "dispatch/ready_queue.h"

#include <cassert>

namespace errand::dispatch {

void ReadyQueue::Push(const Entry& e) {
  by_order_.insert(e);
  if (track_oldest_) by_seq_.insert(e);
}

bool ReadyQueue::Erase(const Entry& e) {
  if (by_order_.erase(e) == 0) return false;
  if (track_oldest_) by_seq_.erase(e);
  return true;
}

std::optional<ReadyQueue::Entry> ReadyQueue::Front() const {
  if (by_order_.empty()) return std::nullopt;
  return *by_order_.begin();
}

std::optional<ReadyQueue::Entry> ReadyQueue::PopFront() {
  if (by_order_.empty()) return std::nullopt;
  Entry e = *by_order_.begin();
  by_order_.erase(by_order_.begin());
  if (track_oldest_) by_seq_.erase(e);
  return e;
}

std::optional<ReadyQueue::Entry> ReadyQueue::Oldest() const {
  assert(track_oldest_);
  if (by_seq_.empty()) return std::nullopt;
  return *by_seq_.begin();
}

}  // namespace errand::dispatch
