#include "dispatch/packed_job.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#include "util/time.h"

namespace errand::dispatch {

const std::string& PackedJob::concurrency_key() const {
  static const std::string* const kNone = new std::string();
  return concurrency_key_ ? *concurrency_key_ : *kNone;
}

void PackedJob::Note(const v1::Job& job) {
  if (job.concurrency_key().empty()) {
    concurrency_key_.reset();
  } else if (concurrency_key_) {
    *concurrency_key_ = job.concurrency_key();
  } else {
    concurrency_key_ = std::make_unique<std::string>(job.concurrency_key());
  }
  updated_at_ = util::FromProto(job.updated_at());
  priority_ = job.priority();
  attempts_ = job.attempts();
  state_ = static_cast<uint8_t>(job.state());
  cancel_requested_ = job.cancel_requested();
  has_idempotency_key_ = !job.idempotency_key().empty();
}

void PackedJob::Hold(std::string_view wire) {
  wire_size_ = static_cast<uint32_t>(wire.size());
  // A zero-length array still allocates: an empty job (no field set) is
  // held like any other.
  wire_.reset(new char[wire.size()]);
  std::memcpy(wire_.get(), wire.data(), wire.size());
}

void PackedJob::Drop() {
  wire_.reset();
  wire_size_ = 0;
}

void PackedJob::Pack(const v1::Job& job) {
  Note(job);
  const size_t n = job.ByteSizeLong();
  wire_size_ = static_cast<uint32_t>(n);
  wire_.reset(new char[n]);
  auto* begin = reinterpret_cast<uint8_t*>(wire_.get());
  if (job.SerializeWithCachedSizesToArray(begin) != begin + n) std::abort();
}

void PackedJob::Track(const v1::Job& job) {
  Note(job);
  Drop();
}

v1::Job PackedJob::Unpack() const {
  if (!held()) std::abort();
  v1::Job job;
  // Our own bytes: failing to parse them is a broken invariant.
  if (!job.ParseFromArray(wire_.get(), static_cast<int>(wire_size_))) std::abort();
  job.set_state(state());
  return job;
}

bool JobBytesOfRecord(std::string_view record, std::string* job_bytes) {
  using google::protobuf::internal::WireFormatLite;
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(record.data()),
                                            static_cast<int>(record.size()));
  job_bytes->clear();
  while (true) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) return in.ConsumedEntireMessage();
    if (WireFormatLite::GetTagFieldNumber(tag) == 1 &&
        WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      uint32_t len = 0;
      if (!in.ReadVarint32(&len) || !in.ReadString(job_bytes, static_cast<int>(len))) {
        return false;
      }
      continue;  // the last occurrence wins, as in a parse (a repeated
                 // submessage would merge; we never write one twice)
    }
    if (!WireFormatLite::SkipField(&in, tag)) return false;
  }
}

namespace {

void AppendVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

}  // namespace

std::string JobRecordBytes(std::string_view job_bytes, uint64_t lease_token) {
  // Fields in number order, as a serializer writes them; a zero lease_token
  // is left out (proto3 default).
  std::string out;
  out.reserve(job_bytes.size() + 16);
  out.push_back(static_cast<char>((1 << 3) | 2));  // field 1, length-delimited
  AppendVarint(&out, job_bytes.size());
  out.append(job_bytes.data(), job_bytes.size());
  if (lease_token != 0) {
    out.push_back(static_cast<char>(2 << 3));  // field 2, varint
    AppendVarint(&out, lease_token);
  }
  return out;
}

}  // namespace errand::dispatch
