#pragma once

#include <google/protobuf/duration.pb.h>
#include <google/protobuf/timestamp.pb.h>

#include <chrono>

#include "util/clock.h"

namespace errand::util {

using Micros = std::chrono::microseconds;

inline google::protobuf::Timestamp ToProto(Clock::TimePoint t) {
  google::protobuf::Timestamp ts;
  auto us = std::chrono::duration_cast<Micros>(t.time_since_epoch()).count();
  int64_t secs = us / 1'000'000;
  int64_t rem = us % 1'000'000;
  if (rem < 0) {
    rem += 1'000'000;
    secs -= 1;
  }
  ts.set_seconds(secs);
  ts.set_nanos(static_cast<int32_t>(rem * 1000));
  return ts;
}

inline Clock::TimePoint FromProto(const google::protobuf::Timestamp& ts) {
  return Clock::TimePoint(Micros(ts.seconds() * 1'000'000 + ts.nanos() / 1000));
}

inline google::protobuf::Duration DurationToProto(Micros d) {
  google::protobuf::Duration p;
  p.set_seconds(d.count() / 1'000'000);
  p.set_nanos(static_cast<int32_t>((d.count() % 1'000'000) * 1000));
  return p;
}

inline Micros DurationFromProto(const google::protobuf::Duration& d) {
  return Micros(d.seconds() * 1'000'000 + d.nanos() / 1000);
}

}  // namespace errand::util
