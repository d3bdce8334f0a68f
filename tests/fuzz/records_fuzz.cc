// Fuzz target: decoding of the store's records (broker/store/records.h). The
// first input byte picks a column family's decoder, the second is the key's
// length; then come the key and the value, as RocksDB would hand them back
// from a damaged or hand-edited store.
//
// Checked beyond "no crash, no sanitizer report": a refusal is DATA_LOSS with
// a short message; a decoded record holds what the engine relies on (a known
// state it can index its per-state counts with, the id of its key, times
// that convert without overflow), and decodes again from its own encoding.

#include <google/protobuf/stubs/logging.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "store/keys.h"
#include "store/records.h"
#include "util/time.h"

namespace {

using namespace errand;  // NOLINT: a test driver

#define FUZZ_CHECK(cond) \
  do {                   \
    if (!(cond)) __builtin_trap(); \
  } while (0)

void CheckRefusal(const absl::Status& s) {
  if (s.ok()) return;
  FUZZ_CHECK(s.code() == absl::StatusCode::kDataLoss);
  FUZZ_CHECK(!s.message().empty());
  FUZZ_CHECK(s.message().size() <= 1024);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = [] {
    google::protobuf::SetLogHandler(nullptr);
    return true;
  }();
  (void)quiet;
  if (size < 2) return 0;
  const uint8_t which = data[0];
  const size_t key_len = std::min<size_t>(data[1], size - 2);
  const std::string_view key(reinterpret_cast<const char*>(data) + 2, key_len);
  const std::string_view value(reinterpret_cast<const char*>(data) + 2 + key_len,
                               size - 2 - key_len);
  switch (which % 4) {
    case 0: {
      auto rec = store::DecodeJobRecord(key, value);
      CheckRefusal(rec.status());
      if (!rec.ok()) break;
      const v1::Job& job = rec->job();
      // The engine keeps counts[7] by state and converts these times.
      FUZZ_CHECK(job.state() > 0 && job.state() < 7);
      FUZZ_CHECK(job.id() == store::FormatJobId(store::DecodeBE64(key)));
      FUZZ_CHECK(!job.queue().empty());
      (void)util::FromProto(job.run_at());
      (void)util::FromProto(job.created_at());
      (void)util::FromProto(job.lease_deadline());
      (void)util::FromProto(job.finished_at());
      (void)util::DurationFromProto(job.lease_duration());
      (void)util::DurationFromProto(job.retention());
      (void)util::DurationFromProto(job.retry().initial_backoff());
      (void)util::DurationFromProto(job.retry().max_backoff());
      FUZZ_CHECK(store::DecodeJobRecord(key, rec->SerializeAsString()).ok());
      break;
    }
    case 1: {
      auto meta = store::DecodeMetaRecord(value);
      CheckRefusal(meta.status());
      if (meta.ok()) FUZZ_CHECK(store::DecodeMetaRecord(meta->SerializeAsString()).ok());
      break;
    }
    case 2: {
      auto rec = store::DecodeQueueRecord(key, value);
      CheckRefusal(rec.status());
      if (!rec.ok()) break;
      FUZZ_CHECK(store::QueueKey(rec->name()) == key);
      FUZZ_CHECK(store::DecodeQueueRecord(key, rec->SerializeAsString()).ok());
      break;
    }
    default: {
      auto ev = store::DecodeEvent(key, value);
      CheckRefusal(ev.status());
      if (!ev.ok()) break;
      FUZZ_CHECK(ev->seq() == store::DecodeBE64(key));
      (void)util::FromProto(ev->time());
      FUZZ_CHECK(store::DecodeEvent(key, ev->SerializeAsString()).ok());
      break;
    }
  }
  return 0;
}
