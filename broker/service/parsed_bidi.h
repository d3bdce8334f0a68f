#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/impl/codegen/server_callback_handlers.h>

#include <absl/status/status.h>

#include <cstdint>
#include <string>
#include <utility>

#include "service/malformed_request.h"

namespace errand::service {

// A bidi reactor for a method registered raw (bytes in, bytes out) that
// parses each message itself, so that a message that is not a valid `Req`
// can be told apart from the client's half-close. (With a typed method gRPC
// reports both as OnReadDone(false), and the stream would end with OK.)
//
// The deriving reactor uses StartRead(Req*) and StartWrite(const Resp*) as
// with a typed reactor, and overrides OnMessageRead instead of OnReadDone:
//   OnMessageRead(true)   the next message was parsed into the Req*;
//   OnMessageRead(false)  the client half-closed or the stream broke;
//   OnMalformedRead(s)    the next message did not parse; `s` is
//                         INVALID_ARGUMENT naming the message, its position on
//                         the stream and the type. No read is outstanding.
// StartWrite serializes the message at once: the caller may reuse it as soon
// as StartWrite returns (the bytes stay untouched until OnWriteDone).
//
// The method must be registered raw: see RawBidiHandler.
// Thread: as grpc::ServerBidiReactor (reads and writes are each serialized).
template <typename Req, typename Resp>
class ParsedBidiReactor : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  using Base = grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>;

  // REQUIRES: `req` outlives the read (until OnMessageRead/OnMalformedRead).
  void StartRead(Req* req) {
    target_ = req;
    Base::StartRead(&in_);
  }
  void StartWrite(const Resp* resp) {
    out_.Clear();
    bool own = false;
    grpc::Status s = grpc::SerializationTraits<Resp>::Serialize(*resp, &out_, &own);
    GPR_ASSERT(s.ok());  // a message built by the broker always serializes
    Base::StartWrite(&out_);
  }

  virtual void OnMessageRead(bool ok) = 0;
  virtual void OnMalformedRead(const grpc::Status& status) = 0;

  void OnReadDone(bool ok) final {
    if (!ok) {
      OnMessageRead(false);
      return;
    }
    ++read_count_;
    target_->Clear();
    grpc::Status s = grpc::SerializationTraits<Req>::Deserialize(&in_, target_);
    in_.Clear();
    if (!s.ok()) {
      OnMalformedRead(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                   "message " + std::to_string(read_count_) +
                                       " on the stream " +
                                       MalformedMessage(Req::descriptor()->full_name())));
      return;
    }
    OnMessageRead(true);
  }

 private:
  Req* target_ = nullptr;
  grpc::ByteBuffer in_;
  grpc::ByteBuffer out_;
  uint64_t read_count_ = 0;  // messages received so far, malformed included
};

// How a method streams, as its proto declares it.
enum class Streaming { kNone, kServer, kBidi };

// The index of `method` (e.g. "errand.v1.Jobs.EnqueueStream") in its
// generated service, for MarkMethodRawCallback; asserts that the method
// streams as `shape` says. With RawBidiHandler, for the service's
// constructor:
//   MarkMethodRawCallback(MethodIndex("errand.v1.Jobs.EnqueueStream", Streaming::kBidi),
//                         RawBidiHandler([this](auto* c) { return ...; }));
inline int MethodIndex(const std::string& method, Streaming shape) {
  const auto* d = google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(method);
  GPR_ASSERT(d != nullptr && d->server_streaming() == (shape != Streaming::kNone) &&
             d->client_streaming() == (shape == Streaming::kBidi));
  return d->index();
}

// A request of a method registered raw, parsed from its bytes; an
// INVALID_ARGUMENT naming the message type when they are not a valid `Req`.
template <typename Req>
absl::Status ParseRequest(const grpc::ByteBuffer& raw, Req* out) {
  grpc::ByteBuffer copy(raw);  // shares the slices
  if (!grpc::SerializationTraits<Req>::Deserialize(&copy, out).ok()) {
    return absl::InvalidArgumentError("request " +
                                      MalformedMessage(Req::descriptor()->full_name()));
  }
  return absl::OkStatus();
}

template <typename Make>
grpc::internal::MethodHandler* RawBidiHandler(Make make) {
  return new grpc::internal::CallbackBidiHandler<grpc::ByteBuffer, grpc::ByteBuffer>(
      std::move(make));
}

}  // namespace errand::service
