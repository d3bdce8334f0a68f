#include "service/auth_check.h"

namespace errand::service {

absl::StatusOr<auth::PrincipalRef> Authorize(const ServiceContext* ctx,
                                             grpc::CallbackServerContext* context,
                                             auth::Roles needed, std::string_view method) {
  if (ctx->auth == nullptr) return auth::PrincipalRef();
  const auto& md = context->client_metadata();
  auto it = md.find("authorization");
  std::string_view value;
  if (it != md.end()) value = std::string_view(it->second.data(), it->second.size());
  auto p = ctx->auth->Authenticate(value);
  if (!p.ok()) return p.status();
  if (auto s = auth::CheckRole(**p, needed, method); !s.ok()) return s;
  return p;
}

absl::Status Recheck(const ServiceContext* ctx, auth::PrincipalRef* who, uint64_t* generation,
                     auth::Roles needed, std::string_view method) {
  if (ctx->auth == nullptr || *who == nullptr) return absl::OkStatus();
  uint64_t now = ctx->auth->generation();
  if (now == *generation) return absl::OkStatus();
  auto fresh = ctx->auth->Refresh(**who);
  if (!fresh.ok()) return fresh.status();
  if (auto s = auth::CheckRole(**fresh, needed, method); !s.ok()) return s;
  *who = std::move(*fresh);
  *generation = now;
  return absl::OkStatus();
}

absl::Status AllowJob(const ServiceContext* ctx, const auth::PrincipalRef& p, uint64_t job_id) {
  if (p == nullptr || !p->restricted()) return absl::OkStatus();
  const std::string* queue = ctx->engine->JobQueue(job_id);
  if (queue == nullptr) return absl::OkStatus();
  return auth::CheckQueue(*p, *queue, "queue");
}

absl::Status AllowSubscribe(const auth::PrincipalRef& p, const v1::SubscribeRequest& r) {
  if (p == nullptr || !p->restricted()) return absl::OkStatus();
  for (const std::string& q : r.queues()) {
    if (auto s = auth::CheckQueue(*p, q, "queue"); !s.ok()) return s;
  }
  for (const std::string& t : r.topics()) {
    if (auto s = auth::CheckQueue(*p, t, "topic"); !s.ok()) return s;
  }
  bool job_events = r.queues_size() > 0 || r.job_ids_size() > 0 || r.topics_size() == 0;
  if (job_events && r.queues_size() == 0) {
    return absl::PermissionDeniedError("token \"" + p->name + "\" may only use queues matching " +
                                       p->PatternsString() +
                                       ": name them in queues (or subscribe to topics only)");
  }
  return absl::OkStatus();
}

}  // namespace errand::service
