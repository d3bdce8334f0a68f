#pragma once

#include <grpcpp/support/byte_buffer.h>

#include <cstdint>

namespace errand::service {

// Counts the top-level occurrences of the length-delimited field `field` in
// the serialized protobuf message in `buffer`, without parsing them (their
// bytes are skipped): what a refusal by count costs is one pass over the
// bytes and no allocation per entry. `buffer` is read, not consumed.
// Returns false when the bytes are not a well-formed message at the top
// level (the nested messages are not looked into).
bool CountLengthDelimited(const grpc::ByteBuffer& buffer, int field, uint64_t* count);

}  // namespace errand::service
