#pragma once

#include <cstddef>
#include <mutex>
#include <new>
#include <vector>

namespace errand::util {

// Memory for many objects of one size and alignment: slabs of slots, carved
// without malloc's per-allocation header (16 bytes on glibc, which rounds a
// 112-byte object up to a 128-byte chunk). A freed slot is reused first.
// Slabs are given back only when the pool is destroyed: the pool suits a
// table that may hold millions of objects at its peak and keeps what it grew
// to, as the heap would.
//
// Thread-safe (one mutex; uncontended where one thread allocates).
template <size_t kSize, size_t kAlign>
class FixedPool {
 public:
  FixedPool() = default;
  // REQUIRES: every slot was freed (or is never used again).
  ~FixedPool() {
    for (char* slab : slabs_) ::operator delete(slab, std::align_val_t(kAlign));
  }
  FixedPool(const FixedPool&) = delete;
  FixedPool& operator=(const FixedPool&) = delete;

  void* Allocate() {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_ != nullptr) {
      Slot* s = free_;
      free_ = s->next;
      return s;
    }
    if (left_ == 0) {
      next_ = static_cast<char*>(::operator new(kSlabBytes, std::align_val_t(kAlign)));
      slabs_.push_back(next_);
      left_ = kSlotsPerSlab;
    }
    void* p = next_;
    next_ += kSlotBytes;
    left_--;
    return p;
  }

  // REQUIRES: `p` came from Allocate() of this pool.
  void Free(void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    auto* s = static_cast<Slot*>(p);
    s->next = free_;
    free_ = s;
  }

  static constexpr size_t slot_bytes() { return kSlotBytes; }
  // Bytes taken from the heap so far.
  size_t reserved_bytes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return slabs_.size() * kSlabBytes;
  }

 private:
  struct Slot {
    Slot* next;
  };
  static constexpr size_t kAlignment = kAlign < alignof(Slot) ? alignof(Slot) : kAlign;
  static constexpr size_t kRaw = kSize < sizeof(Slot) ? sizeof(Slot) : kSize;
  static constexpr size_t kSlotBytes = (kRaw + kAlignment - 1) / kAlignment * kAlignment;
  static constexpr size_t kSlotsPerSlab = 1024;
  static constexpr size_t kSlabBytes = kSlotBytes * kSlotsPerSlab;

  mutable std::mutex mu_;
  Slot* free_ = nullptr;
  char* next_ = nullptr;
  size_t left_ = 0;
  std::vector<char*> slabs_;
};

}  // namespace errand::util
