#pragma once

// Per-call authorization for the services: which role each RPC needs, and
// the checks of the caller's token, role and queues (auth/authenticator.h).
// README "Tokens and roles" has the same table.
//
// Thread: Authorize and AllowQueue run on gRPC threads or core; AllowJob
// runs on core only.

#include <absl/status/statusor.h>
#include <grpcpp/grpcpp.h>

#include <string_view>

#include "auth/authenticator.h"
#include "errand/v1/events.pb.h"
#include "service/context.h"

namespace errand::service {

// The roles each RPC needs; a token with any one of them (or admin) may call.
namespace need {
constexpr auth::Roles kProduce = auth::kProducer;  // Enqueue*, CancelJob, Publish
constexpr auth::Roles kObserve = auth::kProducer | auth::kSubscriber;  // GetJob, WaitJob,
                                                                       // ListJobs, Subscribe
constexpr auth::Roles kWork = auth::kWorker;    // every Workers RPC
constexpr auth::Roles kAdmin = auth::kAdmin;    // every Admin RPC
}  // namespace need

// Authenticates the caller of `context` and checks it holds a role of
// `needed`. With no token file: OK with a null principal. Otherwise
// UNAUTHENTICATED (no or unknown token) or PERMISSION_DENIED (wrong role,
// the message names `method` and the roles it needs).
absl::StatusOr<auth::PrincipalRef> Authorize(const ServiceContext* ctx,
                                             grpc::CallbackServerContext* context,
                                             auth::Roles needed, std::string_view method);

// OK when `p` is null, unrestricted, or may use queue (or topic) `name`.
inline absl::Status AllowQueue(const auth::PrincipalRef& p, std::string_view name,
                               std::string_view what = "queue") {
  if (p == nullptr || !p->restricted()) return absl::OkStatus();
  return auth::CheckQueue(*p, name, what);
}

// For long-lived streams, before acting on a message: when the token file
// was reloaded since `*who` was checked (`*generation`), looks the caller up
// again (updating both) and checks `needed` again. UNAUTHENTICATED when the
// token was removed. One atomic load when nothing was reloaded. Streams
// start with *generation = 0, so their first message looks the caller up
// once more (no reload can slip in between the call's check and the
// stream's first message).
absl::Status Recheck(const ServiceContext* ctx, auth::PrincipalRef* who, uint64_t* generation,
                     auth::Roles needed, std::string_view method);

// For RPCs that name a job by id: OK when `p` is null or unrestricted, when
// the job is unknown (the RPC then answers NOT_FOUND itself), or when the
// job's queue is allowed. Thread: core.
absl::Status AllowJob(const ServiceContext* ctx, const auth::PrincipalRef& p, uint64_t job_id);

// Subscribe's filter: a restricted token must name only allowed queues and
// topics, and must name its queues unless it subscribes to topics only
// (an empty queue list would mean the job events of every queue).
absl::Status AllowSubscribe(const auth::PrincipalRef& p, const v1::SubscribeRequest& r);

}  // namespace errand::service
