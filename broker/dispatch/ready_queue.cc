#include "dispatch/ready_queue.h"

namespace errand::dispatch {

void ReadyQueue::Push(const Entry& e) { by_order_.insert(e); }

bool ReadyQueue::Erase(const Entry& e) { return by_order_.erase(e) != 0; }

std::optional<ReadyQueue::Entry> ReadyQueue::Front() const {
  if (by_order_.empty()) return std::nullopt;
  return *by_order_.begin();
}

std::optional<ReadyQueue::Entry> ReadyQueue::PopFront() {
  if (by_order_.empty()) return std::nullopt;
  Entry e = *by_order_.begin();
  by_order_.erase(by_order_.begin());
  return e;
}

}  // namespace errand::dispatch
