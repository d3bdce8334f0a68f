#include "service/enqueue_stream.h"

#include <deque>
#include <memory>
#include <vector>

#include "service/auth_check.h"
#include "service/grpc_status.h"
#include "service/parsed_bidi.h"
#include "service/stream_writer.h"
#include "service/validate.h"

namespace errand::service {
namespace {

constexpr size_t kMaxUnanswered = 10000;

class EnqueueStreamReactor final
    : public ParsedBidiReactor<v1::EnqueueStreamRequest, v1::EnqueueStreamResponse> {
 public:
  using Writer = StreamWriter<ParsedBidiReactor<v1::EnqueueStreamRequest, v1::EnqueueStreamResponse>,
                              v1::EnqueueStreamResponse>;

  // Core-side state; the reactor is only touched while !finished.
  struct State : std::enable_shared_from_this<State> {
    State(const ServiceContext* ctx, EnqueueStreamReactor* r)
        : reactor(r), writer(r, &Writer::PackIntoMore, [ctx, this] {
            // A write failed: the client is gone.
            ctx->OnCore([this, self = weak_from_this().lock()] {
              if (self == nullptr || finished) return;
              finished = true;
              writer.Finish(grpc::Status(grpc::StatusCode::CANCELLED, "stream closed"));
            });
          }) {}
    EnqueueStreamReactor* reactor = nullptr;
    bool finished = false;
    bool reading = false;     // a StartRead is outstanding
    bool read_closed = false; // the client half-closed (or the stream broke)
    grpc::Status end;         // the final status once everything is answered
    size_t unanswered = 0;
    // Answers go out from any thread; what queues up while a write is in
    // flight is packed into the next message.
    Writer writer;
  };

  EnqueueStreamReactor(const ServiceContext* ctx, auth::PrincipalRef who, CallLimiter::Slot slot)
      : ctx_(ctx), who_(std::move(who)), slot_(std::move(slot)), st_(std::make_shared<State>(ctx, this)) {
    st_->reading = true;
    StartRead(&request_);
  }

  // A message that does not parse ends the reading; the jobs before it are
  // answered, then the stream ends with `status` (INVALID_ARGUMENT).
  void OnMalformedRead(const grpc::Status& status) override {
    ctx_->OnCore([ctx = ctx_, st = st_, status] {
      st->reading = false;
      st->read_closed = true;
      st->end = status;
      Pump(ctx, st);
    });
  }

  void OnMessageRead(bool ok) override {
    if (!ok) {
      ctx_->OnCore([ctx = ctx_, st = st_] {
        st->reading = false;
        st->read_closed = true;
        Pump(ctx, st);
      });
      return;
    }
    // Validate here, on the gRPC thread; hand the valid jobs to core.
    std::vector<std::pair<uint64_t, v1::EnqueueRequest>> jobs;
    std::vector<v1::EnqueueStreamResponse> rejected;
    auto take = [&](v1::EnqueueStreamRequest& r, bool nested) {
      absl::Status s = nested && r.more_size() > 0
                           ? absl::InvalidArgumentError("more[].more must be empty")
                           : ValidateEnqueue(r.job(), ctx_->limits, ctx_->clock->Now(), "job.");
      if (s.ok()) s = AllowQueue(who_, r.job().queue());
      if (s.ok()) {
        jobs.emplace_back(r.request_id(), std::move(*r.mutable_job()));
      } else {
        v1::EnqueueStreamResponse a;
        a.set_request_id(r.request_id());
        a.set_error_code(static_cast<int>(s.code()));
        a.set_error_message(std::string(s.message()));
        rejected.push_back(std::move(a));
      }
    };
    // A reload may have removed or changed the caller's token.
    absl::Status caller = Recheck(ctx_, &who_, &auth_generation_, need::kProduce,
                                  "errand.v1.Jobs/EnqueueStream");
    if (!caller.ok()) {
      v1::EnqueueStreamResponse a;
      a.set_request_id(request_.request_id());
      a.set_error_code(static_cast<int>(caller.code()));
      a.set_error_message(std::string(caller.message()));
      rejected.push_back(a);
      for (auto& m : request_.more()) {
        a.set_request_id(m.request_id());
        rejected.push_back(a);
      }
    } else {
      take(request_, false);
      for (auto& m : *request_.mutable_more()) take(m, true);
    }
    request_.Clear();
    ctx_->OnCore([ctx = ctx_, st = st_, jobs = std::move(jobs),
                  rejected = std::move(rejected)]() mutable {
      st->reading = false;
      if (st->finished) return;
      st->unanswered += jobs.size();
      for (auto& a : rejected) st->writer.Send(std::move(a));
      for (auto& [rid, job] : jobs) {
        v1::Durability d = job.durability();
        std::vector<v1::EnqueueRequest> one;
        one.push_back(std::move(job));
        ctx->engine->Enqueue(std::move(one), d,
                             [ctx, st, rid = rid](absl::StatusOr<dispatch::EnqueueOutcome> r) {
                               st->unanswered--;
                               v1::EnqueueStreamResponse a;
                               a.set_request_id(rid);
                               if (r.ok()) {
                                 auto* res = a.mutable_result();
                                 res->set_job_id(r->job_ids.at(0));
                                 res->set_durability(r->synced ? v1::DURABILITY_SYNC
                                                               : v1::DURABILITY_ASYNC);
                                 res->set_commit_seq(r->commit_seq);
                                 if (!r->duplicate.empty() && r->duplicate[0]) {
                                   res->set_duplicate(true);
                                   *res->mutable_job() = std::move(r->jobs[0]);
                                 }
                               } else {
                                 a.set_error_code(static_cast<int>(r.status().code()));
                                 a.set_error_message(std::string(r.status().message()));
                               }
                               if (!st->finished) st->writer.Send(std::move(a));
                               Pump(ctx, st);
                             });
      }
      Pump(ctx, st);
    });
  }

  void OnWriteDone(bool ok) override { st_->writer.OnWriteDone(ok); }

  void OnCancel() override {
    ctx_->OnCore([st = st_] {
      if (st->finished) return;
      st->finished = true;
      st->writer.Finish(grpc::Status(grpc::StatusCode::CANCELLED, "stream cancelled"));
    });
  }

  void OnDone() override { delete this; }

 private:
  // Core: resume reading, finish when done (the writer sends what is
  // queued first).
  static void Pump(const ServiceContext* ctx, const std::shared_ptr<State>& st) {
    if (st->finished) return;
    if (ctx->stopping && st->unanswered == 0) {
      st->finished = true;
      st->writer.Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "broker is shutting down"));
      return;
    }
    if (!st->read_closed && !st->reading && st->unanswered < kMaxUnanswered && !ctx->stopping) {
      st->reading = true;
      st->reactor->StartRead(&st->reactor->request_);
    }
    if (st->read_closed && st->unanswered == 0) {
      st->finished = true;
      st->writer.Finish(st->end);
    }
  }

  const ServiceContext* const ctx_;
  // The caller (null without tokens) and the token-file generation it was
  // checked at. Thread: OnReadDone only (reads are serialized).
  auth::PrincipalRef who_;
  uint64_t auth_generation_ = 0;
  CallLimiter::Slot slot_;  // released when gRPC deletes the reactor
  std::shared_ptr<State> st_;
  v1::EnqueueStreamRequest request_;
};

}  // namespace

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* NewEnqueueStream(
    const ServiceContext* ctx, grpc::CallbackServerContext* context, auth::PrincipalRef who) {
  auto slot = ctx->Admit(CallLimiter::Kind::kStream, context);
  if (!slot.ok()) {
    return RejectedBidi<grpc::ByteBuffer, grpc::ByteBuffer>(ToGrpc(slot.status()));
  }
  return new EnqueueStreamReactor(ctx, std::move(who), std::move(*slot));
}

}  // namespace errand::service
