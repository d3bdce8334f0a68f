#include "logging.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <ctime>

namespace errand {

std::string JsonEscape(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 8);
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
          if (c < 0x20 || c == 0x7F) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
          } else {
            out.push_back(static_cast<char>(c));
          }
      }
      ++i;
      continue;
    }
    // A UTF-8 sequence: copy it when well formed (no overlong forms, no
    // surrogates, at most U+10FFFF), else one U+FFFD for the first byte.
    size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
    bool ok = n > 0 && c <= 0xF4 && i + n <= s.size();
    uint32_t cp = ok ? (c & (0x7F >> n)) : 0;
    for (size_t k = 1; ok && k < n; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      ok = (cc & 0xC0) == 0x80;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (ok) {
      ok = !(n == 3 && cp < 0x800) && !(n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) &&
           !(cp >= 0xD800 && cp <= 0xDFFF);
    }
    if (ok) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out += "\\ufffd";
      ++i;
    }
  }
  return out;
}

void JsonLogFormatter::format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) {
  using namespace std::chrono;
  auto since = msg.time.time_since_epoch();
  std::time_t secs = duration_cast<seconds>(since).count();
  auto micros = duration_cast<microseconds>(since).count() % 1000000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char ts[48];
  std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<long long>(micros));
  static constexpr const char* kLevels[] = {"trace", "debug", "info", "warn",
                                            "error", "critical", "off"};
  std::string line = "{\"time\":\"";
  line += ts;
  line += "\",\"level\":\"";
  line += kLevels[static_cast<int>(msg.level)];
  line += "\",\"msg\":\"";
  line += JsonEscape(std::string_view(msg.payload.data(), msg.payload.size()));
  line += "\"}\n";
  dest.append(line.data(), line.data() + line.size());
}

std::unique_ptr<spdlog::formatter> JsonLogFormatter::clone() const {
  return std::make_unique<JsonLogFormatter>();
}

absl::Status ConfigureLogging(const std::string& level, const std::string& format) {
  static constexpr std::pair<const char*, spdlog::level::level_enum> kLevels[] = {
      {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug},
      {"info", spdlog::level::info},   {"warn", spdlog::level::warn},
      {"error", spdlog::level::err},   {"critical", spdlog::level::critical},
      {"off", spdlog::level::off}};
  bool found = false;
  spdlog::level::level_enum lvl = spdlog::level::info;
  for (const auto& [name, value] : kLevels) {
    if (level == name) {
      lvl = value;
      found = true;
    }
  }
  if (!found) {
    return absl::InvalidArgumentError("--log-level: \"" + level +
                                      "\" is not one of trace, debug, info, warn, error, "
                                      "critical, off");
  }
  if (format == "json") {
    spdlog::set_formatter(std::make_unique<JsonLogFormatter>());
  } else if (format != "text") {
    return absl::InvalidArgumentError("--log-format: \"" + format + "\" is not text or json");
  }
  spdlog::set_level(lvl);
  return absl::OkStatus();
}

}  // namespace errand
