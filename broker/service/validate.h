#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "errand/v1/admin.pb.h"
#include "errand/v1/events.pb.h"
#include "errand/v1/jobs.pb.h"
#include "errand/v1/workers.pb.h"

// Request validation: every check names the offending field and the limit,
// so a user reading the status knows what to change. Pure functions; no
// state, no threads.
namespace errand::service {

struct Limits {
  // Largest job payload. Default: 1 MiB (--max-payload-bytes).
  size_t max_payload_bytes = 1 << 20;
  // Most jobs in one EnqueueBatch. Default: 1000 (--max-batch).
  size_t max_batch = 1000;
  // Largest sum of header keys and values of one job. Default: 64 KiB.
  size_t max_headers_bytes = 64 << 10;
  // Largest result passed to Complete. Default: 1 MiB.
  size_t max_result_bytes = 1 << 20;
  // Longest error passed to Fail before truncation is refused. Default: 64 KiB.
  size_t max_error_bytes = 64 << 10;
};

inline constexpr size_t kMaxQueueNameLength = 128;
inline constexpr size_t kMaxKeyLength = 256;
inline constexpr uint32_t kMaxAttempts = 1000;
inline constexpr uint32_t kMaxLeaseJobs = 1000;
inline constexpr std::chrono::seconds kMinLease{1};
inline constexpr std::chrono::hours kMaxLease{24};
inline constexpr std::chrono::hours kMaxDelay{24 * 365};
inline constexpr std::chrono::minutes kMaxWait{5};

// 1..128 characters from [A-Za-z0-9._:/-].
absl::Status ValidateQueueName(std::string_view name, std::string_view field);

// Parses a job id field (16 hex digits).
absl::StatusOr<uint64_t> ParseJobIdField(std::string_view id, std::string_view field);

// `field` prefixes names in messages, e.g. "jobs[3].".
absl::Status ValidateEnqueue(const v1::EnqueueRequest& req, const Limits& limits,
                             std::chrono::system_clock::time_point now,
                             std::string_view field = "");
// The number of jobs in one EnqueueBatch against --max-batch (also checked on
// the raw bytes, before the jobs are parsed).
absl::Status ValidateBatchSize(uint64_t jobs, const Limits& limits);
absl::Status ValidateEnqueueBatch(const v1::EnqueueBatchRequest& req, const Limits& limits,
                                  std::chrono::system_clock::time_point now);
absl::Status ValidateLease(const v1::LeaseRequest& req);
absl::Status ValidateComplete(const v1::CompleteRequest& req, const Limits& limits);
absl::Status ValidateFail(const v1::FailRequest& req, const Limits& limits);
absl::Status ValidateExtend(const v1::ExtendRequest& req);
absl::Status ValidateCancel(const v1::CancelJobRequest& req);
// Workers.Connect's first message.
absl::Status ValidateHello(const v1::ConnectHello& hello);
// Events.Subscribe: filters (names, ids, known types, at most 1024 entries)
// and the start position.
absl::Status ValidateSubscribe(const v1::SubscribeRequest& req);
// Events.Publish: topic name, payload and header sizes, durability.
absl::Status ValidatePublish(const v1::PublishRequest& req, const Limits& limits);

inline constexpr uint32_t kDefaultPageSize = 100;
inline constexpr uint32_t kMaxPageSize = 1000;
inline constexpr size_t kMaxReasonBytes = 4096;
inline constexpr uint32_t kMaxLeasedPerKey = 1'000'000;

// A page_size field: 0 means kDefaultPageSize; at most kMaxPageSize.
absl::StatusOr<uint32_t> ParsePageSize(uint32_t page_size, std::string_view field);
// A page token from a previous answer ("" = the first page): the job id the
// previous page stopped at, 0 for the first page.
absl::StatusOr<uint64_t> ParsePageToken(std::string_view token, std::string_view field);
std::string MakePageToken(uint64_t after);
absl::Status ValidateListJobs(const v1::ListJobsRequest& req);
absl::Status ValidateRedrive(const v1::RedriveJobsRequest& req);

// A Duration field within [min, max]; `allow_zero` accepts an unset/zero one.
absl::Status ValidateDuration(const google::protobuf::Duration& d, std::string_view field,
                              std::chrono::microseconds min, std::chrono::microseconds max,
                              bool allow_zero);

}  // namespace errand::service
