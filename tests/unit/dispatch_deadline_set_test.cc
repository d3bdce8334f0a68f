#include "dispatch/deadline_set.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <vector>

namespace errand::dispatch {
namespace {

using std::chrono::seconds;
using TimePoint = DeadlineSet::TimePoint;

const TimePoint kT0 = TimePoint(seconds(1'700'000'000));

TEST(DeadlineSetTest, PopDueReturnsOnlyDueIdsInTimeOrder) {
  DeadlineSet s;
  s.Add(kT0 + seconds(30), 3);
  s.Add(kT0 + seconds(10), 1);
  s.Add(kT0 + seconds(50), 5);
  s.Add(kT0 + seconds(20), 2);
  s.Add(kT0 + seconds(40), 4);

  EXPECT_TRUE(s.PopDue(kT0).empty());
  EXPECT_EQ(s.PopDue(kT0 + seconds(30)), (std::vector<uint64_t>{1, 2, 3}));  // <= now is due
  EXPECT_EQ(s.size(), 2u);
  EXPECT_TRUE(s.PopDue(kT0 + seconds(39)).empty());
  EXPECT_EQ(s.PopDue(kT0 + seconds(1000)), (std::vector<uint64_t>{4, 5}));
  EXPECT_EQ(s.size(), 0u);
}

TEST(DeadlineSetTest, PopDueWithLimitReturnsAtMostThatManyEarliestFirst) {
  DeadlineSet s;
  for (uint64_t id = 1; id <= 5; ++id) s.Add(kT0 + seconds(static_cast<int>(6 - id)), id);
  EXPECT_EQ(s.PopDue(kT0 + seconds(10), 2), (std::vector<uint64_t>{5, 4}));
  EXPECT_EQ(s.PopDue(kT0 + seconds(3), 10), (std::vector<uint64_t>{3}));  // only due ones
  EXPECT_TRUE(s.PopDue(kT0 + seconds(10), 0).empty());
  EXPECT_EQ(s.size(), 2u);
  EXPECT_EQ(s.PopDue(kT0 + seconds(10), 5), (std::vector<uint64_t>{2, 1}));
}

TEST(DeadlineSetTest, SameTimeTiesBreakByIdAndBothAreKept) {
  DeadlineSet s;
  s.Add(kT0, 9);
  s.Add(kT0, 4);
  EXPECT_EQ(s.size(), 2u);
  EXPECT_EQ(s.PopDue(kT0), (std::vector<uint64_t>{4, 9}));
}

TEST(DeadlineSetTest, RemoveNeedsTheExactTimeAndId) {
  DeadlineSet s;
  s.Add(kT0 + seconds(1), 1);
  s.Add(kT0 + seconds(2), 2);
  EXPECT_FALSE(s.Remove(kT0 + seconds(2), 1));  // wrong time
  EXPECT_FALSE(s.Remove(kT0 + seconds(1), 2));  // wrong id
  EXPECT_TRUE(s.Remove(kT0 + seconds(1), 1));
  EXPECT_FALSE(s.Remove(kT0 + seconds(1), 1));  // already removed
  EXPECT_EQ(s.size(), 1u);
  EXPECT_EQ(s.PopDue(kT0 + seconds(5)), (std::vector<uint64_t>{2}));
}

TEST(DeadlineSetTest, EarliestTracksTheSmallestTime) {
  DeadlineSet s;
  EXPECT_FALSE(s.Earliest().has_value());
  s.Add(kT0 + seconds(5), 1);
  EXPECT_EQ(s.Earliest(), kT0 + seconds(5));
  s.Add(kT0 + seconds(3), 2);
  EXPECT_EQ(s.Earliest(), kT0 + seconds(3));
  s.Add(kT0 + seconds(9), 3);
  EXPECT_EQ(s.Earliest(), kT0 + seconds(3));
  EXPECT_TRUE(s.Remove(kT0 + seconds(3), 2));
  EXPECT_EQ(s.Earliest(), kT0 + seconds(5));
  s.PopDue(kT0 + seconds(5));
  EXPECT_EQ(s.Earliest(), kT0 + seconds(9));
  s.PopDue(kT0 + seconds(9));
  EXPECT_FALSE(s.Earliest().has_value());
}

}  // namespace
}  // namespace errand::dispatch
