#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "errand/v1/job.pb.h"
#include "util/clock.h"

namespace errand::dispatch {

// A committed job as the engine keeps it in memory: the few fields that
// dispatch decisions read without parsing (state, priority, attempts,
// concurrency key...), and, while the job is "held", its wire bytes too.
//
// The store has every committed job's record; memory need not. A parsed
// v1::Job costs ~950 bytes and a dozen allocations, its wire form its size
// (~340 bytes for a 256-byte payload), the fields here 40 bytes. A broker
// holding millions of READY jobs pays this per job, so the engine holds
// bytes only for jobs it is working on (leased, or with a write in flight)
// and reads the others' records from the store when it needs the whole job.
//
// The engine's in-memory state wins over the bytes where the two may
// differ (a SCHEDULED job promoted to READY is not rewritten): Unpack() sets
// state() on the parsed job.
//
// Thread: core, like the Engine that owns it. Not synchronised.
class PackedJob {
 public:
  PackedJob() = default;

  // Tracks `job`'s hot fields and holds its bytes (serialized here).
  void Pack(const v1::Job& job);
  // Tracks `job`'s hot fields only; holds no bytes (drops any held).
  void Track(const v1::Job& job);
  // Holds `wire` (a copy), leaving the tracked fields as they are: REQUIRES
  // it to be the serialized form of the job last tracked (e.g. its stored
  // bytes).
  void Hold(std::string_view wire);
  // Drops the bytes; the tracked fields stay.
  void Drop();
  bool held() const { return wire_ != nullptr; }

  // The job as held, with state() as its state. REQUIRES held(). Aborts on
  // bytes that do not parse (they were serialized here, or parsed once
  // already).
  v1::Job Unpack() const;

  v1::JobState state() const { return static_cast<v1::JobState>(state_); }
  // In-memory only: the bytes keep the committed state.
  void set_state(v1::JobState state) { state_ = static_cast<uint8_t>(state); }
  int32_t priority() const { return priority_; }
  uint32_t attempts() const { return attempts_; }
  bool cancel_requested() const { return cancel_requested_; }
  bool has_idempotency_key() const { return has_idempotency_key_; }
  const std::string& concurrency_key() const;
  util::Clock::TimePoint updated_at() const { return updated_at_; }
  // Bytes held (0 when none), for tests and accounting.
  size_t wire_size() const { return wire_size_; }

 private:
  void Note(const v1::Job& job);

  // A bare array, not a std::string: 12 bytes with its size, not 32.
  std::unique_ptr<char[]> wire_;
  // Null when empty (most jobs have none): 8 bytes, not a 32-byte string.
  std::unique_ptr<std::string> concurrency_key_;
  util::Clock::TimePoint updated_at_{};
  int32_t priority_ = 0;
  uint32_t attempts_ = 0;
  uint32_t wire_size_ = 0;
  uint8_t state_ = 0;
  bool cancel_requested_ = false;
  bool has_idempotency_key_ = false;
};

// The bytes of field 1 (`job`) of a serialized store::JobRecord, without
// parsing the job; false when `record` is malformed.
bool JobBytesOfRecord(std::string_view record, std::string* job_bytes);

// The serialized store::JobRecord of the serialized job `job_bytes` and
// `lease_token`: the bytes JobRecord::SerializeAsString gives, without
// copying the job into a JobRecord first.
std::string JobRecordBytes(std::string_view job_bytes, uint64_t lease_token);

}  // namespace errand::dispatch
