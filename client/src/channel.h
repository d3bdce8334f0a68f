#pragma once

// How the client library builds its channel: plaintext or TLS credentials
// and the bearer token. Not part of the API.

#include <absl/status/statusor.h>
#include <grpcpp/grpcpp.h>

#include <memory>

#include "errand/options.h"

namespace errand::internal {

// A channel to options.address with the credentials the options ask for,
// and an interceptor adding "authorization: Bearer <token>" to every call
// when options.token is set. INVALID_ARGUMENT names an unreadable file or an
// incomplete certificate/key pair.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientOptions& options,
                                                           grpc::ChannelArguments args);

}  // namespace errand::internal
