#pragma once

#include <rocksdb/env.h>
#include <spdlog/spdlog.h>

#include <cstdarg>
#include <cstdio>

namespace errand::store {

// RocksDB's info log, sent to the broker's own log (spdlog) instead of a LOG
// file in the data directory. Besides keeping one log, this matters on a
// full disk: RocksDB's file logger that once failed to write aborts the
// process on its next line (Debian's librocksdb keeps its assertions), and
// RocksDB logs while it recovers from exactly that error.
//
// Thread: any (spdlog's default logger is thread-safe).
class RocksLogger final : public rocksdb::Logger {
 public:
  explicit RocksLogger(rocksdb::InfoLogLevel level) : rocksdb::Logger(level) {}

  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap);
  }
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel()) return;
    char line[2048];
    std::vsnprintf(line, sizeof line, format, ap);
    spdlog::level::level_enum to = spdlog::level::info;
    switch (level) {
      case rocksdb::InfoLogLevel::DEBUG_LEVEL:
        to = spdlog::level::debug;
        break;
      case rocksdb::InfoLogLevel::WARN_LEVEL:
        to = spdlog::level::warn;
        break;
      case rocksdb::InfoLogLevel::ERROR_LEVEL:
        to = spdlog::level::err;
        break;
      case rocksdb::InfoLogLevel::FATAL_LEVEL:
        to = spdlog::level::critical;
        break;
      default:
        break;
    }
    spdlog::log(to, "rocksdb: {}", line);
  }
};

}  // namespace errand::store
