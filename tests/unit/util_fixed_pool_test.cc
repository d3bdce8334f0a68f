#include "util/fixed_pool.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

namespace errand::util {
namespace {

TEST(FixedPoolTest, SlotsAreDistinctAlignedAndHoldTheirBytes) {
  FixedPool<112, 8> pool;
  EXPECT_EQ(pool.slot_bytes(), 112u);  // no header, no rounding past the alignment
  std::vector<void*> got;
  for (int i = 0; i < 3000; ++i) {  // more than one slab
    void* p = pool.Allocate();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 8, 0u);
    std::memset(p, i & 0xff, 112);
    got.push_back(p);
  }
  EXPECT_EQ(std::set<void*>(got.begin(), got.end()).size(), got.size());
  for (int i = 0; i < 3000; ++i) {
    const auto* bytes = static_cast<const unsigned char*>(got[i]);
    ASSERT_EQ(bytes[0], i & 0xff);
    ASSERT_EQ(bytes[111], i & 0xff);
  }
  EXPECT_EQ(pool.reserved_bytes(), 3u * 1024u * 112u);
  for (void* p : got) pool.Free(p);
}

TEST(FixedPoolTest, FreedSlotsAreReusedBeforeTheHeapGrows) {
  FixedPool<40, 8> pool;
  std::vector<void*> first;
  for (int i = 0; i < 1024; ++i) first.push_back(pool.Allocate());
  const size_t reserved = pool.reserved_bytes();
  for (void* p : first) pool.Free(p);
  std::set<void*> again;
  for (int i = 0; i < 1024; ++i) again.insert(pool.Allocate());
  EXPECT_EQ(again, std::set<void*>(first.begin(), first.end()));
  EXPECT_EQ(pool.reserved_bytes(), reserved);
  for (void* p : again) pool.Free(p);
}

TEST(FixedPoolTest, RoundsUpToTheAlignmentAndToAPointer) {
  EXPECT_EQ((FixedPool<100, 16>::slot_bytes()), 112u);
  EXPECT_EQ((FixedPool<1, 1>::slot_bytes()), sizeof(void*));
}

}  // namespace
}  // namespace errand::util
