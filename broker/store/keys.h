#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

// Key encoding of the RocksDB store.
//
// Column families:
//   default  "meta" -> MetaRecord (format version, boot epoch)
//            "queue/<name>" -> QueueRecord (pause state, fairness limit)
//   jobs     be64(job id) -> JobRecord
//   events   be64(seq) -> errand.v1.Event
// Big-endian integers make RocksDB's bytewise order the numeric order, so
// iterating "jobs" visits jobs in creation order.
//
// Changing any encoding bumps kStoreFormatVersion; the broker refuses to open
// a store with a newer version than it knows and keeps readers for older ones.
namespace errand::store {

inline constexpr uint32_t kStoreFormatVersion = 1;
inline constexpr char kMetaKey[] = "meta";
inline constexpr char kQueueKeyPrefix[] = "queue/";

// "queue/<name>" in the default column family.
std::string QueueKey(std::string_view queue);

// 8 bytes, most significant first.
std::string EncodeBE64(uint64_t v);
// REQUIRES: s.size() == 8.
uint64_t DecodeBE64(std::string_view s);

// Job ids are 64-bit integers shown as 16 lowercase hex digits, so that the
// text form sorts like the number (by creation).
std::string FormatJobId(uint64_t id);
// nullopt unless `s` is exactly 16 hex digits (either case) and not zero.
std::optional<uint64_t> ParseJobId(std::string_view s);

}  // namespace errand::store
