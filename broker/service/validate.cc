#include "service/validate.h"

#include <string>

#include "store/keys.h"
#include "util/time.h"

namespace errand::service {
namespace {

std::string F(std::string_view prefix, std::string_view field) {
  return std::string(prefix) + std::string(field);
}

std::string Human(std::chrono::microseconds d) {
  auto s = std::chrono::duration_cast<std::chrono::seconds>(d).count();
  if (s % 3600 == 0 && s >= 3600) return std::to_string(s / 3600) + "h";
  if (s % 60 == 0 && s >= 60) return std::to_string(s / 60) + "m";
  if (s >= 1) return std::to_string(s) + "s";
  return std::to_string(d.count()) + "us";
}

// `s` as it can be shown in a status message: bytes outside printable ASCII
// (control characters, invalid UTF-8) become \xNN.
std::string Printable(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  return out;
}

bool ValidDurationProto(const google::protobuf::Duration& d) {
  // Protobuf's own rules: |seconds| <= 315576000000, nanos in (-1e9, 1e9)
  // with the same sign as seconds.
  if (d.seconds() > 315576000000LL || d.seconds() < -315576000000LL) return false;
  if (d.nanos() <= -1000000000 || d.nanos() >= 1000000000) return false;
  if ((d.seconds() > 0 && d.nanos() < 0) || (d.seconds() < 0 && d.nanos() > 0)) return false;
  return true;
}

}  // namespace

absl::Status ValidateQueueName(std::string_view name, std::string_view field) {
  if (name.empty()) return absl::InvalidArgumentError(std::string(field) + " is required");
  if (name.size() > kMaxQueueNameLength) {
    return absl::InvalidArgumentError(std::string(field) + " is " + std::to_string(name.size()) +
                                      " characters; the limit is " +
                                      std::to_string(kMaxQueueNameLength));
  }
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '/' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          std::string(field) + " \"" + Printable(name) +
          "\" has a character outside [A-Za-z0-9._:/-]");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> ParseJobIdField(std::string_view id, std::string_view field) {
  if (id.empty()) return absl::InvalidArgumentError(std::string(field) + " is required");
  auto parsed = store::ParseJobId(id);
  if (!parsed) {
    std::string shown = Printable(id.substr(0, 40));
    return absl::InvalidArgumentError(std::string(field) + " \"" + shown +
                                      "\" is not a job id (16 hex digits)");
  }
  return *parsed;
}

absl::Status ValidateDuration(const google::protobuf::Duration& d, std::string_view field,
                              std::chrono::microseconds min, std::chrono::microseconds max,
                              bool allow_zero) {
  if (!ValidDurationProto(d)) {
    return absl::InvalidArgumentError(std::string(field) + " is not a valid duration");
  }
  if (d.seconds() < 0 || d.nanos() < 0) {
    return absl::InvalidArgumentError(std::string(field) + " is negative");
  }
  if (d.seconds() == 0 && d.nanos() == 0) {
    if (allow_zero) return absl::OkStatus();
    return absl::InvalidArgumentError(std::string(field) + " must be at least " + Human(min));
  }
  // Checked before converting so huge values cannot overflow.
  if (d.seconds() > std::chrono::duration_cast<std::chrono::seconds>(max).count()) {
    return absl::InvalidArgumentError(std::string(field) + " exceeds the limit of " + Human(max));
  }
  auto us = util::DurationFromProto(d);
  if (us > max) {
    return absl::InvalidArgumentError(std::string(field) + " exceeds the limit of " + Human(max));
  }
  if (us < min) {
    return absl::InvalidArgumentError(std::string(field) + " must be at least " + Human(min));
  }
  return absl::OkStatus();
}

absl::Status ValidateEnqueue(const v1::EnqueueRequest& req, const Limits& limits,
                             std::chrono::system_clock::time_point now, std::string_view p) {
  if (auto s = ValidateQueueName(req.queue(), F(p, "queue")); !s.ok()) return s;
  if (req.payload().size() > limits.max_payload_bytes) {
    return absl::InvalidArgumentError(F(p, "payload") + " is " +
                                      std::to_string(req.payload().size()) +
                                      " bytes; the limit is " +
                                      std::to_string(limits.max_payload_bytes) +
                                      " bytes (--max-payload-bytes)");
  }
  size_t header_bytes = 0;
  for (const auto& [k, v] : req.headers()) {
    if (k.empty()) return absl::InvalidArgumentError(F(p, "headers") + " has an empty key");
    header_bytes += k.size() + v.size();
  }
  if (header_bytes > limits.max_headers_bytes) {
    return absl::InvalidArgumentError(F(p, "headers") + " total " + std::to_string(header_bytes) +
                                      " bytes; the limit is " +
                                      std::to_string(limits.max_headers_bytes) +
                                      " bytes (--max-headers-bytes)");
  }
  if (req.has_run_at() && req.has_delay()) {
    return absl::InvalidArgumentError(F(p, "run_at") + " and " + F(p, "delay") +
                                      " are mutually exclusive");
  }
  if (req.has_run_at()) {
    const auto& ts = req.run_at();
    if (ts.seconds() < 0 || ts.seconds() > 253402300799LL || ts.nanos() < 0 ||
        ts.nanos() > 999999999) {
      return absl::InvalidArgumentError(F(p, "run_at") + " is not a valid timestamp");
    }
    // Compared in seconds: far-future timestamps overflow a time_point.
    const int64_t now_s =
        std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
    const int64_t max_s = std::chrono::duration_cast<std::chrono::seconds>(kMaxDelay).count();
    if (ts.seconds() > now_s + max_s) {
      return absl::InvalidArgumentError(F(p, "run_at") + " is more than 365 days ahead");
    }
  }
  if (req.has_delay()) {
    if (auto s = ValidateDuration(req.delay(), F(p, "delay"), std::chrono::microseconds(0),
                                  kMaxDelay, true);
        !s.ok()) {
      return s;
    }
  }
  if (req.max_attempts() > kMaxAttempts) {
    return absl::InvalidArgumentError(F(p, "max_attempts") + " is " +
                                      std::to_string(req.max_attempts()) +
                                      "; the limit is " + std::to_string(kMaxAttempts));
  }
  if (req.has_lease_duration()) {
    if (auto s = ValidateDuration(req.lease_duration(), F(p, "lease_duration"), kMinLease,
                                  kMaxLease, true);
        !s.ok()) {
      return s;
    }
  }
  if (req.idempotency_key().size() > kMaxKeyLength) {
    return absl::InvalidArgumentError(F(p, "idempotency_key") + " is longer than " +
                                      std::to_string(kMaxKeyLength) + " characters");
  }
  if (req.concurrency_key().size() > kMaxKeyLength) {
    return absl::InvalidArgumentError(F(p, "concurrency_key") + " is longer than " +
                                      std::to_string(kMaxKeyLength) + " characters");
  }
  if (!v1::Durability_IsValid(req.durability())) {
    return absl::InvalidArgumentError(F(p, "durability") + " is not a known Durability");
  }
  if (req.has_retry()) {
    const auto& r = req.retry();
    if (auto s = ValidateDuration(r.initial_backoff(), F(p, "retry.initial_backoff"),
                                  std::chrono::microseconds(0), kMaxLease, true);
        !s.ok()) {
      return s;
    }
    if (auto s = ValidateDuration(r.max_backoff(), F(p, "retry.max_backoff"),
                                  std::chrono::microseconds(0), kMaxDelay, true);
        !s.ok()) {
      return s;
    }
    if (!(r.multiplier() == 0 || (r.multiplier() >= 1 && r.multiplier() <= 100))) {
      return absl::InvalidArgumentError(F(p, "retry.multiplier") + " must be in [1, 100]");
    }
    if (!(r.jitter() >= 0 && r.jitter() <= 1)) {
      return absl::InvalidArgumentError(F(p, "retry.jitter") + " must be in [0, 1]");
    }
  }
  if (req.has_retention()) {
    if (auto s = ValidateDuration(req.retention(), F(p, "retention"),
                                  std::chrono::microseconds(0), kMaxDelay * 10, true);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateBatchSize(uint64_t jobs, const Limits& limits) {
  if (jobs > limits.max_batch) {
    return absl::InvalidArgumentError("jobs has " + std::to_string(jobs) +
                                      " entries; the limit is " +
                                      std::to_string(limits.max_batch) + " (--max-batch)");
  }
  return absl::OkStatus();
}

absl::Status ValidateEnqueueBatch(const v1::EnqueueBatchRequest& req, const Limits& limits,
                                  std::chrono::system_clock::time_point now) {
  if (req.jobs_size() == 0) return absl::InvalidArgumentError("jobs is empty");
  if (auto s = ValidateBatchSize(static_cast<uint64_t>(req.jobs_size()), limits); !s.ok()) {
    return s;
  }
  if (!v1::Durability_IsValid(req.durability())) {
    return absl::InvalidArgumentError("durability is not a known Durability");
  }
  for (int i = 0; i < req.jobs_size(); ++i) {
    std::string prefix = "jobs[" + std::to_string(i) + "].";
    if (auto s = ValidateEnqueue(req.jobs(i), limits, now, prefix); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status ValidateLease(const v1::LeaseRequest& req) {
  if (req.queues_size() == 0) return absl::InvalidArgumentError("queues is empty");
  if (req.queues_size() > 64) {
    return absl::InvalidArgumentError("queues has more than 64 entries");
  }
  for (int i = 0; i < req.queues_size(); ++i) {
    if (auto s = ValidateQueueName(req.queues(i), "queues[" + std::to_string(i) + "]"); !s.ok()) {
      return s;
    }
  }
  if (req.max_jobs() > kMaxLeaseJobs) {
    return absl::InvalidArgumentError("max_jobs is " + std::to_string(req.max_jobs()) +
                                      "; the limit is " + std::to_string(kMaxLeaseJobs));
  }
  if (auto s = ValidateDuration(req.wait(), "wait", std::chrono::microseconds(0), kMaxWait, true);
      !s.ok()) {
    return s;
  }
  if (auto s = ValidateDuration(req.lease_duration(), "lease_duration", kMinLease, kMaxLease,
                                true);
      !s.ok()) {
    return s;
  }
  if (req.worker_id().size() > kMaxKeyLength) {
    return absl::InvalidArgumentError("worker_id is longer than " +
                                      std::to_string(kMaxKeyLength) + " characters");
  }
  return absl::OkStatus();
}

absl::Status ValidateComplete(const v1::CompleteRequest& req, const Limits& limits) {
  if (auto id = ParseJobIdField(req.job_id(), "job_id"); !id.ok()) return id.status();
  if (req.lease_token() == 0) return absl::InvalidArgumentError("lease_token is required");
  if (req.result().size() > limits.max_result_bytes) {
    return absl::InvalidArgumentError("result is " + std::to_string(req.result().size()) +
                                      " bytes; the limit is " +
                                      std::to_string(limits.max_result_bytes) +
                                      " bytes (--max-result-bytes)");
  }
  return absl::OkStatus();
}

absl::Status ValidateFail(const v1::FailRequest& req, const Limits& limits) {
  if (auto id = ParseJobIdField(req.job_id(), "job_id"); !id.ok()) return id.status();
  if (req.lease_token() == 0) return absl::InvalidArgumentError("lease_token is required");
  if (req.error().size() > limits.max_error_bytes) {
    return absl::InvalidArgumentError("error is " + std::to_string(req.error().size()) +
                                      " bytes; the limit is " +
                                      std::to_string(limits.max_error_bytes));
  }
  return ValidateDuration(req.retry_after(), "retry_after", std::chrono::microseconds(0),
                          kMaxDelay, true);
}

absl::Status ValidateExtend(const v1::ExtendRequest& req) {
  if (auto id = ParseJobIdField(req.job_id(), "job_id"); !id.ok()) return id.status();
  if (req.lease_token() == 0) return absl::InvalidArgumentError("lease_token is required");
  if (req.has_progress()) {
    const auto& p = req.progress();
    if (!(p.fraction() >= 0 && p.fraction() <= 1)) {
      return absl::InvalidArgumentError("progress.fraction must be in [0, 1]");
    }
    if (p.message().size() > 4096) {
      return absl::InvalidArgumentError("progress.message is longer than 4096 bytes");
    }
  }
  return ValidateDuration(req.extend_by(), "extend_by", kMinLease, kMaxLease, true);
}

absl::Status ValidateCancel(const v1::CancelJobRequest& req) {
  if (auto id = ParseJobIdField(req.job_id(), "job_id"); !id.ok()) return id.status();
  if (req.reason().size() > kMaxReasonBytes) {
    return absl::InvalidArgumentError("reason is " + std::to_string(req.reason().size()) +
                                      " bytes; the limit is " + std::to_string(kMaxReasonBytes));
  }
  return absl::OkStatus();
}

absl::Status ValidateHello(const v1::ConnectHello& h) {
  if (h.queues_size() == 0) return absl::InvalidArgumentError("hello.queues is empty");
  if (h.queues_size() > 64) {
    return absl::InvalidArgumentError("hello.queues has more than 64 entries");
  }
  for (int i = 0; i < h.queues_size(); ++i) {
    if (auto s = ValidateQueueName(h.queues(i), "hello.queues[" + std::to_string(i) + "]");
        !s.ok()) {
      return s;
    }
  }
  if (h.worker_id().size() > kMaxKeyLength) {
    return absl::InvalidArgumentError("hello.worker_id is longer than " +
                                      std::to_string(kMaxKeyLength) + " characters");
  }
  return ValidateDuration(h.lease_duration(), "hello.lease_duration", kMinLease, kMaxLease, true);
}

absl::Status ValidateSubscribe(const v1::SubscribeRequest& req) {
  if (req.queues_size() + req.job_ids_size() + req.topics_size() + req.types_size() > 1024) {
    return absl::InvalidArgumentError("more than 1024 filter entries");
  }
  for (int i = 0; i < req.queues_size(); ++i) {
    if (auto s = ValidateQueueName(req.queues(i), "queues[" + std::to_string(i) + "]"); !s.ok()) {
      return s;
    }
  }
  for (int i = 0; i < req.job_ids_size(); ++i) {
    auto id = ParseJobIdField(req.job_ids(i), "job_ids[" + std::to_string(i) + "]");
    if (!id.ok()) return id.status();
  }
  for (int i = 0; i < req.topics_size(); ++i) {
    if (auto s = ValidateQueueName(req.topics(i), "topics[" + std::to_string(i) + "]"); !s.ok()) {
      return s;
    }
  }
  for (int t : req.types()) {
    if (!v1::EventType_IsValid(t) || t == v1::EVENT_TYPE_UNSPECIFIED) {
      return absl::InvalidArgumentError("types has an unknown event type " + std::to_string(t));
    }
  }
  if (req.from_oldest() && req.after_seq() != 0) {
    return absl::InvalidArgumentError("after_seq and from_oldest are mutually exclusive");
  }
  return absl::OkStatus();
}

absl::Status ValidatePublish(const v1::PublishRequest& req, const Limits& limits) {
  if (auto s = ValidateQueueName(req.topic(), "topic"); !s.ok()) return s;
  if (req.payload().size() > limits.max_payload_bytes) {
    return absl::InvalidArgumentError("payload is " + std::to_string(req.payload().size()) +
                                      " bytes; the limit is " +
                                      std::to_string(limits.max_payload_bytes) +
                                      " bytes (--max-payload-bytes)");
  }
  size_t header_bytes = 0;
  for (const auto& [k, v] : req.headers()) header_bytes += k.size() + v.size();
  if (header_bytes > limits.max_headers_bytes) {
    return absl::InvalidArgumentError("headers total " + std::to_string(header_bytes) +
                                      " bytes; the limit is " +
                                      std::to_string(limits.max_headers_bytes) +
                                      " bytes (--max-headers-bytes)");
  }
  if (!v1::Durability_IsValid(req.durability())) {
    return absl::InvalidArgumentError("durability is not a known Durability");
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> ParsePageSize(uint32_t page_size, std::string_view field) {
  if (page_size == 0) return kDefaultPageSize;
  if (page_size > kMaxPageSize) {
    return absl::InvalidArgumentError(std::string(field) + " is " + std::to_string(page_size) +
                                      "; the limit is " + std::to_string(kMaxPageSize));
  }
  return page_size;
}

absl::StatusOr<uint64_t> ParsePageToken(std::string_view token, std::string_view field) {
  if (token.empty()) return uint64_t{0};
  auto id = store::ParseJobId(token);
  if (!id) {
    return absl::InvalidArgumentError(std::string(field) +
                                      " is not a next_page_token from a previous answer");
  }
  return *id;
}

std::string MakePageToken(uint64_t after) { return after == 0 ? "" : store::FormatJobId(after); }

absl::Status ValidateListJobs(const v1::ListJobsRequest& req) {
  if (auto s = ValidateQueueName(req.queue(), "queue"); !s.ok()) return s;
  if (!v1::JobState_IsValid(req.state())) {
    return absl::InvalidArgumentError("state " + std::to_string(req.state()) +
                                      " is not a known JobState");
  }
  if (!v1::SortOrder_IsValid(req.order())) {
    return absl::InvalidArgumentError("order " + std::to_string(req.order()) +
                                      " is not a known SortOrder");
  }
  if (auto s = ParsePageSize(req.page_size(), "page_size"); !s.ok()) return s.status();
  if (auto s = ParsePageToken(req.page_token(), "page_token"); !s.ok()) return s.status();
  return absl::OkStatus();
}

absl::Status ValidateRedrive(const v1::RedriveJobsRequest& req) {
  if (req.queue().empty() && req.job_ids_size() == 0) {
    return absl::InvalidArgumentError("queue or job_ids is required");
  }
  if (!req.queue().empty()) {
    if (auto s = ValidateQueueName(req.queue(), "queue"); !s.ok()) return s;
  }
  if (req.job_ids_size() > 10000) {
    return absl::InvalidArgumentError("job_ids has " + std::to_string(req.job_ids_size()) +
                                      " entries; the limit is 10000");
  }
  for (int i = 0; i < req.job_ids_size(); ++i) {
    if (auto id = ParseJobIdField(req.job_ids(i), "job_ids[" + std::to_string(i) + "]");
        !id.ok()) {
      return id.status();
    }
  }
  return absl::OkStatus();
}

}  // namespace errand::service
