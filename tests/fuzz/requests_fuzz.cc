// Fuzz target: every request's validation path. The first input byte picks
// an RPC; the rest is that RPC's request message on the wire, parsed the way
// gRPC parses it before the service sees it, then validated as the service
// validates it. The raw bytes are also tried as a queue name and a job id.
//
// Checked beyond "no crash, no sanitizer report": a refusal is
// INVALID_ARGUMENT with a short, non-empty message; an accepted request's
// durations convert without overflow and stay within their documented limits.

#include <google/protobuf/stubs/logging.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "errand/v1/admin.pb.h"
#include "errand/v1/events.pb.h"
#include "errand/v1/jobs.pb.h"
#include "errand/v1/workers.pb.h"
#include "service/validate.h"
#include "util/time.h"

namespace {

using namespace errand;  // NOLINT: a test driver

#define FUZZ_CHECK(cond) \
  do {                   \
    if (!(cond)) __builtin_trap(); \
  } while (0)

// A refusal names the problem and stays short even for hostile input.
void CheckRefusal(const absl::Status& s) {
  if (s.ok()) return;
  FUZZ_CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  FUZZ_CHECK(!s.message().empty());
  FUZZ_CHECK(s.message().size() <= 1024);
}

void CheckRefusal(const absl::Status& s, const absl::StatusOr<uint64_t>& id) {
  CheckRefusal(s);
  if (id.ok()) FUZZ_CHECK(*id != 0);
}

// An accepted duration converts without overflow and is at most `max`.
void CheckDuration(const google::protobuf::Duration& d, std::chrono::microseconds max) {
  auto us = util::DurationFromProto(d);
  FUZZ_CHECK(us.count() >= 0);
  FUZZ_CHECK(us <= max);
}

void CheckEnqueue(const v1::EnqueueRequest& r, const service::Limits& limits,
                  std::chrono::system_clock::time_point now) {
  absl::Status s = service::ValidateEnqueue(r, limits, now);
  CheckRefusal(s);
  if (!s.ok()) return;
  FUZZ_CHECK(!r.queue().empty() && r.queue().size() <= service::kMaxQueueNameLength);
  FUZZ_CHECK(r.payload().size() <= limits.max_payload_bytes);
  if (r.has_delay()) CheckDuration(r.delay(), service::kMaxDelay);
  if (r.has_lease_duration()) CheckDuration(r.lease_duration(), service::kMaxLease);
  if (r.has_retention()) CheckDuration(r.retention(), service::kMaxDelay * 10);
  if (r.has_run_at()) (void)util::FromProto(r.run_at());
  FUZZ_CHECK(r.max_attempts() <= service::kMaxAttempts);
}

template <typename M>
bool Parse(M* m, const uint8_t* data, size_t size) {
  return m->ParseFromArray(data, static_cast<int>(size));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Invalid UTF-8 in proto3 strings makes the parser log; keep runs quiet.
  static bool quiet = [] {
    google::protobuf::SetLogHandler(nullptr);
    return true;
  }();
  (void)quiet;
  if (size == 0) return 0;
  const std::string_view raw(reinterpret_cast<const char*>(data), size);
  CheckRefusal(service::ValidateQueueName(raw, "queue"));
  {
    auto id = service::ParseJobIdField(raw, "job_id");
    CheckRefusal(id.status(), id);
  }

  service::Limits limits;
  limits.max_payload_bytes = 1 << 10;  // small, so the fuzzer reaches the limits
  limits.max_batch = 8;
  limits.max_headers_bytes = 256;
  limits.max_result_bytes = 1 << 10;
  limits.max_error_bytes = 256;
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1'800'000'000));

  const uint8_t which = data[0];
  ++data;
  --size;
  switch (which % 16) {
    case 0: {
      v1::EnqueueRequest r;
      if (Parse(&r, data, size)) CheckEnqueue(r, limits, now);
      break;
    }
    case 1: {
      v1::EnqueueBatchRequest r;
      if (!Parse(&r, data, size)) break;
      absl::Status s = service::ValidateEnqueueBatch(r, limits, now);
      CheckRefusal(s);
      if (s.ok()) {
        FUZZ_CHECK(r.jobs_size() > 0 && static_cast<size_t>(r.jobs_size()) <= limits.max_batch);
        for (const auto& j : r.jobs()) CheckEnqueue(j, limits, now);
      }
      break;
    }
    case 2: {
      v1::EnqueueStreamRequest r;
      if (!Parse(&r, data, size)) break;
      CheckEnqueue(r.job(), limits, now);
      for (const auto& m : r.more()) CheckEnqueue(m.job(), limits, now);
      break;
    }
    case 3: {
      v1::GetJobRequest r;
      if (!Parse(&r, data, size)) break;
      auto id = service::ParseJobIdField(r.job_id(), "job_id");
      CheckRefusal(id.status(), id);
      break;
    }
    case 4: {
      v1::WaitJobRequest r;
      if (!Parse(&r, data, size)) break;
      auto id = service::ParseJobIdField(r.job_id(), "job_id");
      CheckRefusal(id.status(), id);
      absl::Status s = service::ValidateDuration(r.timeout(), "timeout",
                                                 std::chrono::microseconds(0), service::kMaxWait,
                                                 true);
      CheckRefusal(s);
      if (s.ok()) CheckDuration(r.timeout(), service::kMaxWait);
      break;
    }
    case 5: {
      v1::CancelJobRequest r;
      if (Parse(&r, data, size)) CheckRefusal(service::ValidateCancel(r));
      break;
    }
    case 6: {
      v1::ListJobsRequest r;
      if (!Parse(&r, data, size)) break;
      absl::Status s = service::ValidateListJobs(r);
      CheckRefusal(s);
      if (s.ok()) {
        auto n = service::ParsePageSize(r.page_size(), "page_size");
        FUZZ_CHECK(n.ok() && *n >= 1 && *n <= service::kMaxPageSize);
      }
      break;
    }
    case 7: {
      v1::LeaseRequest r;
      if (!Parse(&r, data, size)) break;
      absl::Status s = service::ValidateLease(r);
      CheckRefusal(s);
      if (s.ok()) {
        CheckDuration(r.wait(), service::kMaxWait);
        CheckDuration(r.lease_duration(), service::kMaxLease);
        FUZZ_CHECK(r.max_jobs() <= service::kMaxLeaseJobs);
      }
      break;
    }
    case 8: {
      v1::ConnectRequest r;
      if (!Parse(&r, data, size)) break;
      switch (r.kind_case()) {
        case v1::ConnectRequest::kHello: {
          absl::Status s = service::ValidateHello(r.hello());
          CheckRefusal(s);
          if (s.ok()) CheckDuration(r.hello().lease_duration(), service::kMaxLease);
          break;
        }
        case v1::ConnectRequest::kComplete:
          CheckRefusal(service::ValidateComplete(r.complete(), limits));
          break;
        case v1::ConnectRequest::kFail:
          CheckRefusal(service::ValidateFail(r.fail(), limits));
          break;
        case v1::ConnectRequest::kExtend:
          CheckRefusal(service::ValidateExtend(r.extend()));
          break;
        default:
          break;
      }
      break;
    }
    case 9: {
      v1::CompleteRequest r;
      if (Parse(&r, data, size)) CheckRefusal(service::ValidateComplete(r, limits));
      break;
    }
    case 10: {
      v1::FailRequest r;
      if (!Parse(&r, data, size)) break;
      absl::Status s = service::ValidateFail(r, limits);
      CheckRefusal(s);
      if (s.ok()) CheckDuration(r.retry_after(), service::kMaxDelay);
      break;
    }
    case 11: {
      v1::ExtendRequest r;
      if (!Parse(&r, data, size)) break;
      absl::Status s = service::ValidateExtend(r);
      CheckRefusal(s);
      if (s.ok()) CheckDuration(r.extend_by(), service::kMaxLease);
      break;
    }
    case 12: {
      v1::SubscribeRequest r;
      if (Parse(&r, data, size)) CheckRefusal(service::ValidateSubscribe(r));
      break;
    }
    case 13: {
      v1::PublishRequest r;
      if (Parse(&r, data, size)) CheckRefusal(service::ValidatePublish(r, limits));
      break;
    }
    case 14: {
      v1::RedriveJobsRequest r;
      if (Parse(&r, data, size)) CheckRefusal(service::ValidateRedrive(r));
      break;
    }
    default: {
      v1::PauseQueueRequest r;
      if (Parse(&r, data, size)) CheckRefusal(service::ValidateQueueName(r.queue(), "queue"));
      break;
    }
  }
  return 0;
}
