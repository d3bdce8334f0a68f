#pragma once

#include <absl/status/status.h>
#include <rocksdb/status.h>

#include <string>

namespace errand::store {

// The one place where RocksDB statuses become absl::Status. A full disk is
// RESOURCE_EXHAUSTED (the caller may retry once space is freed); corruption
// is DATA_LOSS; other I/O errors are INTERNAL.
inline absl::Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = std::string(what) + ": " + s.ToString();
  if (s.IsNoSpace() || s.subcode() == rocksdb::Status::kNoSpace) {
    return absl::ResourceExhaustedError("disk full: " + msg);
  }
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  if (s.IsBusy() || s.IsTryAgain() || s.IsTimedOut()) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

}  // namespace errand::store
