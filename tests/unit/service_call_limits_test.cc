#include "service/call_limits.h"

#include <gtest/gtest.h>

#include <atomic>

#include <optional>
#include <thread>
#include <vector>

namespace errand::service {
namespace {

using Kind = CallLimiter::Kind;

CallLimitOptions Small() {
  CallLimitOptions o;
  o.max_streams = 4;
  o.max_streams_per_connection = 2;
  o.max_long_polls = 3;
  o.max_long_polls_per_connection = 2;
  o.max_subscribers = 3;
  return o;
}

TEST(CallLimiterTest, StreamsPerConnectionAreCountedPerPeer) {
  CallLimiter limiter(Small());
  auto a1 = limiter.Acquire(Kind::kStream, "ipv4:127.0.0.1:1");
  auto a2 = limiter.Acquire(Kind::kStream, "ipv4:127.0.0.1:1");
  ASSERT_TRUE(a1.ok() && a2.ok());
  auto a3 = limiter.Acquire(Kind::kStream, "ipv4:127.0.0.1:1");
  ASSERT_EQ(a3.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(a3.status().message().find("--max-streams-per-connection"), std::string::npos)
      << a3.status();
  EXPECT_NE(a3.status().message().find("limit is 2"), std::string::npos) << a3.status();
  auto b1 = limiter.Acquire(Kind::kStream, "ipv4:127.0.0.1:2");
  EXPECT_TRUE(b1.ok());
  EXPECT_EQ(limiter.streams(), 3u);
  EXPECT_EQ(limiter.connections(), 2u);
}

TEST(CallLimiterTest, TotalStreamsAcrossConnections) {
  CallLimiter limiter(Small());
  std::vector<CallLimiter::Slot> held;
  for (int i = 0; i < 4; ++i) {
    auto s = limiter.Acquire(Kind::kStream, "peer" + std::to_string(i));
    ASSERT_TRUE(s.ok()) << s.status();
    held.push_back(std::move(*s));
  }
  auto s = limiter.Acquire(Kind::kStream, "peer9");
  ASSERT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.status().message().find("(--max-streams)"), std::string::npos) << s.status();
}

TEST(CallLimiterTest, SubscribersAreStreamsWithTheirOwnLimit) {
  CallLimiter limiter(Small());
  std::vector<CallLimiter::Slot> held;
  for (int i = 0; i < 3; ++i) {
    auto s = limiter.Acquire(Kind::kSubscriber, "peer" + std::to_string(i));
    ASSERT_TRUE(s.ok()) << s.status();
    held.push_back(std::move(*s));
  }
  EXPECT_EQ(limiter.subscribers(), 3u);
  EXPECT_EQ(limiter.streams(), 3u);
  auto s = limiter.Acquire(Kind::kSubscriber, "peer9");
  ASSERT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.status().message().find("--max-subscribers"), std::string::npos) << s.status();
  // A plain stream still fits under --max-streams.
  EXPECT_TRUE(limiter.Acquire(Kind::kStream, "peer9").ok());
}

TEST(CallLimiterTest, LongPollsAreIndependentOfStreams) {
  CallLimiter limiter(Small());
  auto s1 = limiter.Acquire(Kind::kStream, "p");
  auto s2 = limiter.Acquire(Kind::kStream, "p");
  auto l1 = limiter.Acquire(Kind::kLongPoll, "p");
  auto l2 = limiter.Acquire(Kind::kLongPoll, "p");
  ASSERT_TRUE(s1.ok() && s2.ok() && l1.ok() && l2.ok());
  auto l3 = limiter.Acquire(Kind::kLongPoll, "p");
  ASSERT_EQ(l3.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(l3.status().message().find("--max-long-polls-per-connection"), std::string::npos);
  auto q1 = limiter.Acquire(Kind::kLongPoll, "q");
  ASSERT_TRUE(q1.ok());
  auto q2 = limiter.Acquire(Kind::kLongPoll, "q");
  ASSERT_EQ(q2.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(q2.status().message().find("(--max-long-polls)"), std::string::npos) << q2.status();
}

TEST(CallLimiterTest, DestroyedSlotFreesItsPlaceAndForgetsTheConnection) {
  CallLimiter limiter(Small());
  {
    auto a = limiter.Acquire(Kind::kSubscriber, "p");
    auto b = limiter.Acquire(Kind::kLongPoll, "p");
    ASSERT_TRUE(a.ok() && b.ok());
    CallLimiter::Slot moved = std::move(*a);
    EXPECT_TRUE(moved.held());
    EXPECT_FALSE(a->held());
    EXPECT_EQ(limiter.connections(), 1u);
  }
  EXPECT_EQ(limiter.streams(), 0u);
  EXPECT_EQ(limiter.subscribers(), 0u);
  EXPECT_EQ(limiter.long_polls(), 0u);
  EXPECT_EQ(limiter.connections(), 0u);
  auto c = limiter.Acquire(Kind::kStream, "p");
  auto d = limiter.Acquire(Kind::kStream, "p");
  EXPECT_TRUE(c.ok() && d.ok());
}

TEST(CallLimiterTest, MoveAssignReleasesTheOldSlot) {
  CallLimiter limiter(Small());
  auto a = limiter.Acquire(Kind::kStream, "p");
  auto b = limiter.Acquire(Kind::kStream, "q");
  ASSERT_TRUE(a.ok() && b.ok());
  *a = std::move(*b);
  EXPECT_EQ(limiter.streams(), 1u);
  EXPECT_EQ(limiter.connections(), 1u);
}

// gRPC threads admit and release calls concurrently; the counts must come
// back to zero and never pass the limits. (Run under TSan as well.)
TEST(CallLimiterTest, ConcurrentAdmissionsNeverExceedLimitsAndAllReturn) {
  CallLimitOptions o;
  o.max_streams = 8;
  o.max_streams_per_connection = 3;
  o.max_long_polls = 5;
  o.max_long_polls_per_connection = 2;
  o.max_subscribers = 4;
  CallLimiter limiter(o);
  std::vector<std::thread> threads;
  std::atomic<bool> over{false};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const Kind kinds[] = {Kind::kStream, Kind::kSubscriber, Kind::kLongPoll};
      std::vector<CallLimiter::Slot> held;
      for (int i = 0; i < 2000; ++i) {
        auto s = limiter.Acquire(kinds[(i + t) % 3], "peer" + std::to_string((i * 7 + t) % 3));
        if (s.ok()) held.push_back(std::move(*s));
        if (limiter.streams() > 8 || limiter.subscribers() > 4 || limiter.long_polls() > 5) {
          over = true;
        }
        if (held.size() > 3 || (i % 5 == 0 && !held.empty())) held.erase(held.begin());
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_FALSE(over.load());
  EXPECT_EQ(limiter.streams(), 0u);
  EXPECT_EQ(limiter.subscribers(), 0u);
  EXPECT_EQ(limiter.long_polls(), 0u);
  EXPECT_EQ(limiter.connections(), 0u);
}

}  // namespace
}  // namespace errand::service
