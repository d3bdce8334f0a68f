#pragma once

#include <grpcpp/grpcpp.h>

#include <string>

namespace errand::service {

// Answers for RPCs that are part of the v1 contract but not available in this
// release: UNIMPLEMENTED with a message naming the method.
inline std::string NotYet(const std::string& method) {
  return method + " is not yet available in this errand release";
}

inline grpc::ServerUnaryReactor* UnimplementedUnary(grpc::CallbackServerContext* context,
                                                    const std::string& method) {
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, NotYet(method)));
  return reactor;
}

template <typename Resp>
class UnimplementedWriter final : public grpc::ServerWriteReactor<Resp> {
 public:
  explicit UnimplementedWriter(const std::string& method) {
    this->Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, NotYet(method)));
  }
  void OnDone() override { delete this; }
};

template <typename Req, typename Resp>
class UnimplementedBidi final : public grpc::ServerBidiReactor<Req, Resp> {
 public:
  explicit UnimplementedBidi(const std::string& method) {
    this->Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, NotYet(method)));
  }
  void OnDone() override { delete this; }
};

}  // namespace errand::service
