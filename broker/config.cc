#include "config.h"

#include <cctype>

namespace errand {

absl::StatusOr<std::chrono::microseconds> ParseDuration(const std::string& text,
                                                        std::chrono::microseconds bare_unit) {
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  if (i == 0 || i > 12) return absl::InvalidArgumentError("\"" + text + "\" is not a duration");
  int64_t n = std::stoll(text.substr(0, i));
  std::string unit = text.substr(i);
  std::chrono::microseconds u;
  if (unit.empty()) {
    u = bare_unit;
  } else if (unit == "us") {
    u = std::chrono::microseconds(1);
  } else if (unit == "ms") {
    u = std::chrono::milliseconds(1);
  } else if (unit == "s") {
    u = std::chrono::seconds(1);
  } else if (unit == "m") {
    u = std::chrono::minutes(1);
  } else if (unit == "h") {
    u = std::chrono::hours(1);
  } else {
    return absl::InvalidArgumentError("\"" + text + "\": unknown unit (use ms, s, m or h)");
  }
  // At most ten years, whatever the unit: larger values would overflow
  // time arithmetic and are never meant.
  constexpr int64_t kMaxUs = int64_t{3650} * 24 * 3600 * 1'000'000;
  if (n > kMaxUs / u.count()) {
    return absl::InvalidArgumentError("\"" + text + "\" is longer than ten years");
  }
  return u * n;
}

absl::Status Config::Validate() const {
  if (listen.empty()) return absl::InvalidArgumentError("--listen is empty");
  if (data_dir.empty()) return absl::InvalidArgumentError("--data-dir is empty");
  if (sync_interval.count() < 1 || sync_interval > std::chrono::seconds(60)) {
    return absl::InvalidArgumentError("--sync-interval must be 1..60000 ms");
  }
  if (default_lease < std::chrono::seconds(1) || default_lease > std::chrono::hours(24)) {
    return absl::InvalidArgumentError("--default-lease must be between 1s and 24h");
  }
  if (default_max_attempts < 1 || default_max_attempts > 1000) {
    return absl::InvalidArgumentError("--default-max-attempts must be 1..1000");
  }
  if (max_payload_bytes < 1 || max_payload_bytes > (64u << 20)) {
    return absl::InvalidArgumentError("--max-payload-bytes must be 1..67108864");
  }
  if (max_batch < 1 || max_batch > 100000) {
    return absl::InvalidArgumentError("--max-batch must be 1..100000");
  }
  if (retention < std::chrono::seconds(1)) {
    return absl::InvalidArgumentError("--retention must be at least 1s");
  }
  if (idempotency_window < std::chrono::seconds(1)) {
    return absl::InvalidArgumentError("--idempotency-window must be at least 1s");
  }
  if (max_headers_bytes < 1 || max_headers_bytes > (16u << 20)) {
    return absl::InvalidArgumentError("--max-headers-bytes must be 1..16777216");
  }
  if (max_result_bytes < 1 || max_result_bytes > (64u << 20)) {
    return absl::InvalidArgumentError("--max-result-bytes must be 1..67108864");
  }
  if (event_retention_count < 1) {
    return absl::InvalidArgumentError("--event-retention-count must be at least 1");
  }
  if (event_retention_age < std::chrono::seconds(1)) {
    return absl::InvalidArgumentError("--event-retention-age must be at least 1s");
  }
  if (shutdown_grace < std::chrono::milliseconds(0) || shutdown_grace > std::chrono::minutes(10)) {
    return absl::InvalidArgumentError("--shutdown-grace must be between 0 and 10m");
  }
  if (worker_grace < std::chrono::milliseconds(0) || worker_grace > std::chrono::hours(1)) {
    return absl::InvalidArgumentError("--worker-grace must be between 0 and 1h");
  }
  if (keepalive_time < std::chrono::seconds(1) || keepalive_time > std::chrono::hours(24)) {
    return absl::InvalidArgumentError("--keepalive-time must be between 1s and 24h");
  }
  if (keepalive_timeout < std::chrono::milliseconds(100) ||
      keepalive_timeout > std::chrono::hours(1)) {
    return absl::InvalidArgumentError("--keepalive-timeout must be between 100ms and 1h");
  }
  if (keepalive_min_client_interval < std::chrono::milliseconds(100) ||
      keepalive_min_client_interval > std::chrono::hours(24)) {
    return absl::InvalidArgumentError(
        "--keepalive-min-client-interval must be between 100ms and 24h");
  }
  if (http_timeout < std::chrono::milliseconds(10) || http_timeout > std::chrono::minutes(10)) {
    return absl::InvalidArgumentError("--http-timeout must be between 10ms and 10m");
  }
  if (max_message_bytes < max_payload_bytes + (64 << 10)) {
    return absl::InvalidArgumentError(
        "--max-message-bytes must exceed --max-payload-bytes by at least 64 KiB");
  }
  // Limits on open calls.
  if (max_streams < 1 || max_streams_per_connection < 1 || max_long_polls < 1 ||
      max_long_polls_per_connection < 1 || max_subscribers < 1) {
    return absl::InvalidArgumentError(
        "--max-streams, --max-streams-per-connection, --max-long-polls, "
        "--max-long-polls-per-connection and --max-subscribers must be at least 1");
  }
  return absl::OkStatus();
}

// --- Security: TLS and bearer tokens ---

bool IsLoopbackAddress(const std::string& listen) {
  std::string a = listen;
  if (a.rfind("unix:", 0) == 0 || a.rfind("unix-abstract:", 0) == 0) return true;
  if (a.rfind("ipv4:", 0) == 0) a = a.substr(5);
  if (a.rfind("ipv6:", 0) == 0) a = a.substr(5);
  std::string host;
  if (!a.empty() && a[0] == '[') {
    size_t end = a.find(']');
    if (end == std::string::npos) return false;
    host = a.substr(1, end - 1);
  } else {
    size_t colon = a.rfind(':');
    host = colon == std::string::npos ? a : a.substr(0, colon);
  }
  if (host == "localhost" || host == "::1") return true;
  // 127.0.0.0/8.
  return host.rfind("127.", 0) == 0 &&
         host.find_first_not_of("0123456789.") == std::string::npos;
}

absl::Status Config::ValidateSecurity() const {
  if (tls_cert.empty() != tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key must be given together");
  }
  if (!tls_client_ca.empty() && tls_cert.empty()) {
    return absl::InvalidArgumentError(
        "--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key");
  }
  if (token_file.empty() && !insecure && !IsLoopbackAddress(listen)) {
    return absl::InvalidArgumentError(
        "refusing to listen on " + listen +
        " without --token-file: anyone who can reach it could enqueue, lease and purge jobs. "
        "Give --token-file (and --tls-cert/--tls-key), or --insecure to serve it open");
  }
  return absl::OkStatus();
}

}  // namespace errand
