#include "dispatch/wait_deadlines.h"

#include <gtest/gtest.h>

#include <asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <vector>

namespace errand::dispatch {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

// A WaitDeadlines on an io_context the test runs itself, recording what
// falls due.
class WaitDeadlinesTest : public ::testing::Test {
 protected:
  WaitDeadlinesTest()
      : w_(io_, nullptr, [this](std::vector<uint64_t> ids) {
          for (uint64_t id : ids) due_.push_back(id);
          if (on_due_) on_due_();
        }) {}

  // Runs the io_context until `n` ids fell due or two seconds passed.
  bool RunUntilDue(size_t n) {
    const auto stop = Clock::now() + seconds(2);
    while (due_.size() < n && Clock::now() < stop) {
      io_.restart();
      io_.run_for(milliseconds(5));
    }
    return due_.size() >= n;
  }

  asio::io_context io_;
  std::vector<uint64_t> due_;
  std::function<void()> on_due_;
  WaitDeadlines w_;
};

TEST_F(WaitDeadlinesTest, DeadlinesFallDueInTimeOrderAndRemovedOnesNever) {
  const auto now = Clock::now();
  w_.Add(now + milliseconds(30), 3);
  w_.Add(now + milliseconds(10), 1);
  w_.Add(now + milliseconds(20), 2);
  w_.Add(now + milliseconds(25), 9);
  EXPECT_TRUE(w_.Remove(now + milliseconds(25), 9));
  EXPECT_FALSE(w_.Remove(now + milliseconds(25), 9));  // gone already
  ASSERT_TRUE(RunUntilDue(3));
  EXPECT_EQ(due_, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_GE(Clock::now(), now + milliseconds(30));
  EXPECT_EQ(w_.size(), 0u);
  // Nothing more comes.
  io_.restart();
  io_.run_for(milliseconds(50));
  EXPECT_EQ(due_.size(), 3u);
}

TEST_F(WaitDeadlinesTest, TheTimerMovesOnlyForAnEarlierDeadline) {
  const auto now = Clock::now();
  w_.Add(now + seconds(60), 1);
  EXPECT_EQ(w_.armed_at(), now + seconds(60));
  w_.Add(now + seconds(61), 2);  // later: the timer stays
  EXPECT_EQ(w_.armed_at(), now + seconds(60));
  w_.Add(now + milliseconds(10), 3);  // earlier: the timer moves
  EXPECT_EQ(w_.armed_at(), now + milliseconds(10));
  ASSERT_TRUE(RunUntilDue(1));
  EXPECT_EQ(due_, (std::vector<uint64_t>{3}));
  // Re-armed for what is left.
  EXPECT_EQ(w_.armed_at(), now + seconds(60));
}

TEST_F(WaitDeadlinesTest, AnsweringAWaiterLeavesNoHandlerForTheCoreThread) {
  // The point of one timer for all: a waiter answered before its wait ran
  // out (Remove) must not make the io_context's thread run anything. A
  // cancelled timer per waiter ran its handler there, once per job.
  const auto now = Clock::now();
  for (uint64_t id = 1; id <= 100; ++id) w_.Add(now + seconds(60) + milliseconds(id), id);
  for (uint64_t id = 1; id <= 100; ++id) {
    ASSERT_TRUE(w_.Remove(now + seconds(60) + milliseconds(id), id));
  }
  io_.restart();
  EXPECT_EQ(io_.poll(), 0u);
  EXPECT_TRUE(due_.empty());
}

TEST_F(WaitDeadlinesTest, AWaiterAddedWhenOneFallsDueIsArmedFor) {
  // A Connect stream whose wait ran out waits again, from inside `due`.
  int again = 0;
  on_due_ = [&] {
    if (again++ == 0) w_.Add(Clock::now() + milliseconds(10), 2);
  };
  w_.Add(Clock::now() + milliseconds(5), 1);
  ASSERT_TRUE(RunUntilDue(2));
  EXPECT_EQ(due_, (std::vector<uint64_t>{1, 2}));
}

TEST_F(WaitDeadlinesTest, NothingFallsDueAfterStop) {
  w_.Add(Clock::now() + milliseconds(5), 1);
  w_.Stop();
  EXPECT_EQ(w_.size(), 0u);
  w_.Add(Clock::now() + milliseconds(5), 2);  // ignored: stopped
  io_.restart();
  io_.run_for(milliseconds(50));
  EXPECT_TRUE(due_.empty());
}

TEST(WaitDeadlinesOnCoreTest, DueRunsThroughOnCore) {
  asio::io_context io;
  std::vector<std::function<void()>> handed;
  std::vector<uint64_t> due;
  WaitDeadlines w(
      io, [&](std::function<void()> fn) { handed.push_back(std::move(fn)); },
      [&](std::vector<uint64_t> ids) { due = std::move(ids); });
  w.Add(Clock::now() + milliseconds(5), 7);
  const auto stop = Clock::now() + seconds(2);
  while (handed.empty() && Clock::now() < stop) {
    io.restart();
    io.run_for(milliseconds(5));
  }
  ASSERT_EQ(handed.size(), 1u);
  EXPECT_TRUE(due.empty());  // not before core runs it
  handed[0]();
  EXPECT_EQ(due, (std::vector<uint64_t>{7}));
}

}  // namespace
}  // namespace errand::dispatch
