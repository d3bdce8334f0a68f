#pragma once

#include <absl/status/status.h>
#include <spdlog/formatter.h>

#include <memory>
#include <string>
#include <string_view>

namespace errand {

// Sets the level and line format of the process-wide spdlog logger.
// `level`: trace, debug, info, warn, error, critical or off. `format`: "text"
// (spdlog's default pattern) or "json" (one JSON object per line, see
// JsonLogFormatter). Errors: INVALID_ARGUMENT naming the bad value.
// Thread: main, before other threads log.
absl::Status ConfigureLogging(const std::string& level, const std::string& format);

// Formats each record as one line of JSON:
//   {"time":"2026-01-02T03:04:05.678901Z","level":"info","msg":"..."}
// `time` is UTC with microseconds; `level` is trace, debug, info, warn,
// error or critical.
class JsonLogFormatter : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override;
  std::unique_ptr<spdlog::formatter> clone() const override;
};

// `s` as the inside of a JSON string: quotes, backslashes and control
// characters escaped, invalid UTF-8 replaced by U+FFFD.
std::string JsonEscape(std::string_view s);

}  // namespace errand
