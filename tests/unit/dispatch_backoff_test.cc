#include "dispatch/backoff.h"

#include <gtest/gtest.h>

#include <chrono>

namespace errand::dispatch {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::seconds;

BackoffPolicy NoJitter() {
  BackoffPolicy p;
  p.initial = seconds(1);
  p.max = seconds(60);
  p.multiplier = 2.0;
  p.jitter = 0.0;
  return p;
}

TEST(BackoffTest, GrowsExponentiallyByMultiplier) {
  BackoffPolicy p = NoJitter();
  EXPECT_EQ(ComputeBackoff(p, 1, 0.0), seconds(1));
  EXPECT_EQ(ComputeBackoff(p, 2, 0.0), seconds(2));
  EXPECT_EQ(ComputeBackoff(p, 3, 0.0), seconds(4));
  EXPECT_EQ(ComputeBackoff(p, 4, 0.0), seconds(8));
  EXPECT_EQ(ComputeBackoff(p, 6, 0.0), seconds(32));

  p.multiplier = 3.0;
  p.initial = milliseconds(100);
  EXPECT_EQ(ComputeBackoff(p, 1, 0.0), milliseconds(100));
  EXPECT_EQ(ComputeBackoff(p, 2, 0.0), milliseconds(300));
  EXPECT_EQ(ComputeBackoff(p, 3, 0.0), milliseconds(900));
}

TEST(BackoffTest, AttemptZeroIsTreatedAsTheFirst) {
  BackoffPolicy p = NoJitter();
  EXPECT_EQ(ComputeBackoff(p, 0, 0.0), seconds(1));
}

TEST(BackoffTest, CappedAtMax) {
  BackoffPolicy p = NoJitter();
  EXPECT_EQ(ComputeBackoff(p, 7, 0.0), seconds(60));   // 64s capped
  EXPECT_EQ(ComputeBackoff(p, 50, 0.0), seconds(60));
  EXPECT_EQ(ComputeBackoff(p, 0xffffffffu, 0.0), seconds(60));  // no overflow, no hang
}

TEST(BackoffTest, InitialAboveMaxIsCapped) {
  BackoffPolicy p = NoJitter();
  p.initial = seconds(120);
  EXPECT_EQ(ComputeBackoff(p, 1, 0.0), seconds(60));
}

TEST(BackoffTest, JitterBounds) {
  BackoffPolicy p = NoJitter();
  p.jitter = 0.5;
  // u = 0: the full wait; u = 1: base * (1 - jitter).
  EXPECT_EQ(ComputeBackoff(p, 3, 0.0), seconds(4));
  EXPECT_EQ(ComputeBackoff(p, 3, 1.0), seconds(2));
  for (double u = 0.0; u <= 1.0; u += 0.05) {
    auto d = ComputeBackoff(p, 3, u);
    EXPECT_GE(d, seconds(2)) << u;
    EXPECT_LE(d, seconds(4)) << u;
  }
  // Jitter applies after the cap.
  EXPECT_EQ(ComputeBackoff(p, 30, 1.0), seconds(30));
}

TEST(BackoffTest, FullJitterCanReachZero) {
  BackoffPolicy p = NoJitter();
  p.jitter = 1.0;
  EXPECT_EQ(ComputeBackoff(p, 2, 1.0), microseconds(0));
  EXPECT_EQ(ComputeBackoff(p, 2, 0.0), seconds(2));
}

TEST(BackoffTest, OutOfRangeJitterAndUAreClamped) {
  BackoffPolicy p = NoJitter();
  p.jitter = 7.0;  // treated as 1
  EXPECT_EQ(ComputeBackoff(p, 1, 1.0), microseconds(0));
  p.jitter = -1.0;  // treated as 0
  EXPECT_EQ(ComputeBackoff(p, 1, 1.0), seconds(1));
  p.jitter = 0.5;
  EXPECT_EQ(ComputeBackoff(p, 1, -3.0), seconds(1));         // u clamped to 0
  EXPECT_EQ(ComputeBackoff(p, 1, 5.0), milliseconds(500));   // u clamped to 1
}

TEST(BackoffTest, MultiplierBelowOneIsTreatedAsOne) {
  BackoffPolicy p = NoJitter();
  p.multiplier = 0.5;
  EXPECT_EQ(ComputeBackoff(p, 1, 0.0), seconds(1));
  EXPECT_EQ(ComputeBackoff(p, 5, 0.0), seconds(1));
  EXPECT_EQ(ComputeBackoff(p, 1000, 0.0), seconds(1));
  p.multiplier = 0.0;
  EXPECT_EQ(ComputeBackoff(p, 10, 0.0), seconds(1));
  p.multiplier = -2.0;
  EXPECT_EQ(ComputeBackoff(p, 10, 0.0), seconds(1));
}

TEST(BackoffTest, DefaultPolicyIsOneSecondDoublingToFiveMinutes) {
  BackoffPolicy p;
  EXPECT_EQ(ComputeBackoff(p, 1, 0.0), seconds(1));
  EXPECT_EQ(ComputeBackoff(p, 2, 0.0), seconds(2));
  EXPECT_EQ(ComputeBackoff(p, 100, 0.0), std::chrono::minutes(5));
  EXPECT_EQ(ComputeBackoff(p, 100, 1.0), std::chrono::seconds(150));
}

}  // namespace
}  // namespace errand::dispatch
