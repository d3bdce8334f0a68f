#include "logging.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/details/log_msg.h>

#include <string>

namespace errand {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

TEST(LoggingTest, JsonEscapeEscapesQuotesBackslashesAndControls) {
  EXPECT_EQ(JsonEscape("plain"), "plain");
  EXPECT_EQ(JsonEscape("a\"b\\c"), "a\\\"b\\\\c");
  EXPECT_EQ(JsonEscape("l1\nl2\t\r"), "l1\\nl2\\t\\r");
  EXPECT_EQ(JsonEscape(std::string("\x01\x1f", 2)), "\\u0001\\u001f");
}

TEST(LoggingTest, JsonEscapeKeepsUtf8AndReplacesInvalidBytes) {
  EXPECT_EQ(JsonEscape("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
            "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  EXPECT_EQ(JsonEscape("bad \xff end"), "bad \\ufffd end");
  EXPECT_EQ(JsonEscape("cut \xc3"), "cut \\ufffd");
  EXPECT_EQ(JsonEscape("overlong \xc0\xaf"), "overlong \\ufffd\\ufffd");
  EXPECT_EQ(JsonEscape("surrogate \xed\xa0\x80"), "surrogate \\ufffd\\ufffd\\ufffd");
}

TEST(LoggingTest, JsonFormatterWritesOneObjectPerLine) {
  JsonLogFormatter f;
  spdlog::details::log_msg msg("", spdlog::level::warn, "queue \"q\" paused\n");
  msg.time = std::chrono::system_clock::time_point(std::chrono::microseconds(1700000000123456));
  spdlog::memory_buf_t buf;
  f.format(msg, buf);
  std::string line(buf.data(), buf.size());
  EXPECT_EQ(line,
            "{\"time\":\"2023-11-14T22:13:20.123456Z\",\"level\":\"warn\","
            "\"msg\":\"queue \\\"q\\\" paused\\n\"}\n");
}

TEST(LoggingTest, ConfigureLoggingRejectsUnknownValuesByName) {
  EXPECT_THAT(std::string(ConfigureLogging("loud", "text").message()), HasSubstr("--log-level"));
  EXPECT_THAT(std::string(ConfigureLogging("info", "xml").message()), HasSubstr("--log-format"));
  EXPECT_TRUE(ConfigureLogging("info", "text").ok());
}

}  // namespace
}  // namespace errand
