#include "store/records.h"

#include <absl/status/status.h>

#include <string>

#include "store/keys.h"

namespace errand::store {
namespace {

// The engine turns stored times into std::chrono::system_clock time points,
// which count nanoseconds in an int64: +-292 years around 1970. Stored times
// and durations must stay well inside that (the API itself accepts times at
// most a year ahead and durations of at most ten years), narrower than the
// proto types' own ranges (years 1..9999, +-10,000 years): the records fuzz
// target found a year-2384 event time that overflowed the conversion.
constexpr int64_t kMaxTimestampSeconds = 9'000'000'000LL;  // 2255-03-14
constexpr int64_t kMinTimestampSeconds = 0;                // nothing before 1970
constexpr int64_t kMaxDurationSeconds = 9'000'000'000LL;   // ~285 years

bool ValidTimestamp(const google::protobuf::Timestamp& ts) {
  return ts.seconds() >= kMinTimestampSeconds && ts.seconds() <= kMaxTimestampSeconds &&
         ts.nanos() >= 0 && ts.nanos() <= 999999999;
}

bool ValidDuration(const google::protobuf::Duration& d) {
  if (d.seconds() > kMaxDurationSeconds || d.seconds() < -kMaxDurationSeconds) return false;
  if (d.nanos() <= -1000000000 || d.nanos() >= 1000000000) return false;
  return !((d.seconds() > 0 && d.nanos() < 0) || (d.seconds() < 0 && d.nanos() > 0));
}

std::string Shown(std::string_view key) {
  std::string out;
  for (unsigned char c : key.substr(0, 64)) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  return out;
}

absl::Status Corrupt(const std::string& what) { return absl::DataLossError(what); }

absl::Status CheckJob(const std::string& where, const v1::Job& job) {
  if (!v1::JobState_IsValid(job.state()) || job.state() == v1::JOB_STATE_UNSPECIFIED) {
    return Corrupt(where + " has unknown state " + std::to_string(job.state()));
  }
  if (job.queue().empty() || job.queue().size() > kMaxStoredQueueName) {
    return Corrupt(where + " has no valid queue name");
  }
  for (const auto* ts : {&job.run_at(), &job.created_at(), &job.updated_at(),
                         &job.lease_deadline(), &job.finished_at(), &job.progress().updated_at()}) {
    if (!ValidTimestamp(*ts)) return Corrupt(where + " has a timestamp out of range");
  }
  for (const auto& a : job.history()) {
    if (!ValidTimestamp(a.started_at()) || !ValidTimestamp(a.ended_at())) {
      return Corrupt(where + " has an attempt with a timestamp out of range");
    }
  }
  for (const auto* d : {&job.lease_duration(), &job.retention(), &job.retry().initial_backoff(),
                        &job.retry().max_backoff()}) {
    if (!ValidDuration(*d)) return Corrupt(where + " has a duration out of range");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<JobRecord> DecodeJobRecord(std::string_view key, std::string_view value) {
  if (key.size() != 8) return Corrupt("malformed job key \"" + Shown(key) + "\" in store");
  const uint64_t id = DecodeBE64(key);
  const std::string where = "job record " + FormatJobId(id);
  if (id == 0) return Corrupt("job record with id 0 in store");
  JobRecord rec;
  if (!rec.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
    return Corrupt(where + " is corrupt");
  }
  if (rec.job().id() != FormatJobId(id)) {
    return Corrupt(where + " names id \"" + Shown(rec.job().id()) + "\"");
  }
  if (auto s = CheckJob(where, rec.job()); !s.ok()) return s;
  return rec;
}

absl::StatusOr<MetaRecord> DecodeMetaRecord(std::string_view value) {
  MetaRecord meta;
  if (!meta.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
    return Corrupt("store meta record is corrupt");
  }
  return meta;
}

absl::StatusOr<QueueRecord> DecodeQueueRecord(std::string_view key, std::string_view value) {
  const std::string_view prefix = kQueueKeyPrefix;
  if (key.substr(0, prefix.size()) != prefix) {
    return Corrupt("\"" + Shown(key) + "\" is not a queue key");
  }
  QueueRecord rec;
  if (!rec.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
    return Corrupt("corrupt queue record " + Shown(key));
  }
  if (rec.name() != key.substr(prefix.size()) || rec.name().empty() ||
      rec.name().size() > kMaxStoredQueueName) {
    return Corrupt("queue record " + Shown(key) + " names queue \"" + Shown(rec.name()) + "\"");
  }
  return rec;
}

absl::StatusOr<v1::Event> DecodeEvent(std::string_view key, std::string_view value) {
  if (key.size() != 8) return Corrupt("malformed event key \"" + Shown(key) + "\" in store");
  const uint64_t seq = DecodeBE64(key);
  v1::Event ev;
  if (!ev.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
    return Corrupt("corrupt event " + std::to_string(seq));
  }
  if (ev.seq() != seq) {
    return Corrupt("event " + std::to_string(seq) + " names seq " + std::to_string(ev.seq()));
  }
  if (!v1::EventType_IsValid(ev.type()) || ev.type() == v1::EVENT_TYPE_UNSPECIFIED) {
    return Corrupt("event " + std::to_string(seq) + " has unknown type " +
                   std::to_string(ev.type()));
  }
  if (!ValidTimestamp(ev.time())) {
    return Corrupt("event " + std::to_string(seq) + " has a timestamp out of range");
  }
  return ev;
}

}  // namespace errand::store
