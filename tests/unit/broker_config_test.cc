#include "config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace errand {
namespace {

using std::chrono::hours;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;
using ::testing::HasSubstr;

microseconds Parse(const std::string& text, microseconds bare = seconds(1)) {
  auto d = ParseDuration(text, bare);
  EXPECT_TRUE(d.ok()) << text << ": " << d.status();
  return d.ok() ? *d : microseconds(-1);
}

TEST(ConfigTest, ParseDurationUnderstandsUnits) {
  EXPECT_EQ(Parse("250ms"), milliseconds(250));
  EXPECT_EQ(Parse("30s"), seconds(30));
  EXPECT_EQ(Parse("5m"), minutes(5));
  EXPECT_EQ(Parse("1h"), hours(1));
  EXPECT_EQ(Parse("15us"), microseconds(15));
  EXPECT_EQ(Parse("0s"), microseconds(0));
}

TEST(ConfigTest, ParseDurationBareNumberUsesTheGivenUnit) {
  EXPECT_EQ(Parse("100", milliseconds(1)), milliseconds(100));
  EXPECT_EQ(Parse("30", seconds(1)), seconds(30));
  EXPECT_EQ(Parse("2", minutes(1)), minutes(2));
}

TEST(ConfigTest, ParseDurationRejectsGarbage) {
  for (const char* bad : {"abc", "5x", "", "s", "ms", "-5s", "+5s", "1.5s", "5 s", "5sec", "5S",
                          " 5s", "5s ", "1234567890123"}) {
    auto d = ParseDuration(bad, seconds(1));
    EXPECT_FALSE(d.ok()) << "\"" << bad << "\" parsed as " << (d.ok() ? d->count() : 0) << "us";
    if (!d.ok()) {
      EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(d.status().message()), HasSubstr(std::string("\"") + bad + "\""));
    }
  }
}

TEST(ConfigTest, ParseDurationUnknownUnitNamesTheUnits) {
  auto d = ParseDuration("5x", seconds(1));
  ASSERT_FALSE(d.ok());
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("unknown unit"));
}

// Values that would overflow int64 microseconds (or are absurd) are refused.
TEST(ConfigTest, ParseDurationRejectsValuesThatOverflow) {
  for (const char* big : {"999999999999m", "999999999999h", "2562047789h"}) {
    auto d = ParseDuration(big, seconds(1));
    EXPECT_FALSE(d.ok()) << big << " parsed as " << (d.ok() ? d->count() : 0) << "us";
  }
}

TEST(ConfigTest, DefaultConfigIsValid) { EXPECT_TRUE(Config().Validate().ok()); }

struct BadConfig {
  const char* name;
  std::function<void(Config&)> mutate;
  const char* flag;
};

// Each case must be refused with INVALID_ARGUMENT naming its flag.
void ExpectRefused(const std::vector<BadConfig>& cases) {
  for (const BadConfig& bad : cases) {
    Config c;
    bad.mutate(c);
    absl::Status s = c.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad.name << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(bad.flag)) << bad.name;
  }
}

TEST(ConfigTest, ValidateRejectsBadValuesNamingTheFlag) {
  const std::vector<BadConfig> cases = {
      {"empty listen", [](Config& c) { c.listen.clear(); }, "--listen"},
      {"empty data dir", [](Config& c) { c.data_dir.clear(); }, "--data-dir"},
      {"zero sync interval", [](Config& c) { c.sync_interval = milliseconds(0); },
       "--sync-interval"},
      {"negative sync interval", [](Config& c) { c.sync_interval = milliseconds(-5); },
       "--sync-interval"},
      {"sync interval over 60s", [](Config& c) { c.sync_interval = milliseconds(60001); },
       "--sync-interval"},
      {"lease under 1s", [](Config& c) { c.default_lease = milliseconds(999); },
       "--default-lease"},
      {"lease over 24h", [](Config& c) { c.default_lease = hours(24) + seconds(1); },
       "--default-lease"},
      {"zero attempts", [](Config& c) { c.default_max_attempts = 0; }, "--default-max-attempts"},
      {"too many attempts", [](Config& c) { c.default_max_attempts = 1001; },
       "--default-max-attempts"},
      {"zero payload", [](Config& c) { c.max_payload_bytes = 0; }, "--max-payload-bytes"},
      {"payload over 64MiB",
       [](Config& c) {
         c.max_payload_bytes = (64u << 20) + 1;
         c.max_message_bytes = 256u << 20;
       },
       "--max-payload-bytes"},
      {"zero batch", [](Config& c) { c.max_batch = 0; }, "--max-batch"},
      {"batch over 100000", [](Config& c) { c.max_batch = 100001; }, "--max-batch"},
      {"retention under 1s", [](Config& c) { c.retention = milliseconds(999); }, "--retention"},
      {"idempotency window under 1s",
       [](Config& c) { c.idempotency_window = microseconds(0); }, "--idempotency-window"},
      {"zero headers", [](Config& c) { c.max_headers_bytes = 0; }, "--max-headers-bytes"},
      {"headers over 16MiB", [](Config& c) { c.max_headers_bytes = (16u << 20) + 1; },
       "--max-headers-bytes"},
      {"zero result", [](Config& c) { c.max_result_bytes = 0; }, "--max-result-bytes"},
      {"result over 64MiB", [](Config& c) { c.max_result_bytes = (64u << 20) + 1; },
       "--max-result-bytes"},
      {"message not above payload",
       [](Config& c) {
         c.max_payload_bytes = 1 << 20;
         c.max_message_bytes = (1 << 20) + (64 << 10) - 1;
       },
       "--max-message-bytes"},
  };
  ExpectRefused(cases);
}

TEST(ConfigTest, ValidateAcceptsBoundaryValues) {
  Config c;
  c.sync_interval = milliseconds(1);
  c.default_lease = seconds(1);
  c.default_max_attempts = 1;
  c.max_payload_bytes = 1;
  c.max_batch = 1;
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  c.sync_interval = seconds(60);
  c.default_lease = hours(24);
  c.default_max_attempts = 1000;
  c.max_payload_bytes = 64u << 20;
  c.max_message_bytes = (64u << 20) + (64 << 10);
  c.max_batch = 100000;
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
}

// "--keepalive-time" is a prefix of "--keepalive-timeout": each message is
// matched with what follows the flag's name.
TEST(ConfigTest, ValidateRejectsBadKeepaliveValuesNamingTheFlag) {
  const std::vector<BadConfig> cases = {
      {"keepalive time under 1s", [](Config& c) { c.keepalive_time = milliseconds(999); },
       "--keepalive-time must"},
      {"keepalive time over 24h", [](Config& c) { c.keepalive_time = hours(24) + seconds(1); },
       "--keepalive-time must"},
      {"zero keepalive timeout", [](Config& c) { c.keepalive_timeout = milliseconds(0); },
       "--keepalive-timeout must"},
      {"keepalive timeout under 100ms", [](Config& c) { c.keepalive_timeout = milliseconds(99); },
       "--keepalive-timeout must"},
      {"keepalive timeout over 1h", [](Config& c) { c.keepalive_timeout = hours(1) + seconds(1); },
       "--keepalive-timeout must"},
      {"negative min client interval",
       [](Config& c) { c.keepalive_min_client_interval = milliseconds(-1); },
       "--keepalive-min-client-interval must"},
      {"min client interval under 100ms",
       [](Config& c) { c.keepalive_min_client_interval = milliseconds(99); },
       "--keepalive-min-client-interval must"},
      {"min client interval over 24h",
       [](Config& c) { c.keepalive_min_client_interval = hours(24) + seconds(1); },
       "--keepalive-min-client-interval must"},
  };
  ExpectRefused(cases);
}

TEST(ConfigTest, KeepaliveDefaultsAndBoundaries) {
  Config c;
  EXPECT_EQ(c.keepalive_time, seconds(30));
  EXPECT_EQ(c.keepalive_timeout, seconds(10));
  EXPECT_EQ(c.keepalive_min_client_interval, seconds(5));
  // The client library's default keepalive_time (10s) must stay allowed.
  EXPECT_LE(c.keepalive_min_client_interval, seconds(10));
  c.keepalive_time = seconds(1);
  c.keepalive_timeout = milliseconds(100);
  c.keepalive_min_client_interval = milliseconds(100);
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
  c.keepalive_time = hours(24);
  c.keepalive_timeout = hours(1);
  c.keepalive_min_client_interval = hours(24);
  EXPECT_TRUE(c.Validate().ok()) << c.Validate();
}

}  // namespace
}  // namespace errand
