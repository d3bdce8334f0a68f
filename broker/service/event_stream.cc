#include "service/event_stream.h"

#include <deque>
#include <memory>

#include "dispatch/engine.h"
#include "service/grpc_status.h"
#include "service/stream_writer.h"
#include "service/validate.h"

namespace errand::service {
namespace {

// Events a Subscribe stream queues for writing before the hub holds the
// rest in its own buffer (EventHub::Options::buffer): the stream writes them
// one after another from gRPC's thread, with no hop to core per event.
constexpr size_t kSubscribeQueue = 64;

// Events.Subscribe, registered raw: each event goes out as the bytes of a
// SubscribeResponse made of the event's shared serialization (one per event
// for every subscriber, see EventResponseBytes), not a copy per subscriber.
//
// Writes go through a StreamWriter: core queues events (the hub's sink), a
// write starts at once when none is in flight, and the next one from
// OnWriteDone on gRPC's thread. Core hears from the stream only when the
// writer's queue was full and has drained (WriteDone: the hub sends what it
// held), when a write failed, and on cancel. `State` is shared between the
// reactor and core-side closures; `finished` and `session` are core only.
// Every Finish goes through the writer, which finishes after the write in
// flight and never touches the reactor after that.
class SubscribeStream final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  using Writer = StreamWriter<grpc::ServerWriteReactor<grpc::ByteBuffer>, grpc::ByteBuffer,
                              hub::EventRef>;

  struct State : std::enable_shared_from_this<State> {
    State(const ServiceContext* ctx, SubscribeStream* r)
        : writer(
              r,
              [](std::deque<hub::EventRef>& queued, grpc::ByteBuffer* out) {
                grpc::ByteBuffer bytes =
                    EventResponseBytes(v1::SubscribeResponse::kEventFieldNumber, *queued.front());
                out->Swap(&bytes);
                queued.pop_front();
              },
              [ctx, this] {  // a write failed: the client is gone
                ctx->OnCore([ctx, this, self = weak_from_this().lock()] {
                  if (self == nullptr || finished) return;
                  ctx->hub->Unsubscribe(session);
                  finished = true;
                  writer.Finish(grpc::Status(grpc::StatusCode::CANCELLED, "stream closed"));
                });
              },
              [ctx, this] {  // the queue was full and has drained
                ctx->OnCore([ctx, this, self = weak_from_this().lock()] {
                  if (self == nullptr || finished) return;
                  ctx->hub->WriteDone(session);
                });
              }) {}
    bool finished = false;
    uint64_t session = 0;
    Writer writer;
  };

  SubscribeStream(const ServiceContext* ctx, CallLimiter::Slot slot)
      : ctx_(ctx), slot_(std::move(slot)), st_(std::make_shared<State>(ctx, this)) {}

  void OnWriteDone(bool ok) override { st_->writer.OnWriteDone(ok); }

  void OnCancel() override {
    ctx_->OnCore([ctx = ctx_, st = st_] {
      if (st->finished) return;
      ctx->hub->Unsubscribe(st->session);
      st->finished = true;
      st->writer.Finish(grpc::Status(grpc::StatusCode::CANCELLED, "subscription cancelled"));
    });
  }

  void OnDone() override { delete this; }

  std::shared_ptr<State> st_for_start() const { return st_; }

  // Core only.
  static void FinishOnCore(const std::shared_ptr<State>& st, const grpc::Status& status) {
    if (st->finished) return;
    st->finished = true;
    st->writer.Finish(status);
  }

 private:
  const ServiceContext* const ctx_;
  CallLimiter::Slot slot_;  // --max-subscribers; released when gRPC deletes the reactor
  std::shared_ptr<State> st_;
};

// A server stream that the hub feeds one event at a time (Watch).
// `State` is shared between the reactor and core-side closures and is only
// read or written on core; after Finish, core never touches the reactor
// again (gRPC deletes it in OnDone).
template <typename Resp>
class HubStream : public grpc::ServerWriteReactor<Resp> {
 public:
  struct State {
    HubStream* reactor = nullptr;
    bool finished = false;
    uint64_t session = 0;
    bool end_after_write = false;
  };

  HubStream(const ServiceContext* ctx, CallLimiter::Slot slot)
      : ctx_(ctx), slot_(std::move(slot)), st_(std::make_shared<State>()) {
    st_->reactor = this;
  }

  void OnWriteDone(bool ok) override {
    ctx_->OnCore([ctx = ctx_, st = st_, ok] {
      if (st->finished) return;
      if (!ok) {  // the client is gone
        ctx->hub->Unsubscribe(st->session);
        st->finished = true;
        st->reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "stream closed"));
        return;
      }
      if (st->end_after_write) {
        ctx->hub->Unsubscribe(st->session);
        st->finished = true;
        st->reactor->Finish(grpc::Status::OK);
        return;
      }
      ctx->hub->WriteDone(st->session);
    });
  }

  void OnCancel() override {
    ctx_->OnCore([ctx = ctx_, st = st_] {
      if (st->finished) return;
      ctx->hub->Unsubscribe(st->session);
      st->finished = true;
      st->reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "subscription cancelled"));
    });
  }

  void OnDone() override { delete this; }

  // Called once, right after construction, before the reactor is returned.
  std::shared_ptr<State> st_for_start() const { return st_; }

  // Core only.
  static void FinishOnCore(const std::shared_ptr<State>& st, const grpc::Status& status) {
    if (st->finished) return;
    st->finished = true;
    st->reactor->Finish(status);
  }
  static void WriteOnCore(const std::shared_ptr<State>& st, Resp msg) {
    if (st->finished) return;
    st->reactor->msg_ = std::move(msg);
    st->reactor->StartWrite(&st->reactor->msg_);
  }

 protected:
  const ServiceContext* const ctx_;
  CallLimiter::Slot slot_;  // --max-subscribers; released when gRPC deletes the reactor
  std::shared_ptr<State> st_;
  Resp msg_;
};

using WatchStream = HubStream<v1::WatchJobResponse>;

absl::StatusOr<hub::Filter> MakeFilter(const v1::SubscribeRequest& req) {
  if (auto s = ValidateSubscribe(req); !s.ok()) return s;
  hub::Filter f;
  f.queues.insert(req.queues().begin(), req.queues().end());
  f.job_ids.insert(req.job_ids().begin(), req.job_ids().end());
  f.topics.insert(req.topics().begin(), req.topics().end());
  f.types.insert(req.types().begin(), req.types().end());
  return f;
}

}  // namespace

grpc::ByteBuffer EventResponseBytes(int field, const hub::SharedEvent& ev) {
  const grpc::Slice& event = ev.Serialized();
  // The field's tag (length-delimited) and the event's length, as varints.
  uint8_t head[16];
  size_t n = 0;
  auto varint = [&](uint64_t v) {
    while (v >= 0x80) {
      head[n++] = static_cast<uint8_t>(v | 0x80);
      v >>= 7;
    }
    head[n++] = static_cast<uint8_t>(v);
  };
  varint(static_cast<uint64_t>(field) << 3 | 2);
  varint(event.size());
  grpc::Slice slices[2] = {grpc::Slice(head, n), event};  // the event's bytes are shared
  return grpc::ByteBuffer(slices, 2);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* NewSubscribeReactor(
    const ServiceContext* ctx, grpc::CallbackServerContext* context,
    const v1::SubscribeRequest* request) {
  auto slot = ctx->Admit(CallLimiter::Kind::kSubscriber, context);
  if (!slot.ok()) return RejectedWrite<grpc::ByteBuffer>(ToGrpc(slot.status()));
  auto* reactor = new SubscribeStream(ctx, std::move(*slot));
  auto st = reactor->st_for_start();
  auto filter = MakeFilter(*request);
  if (!filter.ok()) {
    st->finished = true;  // no core closure exists yet
    st->writer.Finish(ToGrpc(filter.status()));
    return reactor;
  }
  hub::Start start;
  if (request->from_oldest()) {
    start.kind = hub::Start::kOldest;
  } else if (request->after_seq() != 0) {
    start.kind = hub::Start::kAfterSeq;
    start.after_seq = request->after_seq();
  }
  ctx->OnCore([ctx, st, filter = std::move(*filter), start]() mutable {
    if (st->finished) return;
    hub::Sink sink;
    sink.send = [st](const hub::EventRef& ev) {
      return st->writer.SendBounded(ev, kSubscribeQueue);
    };
    sink.end = [st](const absl::Status& s) { SubscribeStream::FinishOnCore(st, ToGrpc(s)); };
    auto id = ctx->hub->Subscribe(std::move(filter), start, std::move(sink));
    if (!id.ok()) {
      SubscribeStream::FinishOnCore(st, ToGrpc(id.status()));
      return;
    }
    st->session = *id;
  });
  return reactor;
}

grpc::ServerWriteReactor<v1::WatchJobResponse>* NewWatchReactor(
    const ServiceContext* ctx, grpc::CallbackServerContext* context,
    const v1::EnqueueRequest* request) {
  auto slot = ctx->Admit(CallLimiter::Kind::kSubscriber, context);
  if (!slot.ok()) return RejectedWrite<v1::WatchJobResponse>(ToGrpc(slot.status()));
  auto* reactor = new WatchStream(ctx, std::move(*slot));
  auto st = reactor->st_for_start();
  if (auto s = ValidateEnqueue(*request, ctx->limits, ctx->clock->Now()); !s.ok()) {
    st->finished = true;  // no core closure exists yet
    reactor->Finish(ToGrpc(s));
    return reactor;
  }
  std::vector<v1::EnqueueRequest> reqs(1, *request);
  v1::Durability durability = request->durability();
  ctx->OnCore([ctx, st, reqs = std::move(reqs), durability]() mutable {
    if (st->finished) return;
    ctx->engine->Enqueue(std::move(reqs), durability,
                         [ctx, st](absl::StatusOr<dispatch::EnqueueOutcome> r) {
      if (!r.ok()) {
        WatchStream::FinishOnCore(st, ToGrpc(r.status()));
        return;
      }
      if (st->finished) return;  // the client left; the job stays enqueued
      const std::string job_id = r->job_ids.at(0);
      // Subscribe before anything else can happen to the job (we are on
      // core, inside the enqueue's commit), holding sends until the
      // acceptance below is written: no event can be missed.
      hub::Filter filter;
      filter.job_ids.insert(job_id);
      for (int t = v1::EventType_MIN; t <= v1::EventType_MAX; ++t) {
        if (v1::EventType_IsValid(t) && t != v1::EVENT_TYPE_UNSPECIFIED &&
            t != v1::EVENT_TYPE_ENQUEUED && t != v1::EVENT_TYPE_MESSAGE) {
          filter.types.insert(t);
        }
      }
      hub::Sink sink;
      sink.send = [st](const hub::EventRef& ref) {
        const v1::Event& ev = ref->event();
        v1::WatchJobResponse msg;
        *msg.mutable_event() = ev;
        if ((ev.has_job() && dispatch::IsTerminal(ev.job().state())) ||
            ev.type() == v1::EVENT_TYPE_DELETED) {
          st->end_after_write = true;
        }
        WatchStream::WriteOnCore(st, std::move(msg));
        return false;  // the hub waits for OnWriteDone's WriteDone
      };
      sink.end = [st](const absl::Status& s) { WatchStream::FinishOnCore(st, ToGrpc(s)); };
      auto id = ctx->hub->Subscribe(std::move(filter), hub::Start{}, std::move(sink),
                                    /*hold=*/true);
      if (!id.ok()) {
        WatchStream::FinishOnCore(st, ToGrpc(id.status()));
        return;
      }
      st->session = *id;
      v1::WatchJobResponse accepted;
      auto* a = accepted.mutable_accepted();
      a->set_job_id(job_id);
      a->set_durability(r->synced ? v1::DURABILITY_SYNC : v1::DURABILITY_ASYNC);
      a->set_commit_seq(r->commit_seq);
      if (!r->duplicate.empty() && r->duplicate[0]) {
        a->set_duplicate(true);
        *a->mutable_job() = r->jobs[0];
      }
      // A duplicate of a job that already ended: nothing more will happen.
      if (accepted.accepted().duplicate() &&
          dispatch::IsTerminal(accepted.accepted().job().state())) {
        st->end_after_write = true;
      }
      WatchStream::WriteOnCore(st, std::move(accepted));
    });
  });
  return reactor;
}

}  // namespace errand::service
