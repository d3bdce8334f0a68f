#pragma once

#include <grpcpp/grpcpp.h>

#include <asio/steady_timer.hpp>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <unordered_map>
#include <vector>

#include "errand/v1/workers.pb.h"
#include "auth/authenticator.h"
#include "service/connect_acks.h"
#include "service/context.h"

namespace errand::service {

// Workers.Connect sessions by the jobs they hold, so that a cancel request
// for a job is pushed to the worker that has it.
// Thread: core.
class WorkerRegistry {
 public:
  struct Session;
  // Routes committed events to sessions (CANCEL_REQUESTED -> push).
  void OnEvents(const std::vector<v1::Event>& events);
  void Hold(uint64_t job_id, std::shared_ptr<Session> s) { holders_[job_id] = std::move(s); }
  void Drop(uint64_t job_id, const Session* s) {
    auto it = holders_.find(job_id);
    if (it != holders_.end() && it->second.get() == s) holders_.erase(it);
  }
  bool IsHeld(uint64_t job_id) const { return holders_.count(job_id) > 0; }
  // Grace timers of dropped streams. On shutdown they are cancelled: the
  // leases they would release become READY again at the next start anyway.
  void AddGraceTimer(const std::shared_ptr<asio::steady_timer>& t) {
    timers_.erase(std::remove_if(timers_.begin(), timers_.end(),
                                 [](const auto& w) { return w.expired(); }),
                  timers_.end());
    timers_.push_back(t);
  }
  void Shutdown();
  size_t held() const { return holders_.size(); }

 private:
  std::unordered_map<uint64_t, std::shared_ptr<Session>> holders_;
  std::vector<std::weak_ptr<asio::steady_timer>> timers_;
  bool stopping_ = false;
};

// Workers.Connect: credits in, deliveries out, completions, failures and
// extensions answered on the same stream; cancel requests pushed. When the
// stream drops, the worker's leases are released after the grace period.
// hello's queues and the jobs of completions, failures and extensions are
// checked against `who` (null: no tokens). The method is registered raw (see
// service/parsed_bidi.h): a message that does not parse as a ConnectRequest
// ends the stream with INVALID_ARGUMENT naming it.
grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* NewWorkerStream(
    const ServiceContext* ctx, grpc::CallbackServerContext* context, auth::PrincipalRef who);

}  // namespace errand::service
