#include "service/malformed_request.h"

#include <google/protobuf/descriptor.h>

#include <string>
#include <string_view>

namespace errand::service {
namespace {

// "/errand.v1.Jobs/Enqueue" -> "errand.v1.EnqueueRequest" (from the
// generated descriptors); "" for a method the broker does not know.
std::string RequestType(const char* method) {
  std::string m = method == nullptr ? "" : method;
  if (!m.empty() && m[0] == '/') m.erase(0, 1);
  auto slash = m.find('/');
  if (slash != std::string::npos) m[slash] = '.';
  const auto* d = google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(m);
  return d == nullptr ? "" : d->input_type()->full_name();
}

class MalformedRequestInterceptor final : public grpc::experimental::Interceptor {
 public:
  MalformedRequestInterceptor(std::string request_type) : request_type_(std::move(request_type)) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      grpc::Status s = methods->GetSendStatus();
      // Service code never answers without a message, and every method of
      // the broker is implemented; gRPC 1.51 answers a request that fails to
      // parse with UNIMPLEMENTED (callback API) or INTERNAL (proto3 messages
      // have no InitializationErrorString), and no message.
      if ((s.error_code() == grpc::StatusCode::INTERNAL ||
           s.error_code() == grpc::StatusCode::UNIMPLEMENTED) &&
          s.error_message().empty()) {
        methods->ModifySendStatus(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                               "request " + MalformedMessage(request_type_)));
      }
    }
    methods->Proceed();
  }

 private:
  const std::string request_type_;
};

class Factory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    using Type = grpc::experimental::ServerRpcInfo::Type;
    if (info->type() != Type::UNARY && info->type() != Type::SERVER_STREAMING) return nullptr;
    // Subscribe is registered raw and parses its request itself; an
    // interceptor there would also run on every event written.
    if (info->method() != nullptr &&
        std::string_view(info->method()) == "/errand.v1.Events/Subscribe") {
      return nullptr;
    }
    std::string type = RequestType(info->method());
    if (type.empty()) return nullptr;  // unknown methods stay UNIMPLEMENTED
    return new MalformedRequestInterceptor(std::move(type));
  }
};

}  // namespace

std::string MalformedMessage(const std::string& type) {
  return "is not a valid " + type +
         ": malformed protobuf, invalid UTF-8 in a string field, or nesting deeper than 100 "
         "levels";
}

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
MalformedRequestInterceptors() {
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> v;
  v.push_back(std::make_unique<Factory>());
  return v;
}

}  // namespace errand::service
