#pragma once

#include <grpcpp/grpcpp.h>

#include "errand/v1/jobs.pb.h"
#include "auth/authenticator.h"
#include "service/context.h"

namespace errand::service {

// Jobs.EnqueueStream: the producer fast path. Reads requests continuously
// (up to a bound of unanswered ones), enqueues each through the Engine (the
// commit pipeline groups them), and writes answers packed: everything that
// became ready while the previous write was in flight goes in the next one.
// Each job's queue is checked against `who` (null: no tokens); a refused
// job is answered with PERMISSION_DENIED in its error_code.
// Thread: reactions post to core; only core writes and finishes.
grpc::ServerBidiReactor<v1::EnqueueStreamRequest, v1::EnqueueStreamResponse>* NewEnqueueStream(
    const ServiceContext* ctx, auth::PrincipalRef who);

}  // namespace errand::service
