#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/impl/codegen/server_callback_handlers.h>

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

// The index of the bidi method `method` (e.g. "errand.v1.Jobs.EnqueueStream")
// in its generated service, and a raw handler for it that calls
// `make(context)`; `make` returns a ParsedBidiReactor (or a reactor of bytes
// that only refuses). For the service's constructor:
//   MarkMethodRawCallback(BidiMethodIndex("errand.v1.Jobs.EnqueueStream"),
//                         RawBidiHandler([this](auto* c) { return ...; }));
inline int BidiMethodIndex(const std::string& method) {
  const auto* d = google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(method);
  GPR_ASSERT(d != nullptr && d->client_streaming() && d->server_streaming());
  return d->index();
}

template <typename Make>
grpc::internal::MethodHandler* RawBidiHandler(Make make) {
  return new grpc::internal::CallbackBidiHandler<grpc::ByteBuffer, grpc::ByteBuffer>(
      std::move(make));
}

}  // namespace errand::service
