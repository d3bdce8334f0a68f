#include "dispatch/ready_queue.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace errand::dispatch {
namespace {

using Entry = ReadyQueue::Entry;

std::vector<uint64_t> Drain(ReadyQueue& q) {
  std::vector<uint64_t> ids;
  while (auto e = q.PopFront()) ids.push_back(e->job_id);
  return ids;
}

TEST(ReadyQueueTest, HigherPriorityFirstFifoWithinPriority) {
  ReadyQueue q;
  q.Push({0, 1, 101});
  q.Push({5, 2, 102});
  q.Push({0, 3, 103});
  q.Push({5, 4, 104});
  q.Push({-3, 5, 105});
  q.Push({10, 6, 106});
  EXPECT_EQ(q.size(), 6u);
  EXPECT_EQ(Drain(q), (std::vector<uint64_t>{106, 102, 104, 101, 103, 105}));
  EXPECT_TRUE(q.empty());
}

TEST(ReadyQueueTest, FifoWithinPriorityFollowsReadySeqNotPushOrderOrJobId) {
  ReadyQueue q;
  // Pushed out of ready order and with job ids in the opposite order.
  q.Push({1, 30, 1});
  q.Push({1, 10, 3});
  q.Push({1, 20, 2});
  EXPECT_EQ(Drain(q), (std::vector<uint64_t>{3, 2, 1}));
}

TEST(ReadyQueueTest, ExtremePrioritiesDoNotOverflow) {
  ReadyQueue q;
  q.Push({INT32_MIN, 1, 1});
  q.Push({INT32_MAX, 2, 2});
  q.Push({0, 3, 3});
  EXPECT_EQ(Drain(q), (std::vector<uint64_t>{2, 3, 1}));
}

TEST(ReadyQueueTest, FrontPeeksWithoutRemoving) {
  ReadyQueue q;
  EXPECT_FALSE(q.Front().has_value());
  q.Push({0, 1, 7});
  q.Push({2, 2, 8});
  ASSERT_TRUE(q.Front().has_value());
  EXPECT_EQ(q.Front()->job_id, 8u);
  EXPECT_EQ(q.size(), 2u);
}

TEST(ReadyQueueTest, EraseRemovesOnlyThatEntry) {
  ReadyQueue q;
  q.Push({0, 1, 1});
  q.Push({0, 2, 2});
  q.Push({0, 3, 3});
  EXPECT_TRUE(q.Erase({0, 2, 2}));
  EXPECT_EQ(q.size(), 2u);
  EXPECT_FALSE(q.Erase({0, 2, 2}));        // already gone
  EXPECT_FALSE(q.Erase({0, 99, 99}));      // never there
  EXPECT_EQ(Drain(q), (std::vector<uint64_t>{1, 3}));
}

TEST(ReadyQueueTest, PopFrontOnEmptyReturnsNothing) {
  ReadyQueue q;
  EXPECT_FALSE(q.PopFront().has_value());
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.size(), 0u);
  q.Push({0, 1, 1});
  EXPECT_TRUE(q.PopFront().has_value());
  EXPECT_FALSE(q.PopFront().has_value());
  EXPECT_TRUE(q.empty());
}

TEST(ReadyQueueTest, BeforeOrdersByPriorityThenReadySeq) {
  EXPECT_TRUE(ReadyQueue::Before({2, 9, 1}, {1, 1, 2}));
  EXPECT_FALSE(ReadyQueue::Before({1, 1, 2}, {2, 9, 1}));
  EXPECT_TRUE(ReadyQueue::Before({1, 1, 2}, {1, 2, 1}));
  EXPECT_FALSE(ReadyQueue::Before({1, 1, 1}, {1, 1, 1}));
}

}  // namespace
}  // namespace errand::dispatch
