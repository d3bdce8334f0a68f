#pragma once

// Parses durations written for people: "250ms", "30s", "5m", "2h", "1d", or a
// plain number of seconds. Shared by errand-worker and errandctl.

#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>

namespace errand::tools {

inline std::optional<std::chrono::milliseconds> ParseDuration(const std::string& text) {
  if (text.empty()) return std::nullopt;
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || v < 0) return std::nullopt;
  std::string unit(end);
  double ms;
  if (unit.empty() || unit == "s") {
    ms = v * 1000;
  } else if (unit == "ms") {
    ms = v;
  } else if (unit == "m") {
    ms = v * 60000;
  } else if (unit == "h") {
    ms = v * 3600000;
  } else if (unit == "d") {
    ms = v * 86400000;
  } else {
    return std::nullopt;
  }
  return std::chrono::milliseconds(static_cast<int64_t>(ms));
}

}  // namespace errand::tools
