#pragma once

#include <grpcpp/support/server_interceptor.h>

#include <memory>
#include <vector>

// gRPC answers a request that fails to parse as its protobuf message
// (malformed bytes, invalid UTF-8 in a string field, nesting deeper than
// protobuf's limit of 100) with UNIMPLEMENTED or INTERNAL and an empty
// message, before any service code runs. This interceptor turns that answer into
// INVALID_ARGUMENT naming the message type, e.g. "request is not a valid
// errand.v1.EnqueueRequest: ...".
//
// It is installed for unary and server-streaming methods only: bidi streams
// (the fast paths) carry no interceptor at all, and their reactors treat a
// message that fails to parse as the end of the stream.
//
// Thread: any (gRPC calls it; per-call state only).
namespace errand::service {

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
MalformedRequestInterceptors();

}  // namespace errand::service
