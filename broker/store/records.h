#pragma once

#include <absl/status/statusor.h>

#include <string_view>

#include "broker/store/records.pb.h"
#include "errand/v1/job.pb.h"

// Decoders of the store's records (records.proto, keys.h). Every record read
// back from RocksDB passes through one of these, and none trusts its bytes: a
// record that decodes is one the broker could have written, so the engine
// may index arrays by its state and convert its times without overflow. A
// record that does not decode is DATA_LOSS naming the key; the broker then
// refuses to start rather than guess.
//
// Pure functions; no state, no threads.
namespace errand::store {

// Longest queue name a stored job may carry (the API allows 128).
inline constexpr size_t kMaxStoredQueueName = 128;

// Column family "jobs": key be64(id), value JobRecord. The id must be the
// key's, the state a known one other than UNSPECIFIED, the queue a non-empty
// name, every timestamp between 1970 and 2255 and every duration under 285
// years (so that system_clock arithmetic cannot overflow).
absl::StatusOr<JobRecord> DecodeJobRecord(std::string_view key, std::string_view value);

// Column family "default", key "meta".
absl::StatusOr<MetaRecord> DecodeMetaRecord(std::string_view value);

// Column family "default", key "queue/<name>": the record must name the
// queue of its key.
absl::StatusOr<QueueRecord> DecodeQueueRecord(std::string_view key, std::string_view value);

// Column family "events": key be64(seq), value errand.v1.Event whose seq is
// the key's, whose type is known and whose time is in range. (A job snapshot
// in an event is only passed on to subscribers, never indexed.)
absl::StatusOr<v1::Event> DecodeEvent(std::string_view key, std::string_view value);

}  // namespace errand::store
