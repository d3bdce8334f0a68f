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
// job is answered with PERMISSION_DENIED in its error_code. The method is
// registered raw (see service/parsed_bidi.h): a message that does not parse
// as an EnqueueStreamRequest ends the reading, and once the jobs before it
// are answered the stream ends with INVALID_ARGUMENT naming it.
// Thread: reactions post to core; only core writes and finishes.
// Counts against --max-streams(-per-connection) while open.
grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* NewEnqueueStream(
    const ServiceContext* ctx, grpc::CallbackServerContext* context, auth::PrincipalRef who);

}  // namespace errand::service
