#include "service/worker_stream.h"

#include <asio/steady_timer.hpp>
#include <atomic>
#include <deque>
#include <string>

#include "service/auth_check.h"
#include "service/grpc_status.h"
#include "service/parsed_bidi.h"
#include "service/stream_writer.h"
#include "service/validate.h"
#include "store/keys.h"
#include "util/core_executor.h"
#include "util/time.h"

namespace errand::service {

namespace {
constexpr uint32_t kMaxCredits = 10000;
class WorkerStreamReactor;
using ConnectWriter =
    StreamWriter<ParsedBidiReactor<v1::ConnectRequest, v1::ConnectResponse>, v1::ConnectResponse>;
}  // namespace

// Core-side state of one Connect stream. The reactor is touched only while
// !finished; gRPC deletes it after Finish.
struct WorkerRegistry::Session {
  WorkerStreamReactor* reactor = nullptr;
  bool finished = false;
  bool hello = false;
  bool reading = false;
  bool closed = false;  // the stream ended (read side or cancel)
  bool leasing = false;
  uint64_t waiter_id = 0;
  uint32_t credits = 0;
  dispatch::LeaseSpec spec;
  std::unordered_map<uint64_t, uint64_t> held;  // job id -> lease token
  // Deliveries and acks go out from any thread. What one core closure
  // sends is written in one go at its end (flush_pending), so that with
  // hello.packed_acks a complete's ack and the delivery its more_credits
  // brought share one message.
  std::unique_ptr<ConnectWriter> writer;
  bool flush_pending = false;
  std::atomic<bool> packed_acks{false};  // read by the writer's Pack on any thread
  auth::PrincipalRef who;  // the caller; null without tokens
  uint64_t auth_generation = 0;  // the token-file generation `who` was checked at
};

namespace {

using Session = WorkerRegistry::Session;

class WorkerStreamReactor final
    : public ParsedBidiReactor<v1::ConnectRequest, v1::ConnectResponse> {
 public:
  WorkerStreamReactor(const ServiceContext* ctx, std::string peer, auth::PrincipalRef who,
                      CallLimiter::Slot slot)
      : ctx_(ctx), slot_(std::move(slot)), st_(std::make_shared<Session>()) {
    st_->reactor = this;
    st_->writer = std::make_unique<ConnectWriter>(
        this,
        [st = st_.get()](std::deque<v1::ConnectResponse>& queued, v1::ConnectResponse* out) {
          // The session owns the writer, so it outlives every Pack.
          if (st->packed_acks.load(std::memory_order_relaxed)) {
            PackConnectAcks(queued, out);
          } else {
            ConnectWriter::PackOne(queued, out);
          }
        },
        [ctx, weak = std::weak_ptr<Session>(st_)] {
          // A write failed: the worker is gone.
          ctx->OnCore([ctx, st = weak.lock()] {
            if (st) Close(ctx, st, grpc::Status(grpc::StatusCode::CANCELLED, "stream closed"));
          });
        });
    st_->who = std::move(who);
    st_->spec.worker_id = std::move(peer);
    st_->reading = true;
    StartRead(&request_);
  }

  // A message that does not parse ends the stream with `status`
  // (INVALID_ARGUMENT); what the messages before it did stands, and the
  // worker's leases are released as when a stream drops.
  void OnMalformedRead(const grpc::Status& status) override {
    ctx_->OnCore([ctx = ctx_, st = st_, status] {
      st->reading = false;
      Close(ctx, st, status);
    });
  }

  void OnMessageRead(bool ok) override {
    if (!ok) {
      ctx_->OnCore([ctx = ctx_, st = st_] {
        st->reading = false;
        Close(ctx, st, grpc::Status::OK);
      });
      return;
    }
    v1::ConnectRequest req = std::move(request_);
    request_.Clear();
    ctx_->OnCore([ctx = ctx_, st = st_, req = std::move(req)]() mutable {
      st->reading = false;
      if (st->finished) return;
      const uint32_t more_credits = req.more_credits();
      Handle(ctx, st, std::move(req));
      if (more_credits > 0 && !st->finished && !st->closed && st->hello) {
        // After the message's own work: a complete's write goes first, and
        // the lease this credit starts joins the same commit group.
        st->credits = std::min<uint64_t>(kMaxCredits, uint64_t{st->credits} + more_credits);
        MaybeLease(ctx, st);
      }
      if (!st->finished && !st->reading) {
        st->reading = true;
        st->reactor->StartRead(&st->reactor->request_);
      }
    });
  }

  void OnWriteDone(bool ok) override { st_->writer->OnWriteDone(ok); }

  void OnCancel() override {
    ctx_->OnCore([ctx = ctx_, st = st_] {
      Close(ctx, st, grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled"));
    });
  }

  void OnDone() override { delete this; }

 private:
  // Queues `msg`; the write starts when the closure running now is done.
  static void Send(const std::shared_ptr<Session>& st, v1::ConnectResponse msg) {
    if (st->finished) return;
    st->writer->Hold(std::move(msg));
    if (st->flush_pending) return;
    st->flush_pending = true;
    util::CoreExecutor::AfterThisClosure([st] {
      st->flush_pending = false;
      st->writer->Flush();
    });
  }

  static void Ack(const std::shared_ptr<Session>& st, uint64_t request_id,
                  const absl::Status& s) {
    v1::ConnectResponse msg;
    auto* ack = msg.mutable_ack();
    ack->set_request_id(request_id);
    ack->set_error_code(static_cast<int>(s.code()));
    ack->set_error_message(std::string(s.message()));
    Send(st, std::move(msg));
  }

  // Ends the stream: no more deliveries; held leases are released after the
  // grace period unless the worker reconnects... it cannot take them over,
  // so they go back to the queue then (or expire earlier by their deadline).
  static void Close(const ServiceContext* ctx, const std::shared_ptr<Session>& st,
                    const grpc::Status& status) {
    if (st->closed) return;
    st->closed = true;
    if (st->waiter_id != 0) {
      ctx->engine->CancelLeaseWait(st->waiter_id);
      st->waiter_id = 0;
      st->leasing = false;
    }
    ReleaseHeld(ctx, st);
    if (!st->finished) {
      st->finished = true;
      st->writer->Finish(status);
    }
  }

  static void ReleaseHeld(const ServiceContext* ctx, const std::shared_ptr<Session>& st) {
    if (st->held.empty()) return;
    auto held = std::make_shared<std::unordered_map<uint64_t, uint64_t>>(std::move(st->held));
    st->held.clear();
    for (auto& [id, token] : *held) ctx->workers->Drop(id, st.get());
    if (ctx->stopping) return;  // the next start makes them READY again
    auto timer = std::make_shared<asio::steady_timer>(*ctx->core, ctx->worker_grace);
    ctx->workers->AddGraceTimer(timer);
    timer->async_wait([ctx, timer, held](const std::error_code& ec) {
      if (ec) return;  // cancelled at shutdown
      ctx->OnCore([ctx, held] {
        for (auto& [id, token] : *held) {
          // A reconnected worker that extended the lease on its new stream
          // holds it again: keep it.
          if (ctx->workers->IsHeld(id)) continue;
          ctx->engine->ReleaseLease(id, token, v1::ATTEMPT_OUTCOME_WORKER_LOST);
        }
      });
    });
  }

  // The answer to a Complete or Fail on the stream: once it committed, the
  // stream no longer holds the job.
  static dispatch::Engine::JobDone LeaseEnded(const ServiceContext* ctx,
                                              const std::shared_ptr<Session>& st, uint64_t rid,
                                              uint64_t id) {
    return [ctx, st, rid, id](absl::StatusOr<v1::Job> r) {
      if (r.ok()) {
        st->held.erase(id);
        ctx->workers->Drop(id, st.get());
      }
      Ack(st, rid, r.status());
    };
  }

  static void MaybeLease(const ServiceContext* ctx, const std::shared_ptr<Session>& st) {
    if (st->finished || st->closed || !st->hello || st->leasing || st->credits == 0 ||
        ctx->stopping) {
      return;
    }
    st->leasing = true;
    dispatch::LeaseSpec spec = st->spec;
    spec.max_jobs = st->credits;
    spec.wait = std::chrono::seconds(60);
    uint64_t wid = ctx->engine->Lease(
        std::move(spec), [ctx, st](absl::StatusOr<std::vector<v1::Lease>> r) {
          st->leasing = false;
          st->waiter_id = 0;
          if (!r.ok()) {
            Close(ctx, st, ToGrpc(r.status()));
            return;
          }
          for (v1::Lease& lease : *r) {
            uint64_t id = store::ParseJobId(lease.job().id()).value_or(0);
            if (st->closed) {
              // The worker left while the lease was being written.
              ctx->engine->ReleaseLease(id, lease.lease_token(), v1::ATTEMPT_OUTCOME_WORKER_LOST);
              continue;
            }
            st->held[id] = lease.lease_token();
            ctx->workers->Hold(id, st);
            if (st->credits > 0) st->credits--;
            v1::ConnectResponse msg;
            *msg.mutable_delivery() = std::move(lease);
            Send(st, std::move(msg));
          }
          MaybeLease(ctx, st);
        });
    if (st->leasing) st->waiter_id = wid;
  }

  static void Handle(const ServiceContext* ctx, const std::shared_ptr<Session>& st,
                     v1::ConnectRequest req) {
    const uint64_t rid = req.request_id();
    // A reload may have removed or changed the caller's token: look it up
    // again, and recheck the queues it serves.
    const auth::Principal* before = st->who.get();
    absl::Status caller =
        Recheck(ctx, &st->who, &st->auth_generation, need::kWork, "errand.v1.Workers/Connect");
    for (size_t i = 0; caller.ok() && st->who.get() != before && i < st->spec.queues.size(); ++i) {
      caller = AllowQueue(st->who, st->spec.queues[i]);
    }
    if (!caller.ok()) {
      Close(ctx, st, ToGrpc(caller));
      return;
    }
    if (!st->hello && req.kind_case() != v1::ConnectRequest::kHello) {
      Close(ctx, st, grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                  "the first message on Connect must be hello"));
      return;
    }
    switch (req.kind_case()) {
      case v1::ConnectRequest::kHello: {
        if (st->hello) {
          Ack(st, rid, absl::FailedPreconditionError("hello was already sent"));
          return;
        }
        const auto& h = req.hello();
        absl::Status s = ValidateHello(h);
        for (int i = 0; s.ok() && i < h.queues_size(); ++i) s = AllowQueue(st->who, h.queues(i));
        if (!s.ok()) {
          Close(ctx, st, ToGrpc(s));
          return;
        }
        st->hello = true;
        st->spec.queues.assign(h.queues().begin(), h.queues().end());
        if (!h.worker_id().empty()) st->spec.worker_id = h.worker_id();
        st->spec.lease_duration = util::DurationFromProto(h.lease_duration());
        st->credits = std::min(kMaxCredits, h.credits());
        st->packed_acks.store(h.packed_acks(), std::memory_order_relaxed);
        MaybeLease(ctx, st);
        return;
      }
      case v1::ConnectRequest::kCredits:
        st->credits = std::min<uint64_t>(kMaxCredits, uint64_t{st->credits} + req.credits());
        MaybeLease(ctx, st);
        return;
      case v1::ConnectRequest::kComplete: {
        absl::Status s = ValidateComplete(req.complete(), ctx->limits);
        if (s.ok()) s = AllowJob(ctx, st->who, *store::ParseJobId(req.complete().job_id()));
        if (!s.ok()) {
          Ack(st, rid, s);
          return;
        }
        uint64_t id = *store::ParseJobId(req.complete().job_id());
        uint64_t token = req.complete().lease_token();
        ctx->engine->Complete(id, token, std::move(*req.mutable_complete()->mutable_result()),
                              LeaseEnded(ctx, st, rid, id));
        return;
      }
      case v1::ConnectRequest::kFail: {
        absl::Status s = ValidateFail(req.fail(), ctx->limits);
        if (s.ok()) s = AllowJob(ctx, st->who, *store::ParseJobId(req.fail().job_id()));
        if (!s.ok()) {
          Ack(st, rid, s);
          return;
        }
        uint64_t id = *store::ParseJobId(req.fail().job_id());
        dispatch::FailSpec spec;
        spec.error = req.fail().error();
        spec.retry_after = util::DurationFromProto(req.fail().retry_after());
        spec.non_retryable = req.fail().non_retryable();
        ctx->engine->Fail(id, req.fail().lease_token(), std::move(spec),
                          LeaseEnded(ctx, st, rid, id));
        return;
      }
      case v1::ConnectRequest::kExtend: {
        absl::Status s = ValidateExtend(req.extend());
        if (s.ok()) s = AllowJob(ctx, st->who, *store::ParseJobId(req.extend().job_id()));
        if (!s.ok()) {
          Ack(st, rid, s);
          return;
        }
        uint64_t id = *store::ParseJobId(req.extend().job_id());
        uint64_t token = req.extend().lease_token();
        std::optional<v1::Progress> progress;
        if (req.extend().has_progress()) progress = req.extend().progress();
        ctx->engine->Extend(id, req.extend().lease_token(),
                            util::DurationFromProto(req.extend().extend_by()), std::move(progress),
                            [ctx, st, rid, id, token](
                                absl::StatusOr<dispatch::ExtendOutcome> r) {
                              v1::ConnectResponse msg;
                              auto* ack = msg.mutable_ack();
                              ack->set_request_id(rid);
                              if (r.ok() && !st->closed) {
                                // This stream now holds the lease (it may have
                                // been taken on a stream that dropped).
                                st->held[id] = token;
                                ctx->workers->Hold(id, st);
                              }
                              if (r.ok()) {
                                *ack->mutable_deadline() = util::ToProto(r->deadline);
                                ack->set_cancel_requested(r->cancel_requested);
                              } else {
                                ack->set_error_code(static_cast<int>(r.status().code()));
                                ack->set_error_message(std::string(r.status().message()));
                              }
                              Send(st, std::move(msg));
                            });
        return;
      }
      case v1::ConnectRequest::KIND_NOT_SET:
        Ack(st, rid, absl::InvalidArgumentError("ConnectRequest has no kind set"));
        return;
    }
  }

  friend class errand::service::WorkerRegistry;

  const ServiceContext* const ctx_;
  CallLimiter::Slot slot_;  // --max-streams; released when gRPC deletes the reactor
  std::shared_ptr<Session> st_;
  v1::ConnectRequest request_;
  v1::ConnectResponse response_;

 public:
  // Core: push a cancel request for a held job.
  static void PushCancel(const std::shared_ptr<Session>& st, const std::string& job_id) {
    v1::ConnectResponse msg;
    msg.set_cancel_job_id(job_id);
    Send(st, std::move(msg));
  }
};

}  // namespace

void WorkerRegistry::Shutdown() {
  for (auto& w : timers_) {
    if (auto t = w.lock()) t->cancel();
  }
  timers_.clear();
}

void WorkerRegistry::OnEvents(const std::vector<v1::Event>& events) {
  for (const v1::Event& ev : events) {
    if (ev.type() != v1::EVENT_TYPE_CANCEL_REQUESTED) continue;
    auto id = store::ParseJobId(ev.job_id());
    if (!id) continue;
    auto it = holders_.find(*id);
    if (it == holders_.end()) continue;
    WorkerStreamReactor::PushCancel(it->second, ev.job_id());
  }
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* NewWorkerStream(
    const ServiceContext* ctx, grpc::CallbackServerContext* context, auth::PrincipalRef who) {
  auto slot = ctx->Admit(CallLimiter::Kind::kStream, context);
  if (!slot.ok()) {
    return RejectedBidi<grpc::ByteBuffer, grpc::ByteBuffer>(ToGrpc(slot.status()));
  }
  return new WorkerStreamReactor(ctx, context->peer(), std::move(who), std::move(*slot));
}

}  // namespace errand::service
