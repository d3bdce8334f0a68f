#pragma once

#include <grpcpp/support/server_interceptor.h>

#include <memory>
#include <string>
#include <vector>

// gRPC answers a request that fails to parse as its protobuf message
// (malformed bytes, invalid UTF-8 in a string field, nesting deeper than
// protobuf's limit of 100) with UNIMPLEMENTED or INTERNAL and an empty
// message, before any service code runs. This interceptor turns that answer into
// INVALID_ARGUMENT naming the message type, e.g. "request is not a valid
// errand.v1.EnqueueRequest: ...".
//
// It is installed for unary and server-streaming methods only: bidi streams
// (the fast paths) carry no interceptor at all; they are registered raw and
// parse each message themselves (service/parsed_bidi.h), ending the stream
// with the same INVALID_ARGUMENT when one fails to parse. Nor does
// Events.Subscribe, which is registered raw and parses its request itself
// (an interceptor would run on each of its writes).
//
// Thread: any (gRPC calls it; per-call state only).
namespace errand::service {

std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
MalformedRequestInterceptors();

// "is not a valid <type>: malformed protobuf, ..." for a message of protobuf
// type `type` (full name) that failed to parse.
std::string MalformedMessage(const std::string& type);

}  // namespace errand::service
