// errand::Client: one multiplexed EnqueueStream for all enqueues, unary
// calls with retries for the rest.
//
// Stream protocol (all state below guarded by Impl::mu_):
// - pending_ holds every enqueue without an answer, by request id; unsent_
//   lists the ids still to be written on the current stream, in order.
// - At most one StreamReactor exists (stream_); at most one write is in
//   flight on it. Whatever queued up meanwhile is packed (`more`) into the
//   next write by whoever finishes the previous one.
// - gRPC operations (StartCall/StartWrite/StartRead/RemoveHold) are always
//   issued with mu_ released. A hold keeps the reactor alive until it is
//   dead (a read or write failed), no write is in flight and its start
//   sequence has returned; then OnDone requeues every unanswered request
//   and a reconnect is scheduled with backoff.

#include "errand/client.h"

#include <grpcpp/grpcpp.h>

#include <deque>
#include <map>
#include <set>

#include "errand/v1/jobs.grpc.pb.h"
#include "channel.h"
#include "internal.h"

namespace errand {

using internal::ToAbsl;
using SteadyClock = std::chrono::steady_clock;

namespace {

bool IsTerminalEvent(v1::EventType t) {
  return t == v1::EVENT_TYPE_SUCCEEDED || t == v1::EVENT_TYPE_DEAD ||
         t == v1::EVENT_TYPE_CANCELLED;
}

google::protobuf::Duration ToDuration(std::chrono::milliseconds d) {
  google::protobuf::Duration out;
  out.set_seconds(d.count() / 1000);
  out.set_nanos(static_cast<int32_t>((d.count() % 1000) * 1000000));
  return out;
}

}  // namespace

class StreamReactor;

class Client::Impl {
 public:
  Impl(const ClientOptions& options, std::shared_ptr<grpc::Channel> channel)
      : options_(options), channel_(std::move(channel)), jobs_(v1::Jobs::NewStub(channel_)) {
    if (options_.max_pack == 0) options_.max_pack = 1;
    if (options_.retry.max_attempts < 1) options_.retry.max_attempts = 1;
  }
  ~Impl();

  void Submit(v1::EnqueueRequest job, EnqueueCallback done, std::chrono::milliseconds timeout);
  void SubmitBatch(v1::EnqueueBatchRequest req, BatchCallback done,
                   std::chrono::milliseconds timeout);
  // A unary call with a per-attempt deadline, retried on UNAVAILABLE.
  absl::Status Call(std::chrono::milliseconds per_attempt,
                    const std::function<grpc::Status(grpc::ClientContext*)>& fn);
  absl::StatusOr<v1::Job> Wait(const JobId& id, std::chrono::milliseconds timeout);
  absl::StatusOr<v1::Job> EnqueueAndWatch(const v1::EnqueueRequest& job, WatchCallback on_message,
                                          std::chrono::milliseconds timeout);

  // Stream reactions.
  void OnStreamRead(StreamReactor* r, bool ok);
  void OnStreamWrite(StreamReactor* r, bool ok);
  void OnStreamDone(StreamReactor* r, const grpc::Status& s);
  // After a reactor was deleted: from then on it holds no channel reference.
  void OnReactorDeleted();

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Jobs::Stub> jobs_;

 private:
  struct Pending {
    v1::EnqueueStreamRequest req;
    EnqueueCallback done;
    SteadyClock::time_point deadline;
    int failures = 0;
  };
  struct BatchCall {
    v1::EnqueueBatchRequest req;
    v1::EnqueueBatchResponse resp;
    BatchCallback done;
    SteadyClock::time_point deadline;
    int attempt = 0;
  };

  // Opens a stream if requests wait and none is open, and writes if it can.
  void Pump();
  // REQUIRES: mu_ held. Fills r's write message from unsent_; false when
  // there was nothing to send.
  bool BuildWriteLocked(StreamReactor* r);
  // REQUIRES: mu_ held. True when the hold of a dead reactor may go.
  bool ShouldReleaseLocked(StreamReactor* r);
  void ScheduleSweepLocked();
  void Sweep();
  void StartBatchAttempt(std::shared_ptr<BatchCall> call);
  bool Register(grpc::ClientContext* ctx);
  void Unregister(grpc::ClientContext* ctx);
  // Sleeps `d` unless closing; false when closing.
  bool SleepUnlessClosing(std::chrono::milliseconds d);

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Pending> pending_;
  std::deque<uint64_t> unsent_;
  uint64_t next_id_ = 1;
  StreamReactor* stream_ = nullptr;
  int reactors_alive_ = 0;
  bool reconnect_scheduled_ = false;
  bool sweep_scheduled_ = false;
  int stream_failures_ = 0;
  bool closing_ = false;
  int calls_in_flight_ = 0;
  std::set<grpc::ClientContext*> contexts_;
  // Last: stopped (and joined) explicitly in ~Impl before the rest goes.
  internal::Scheduler scheduler_;
};

class StreamReactor final
    : public grpc::ClientBidiReactor<v1::EnqueueStreamRequest, v1::EnqueueStreamResponse> {
 public:
  explicit StreamReactor(Client::Impl* impl) : impl_(impl) {}
  void OnReadDone(bool ok) override { impl_->OnStreamRead(this, ok); }
  void OnWriteDone(bool ok) override { impl_->OnStreamWrite(this, ok); }
  void OnDone(const grpc::Status& s) override {
    Client::Impl* impl = impl_;
    impl->OnStreamDone(this, s);
    // The reactor's ClientContext holds a channel reference: ~Impl waits for
    // this delete, so the last reference never drops on a gRPC thread (that
    // would make gRPC join its own callback thread).
    delete this;
    impl->OnReactorDeleted();
  }

  grpc::ClientContext ctx;
  v1::EnqueueStreamRequest write_msg;
  v1::EnqueueStreamResponse read_msg;
  // Guarded by Impl::mu_.
  bool starting = true;
  bool writing = false;
  bool dead = false;
  bool released = false;

 private:
  Client::Impl* const impl_;
};

// ---------------------------------------------------------------------------
// Stream.

void Client::Impl::Submit(v1::EnqueueRequest job, EnqueueCallback done,
                          std::chrono::milliseconds timeout) {
  if (job.idempotency_key().empty() && options_.auto_idempotency_key) {
    job.set_idempotency_key(internal::RandomKey());
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!closing_) {
      uint64_t id = next_id_++;
      Pending& p = pending_[id];
      p.req.set_request_id(id);
      *p.req.mutable_job() = std::move(job);
      p.done = std::move(done);
      p.deadline = SteadyClock::now() + (timeout.count() > 0 ? timeout : options_.enqueue_timeout);
      unsent_.push_back(id);
      ScheduleSweepLocked();
      done = nullptr;
    }
  }
  if (done) {
    done(absl::CancelledError("errand::Client is shutting down"));
    return;
  }
  Pump();
}

bool Client::Impl::BuildWriteLocked(StreamReactor* r) {
  r->write_msg.Clear();
  size_t n = 0;
  while (!unsent_.empty() && n < options_.max_pack) {
    uint64_t id = unsent_.front();
    unsent_.pop_front();
    auto it = pending_.find(id);
    if (it == pending_.end()) continue;  // timed out meanwhile
    if (n == 0) {
      r->write_msg = it->second.req;
    } else {
      *r->write_msg.add_more() = it->second.req;
    }
    ++n;
  }
  return n > 0;
}

bool Client::Impl::ShouldReleaseLocked(StreamReactor* r) {
  if (r->dead && !r->writing && !r->starting && !r->released) {
    r->released = true;
    return true;
  }
  return false;
}

void Client::Impl::Pump() {
  std::unique_lock<std::mutex> lock(mu_);
  if (closing_) return;
  if (stream_ == nullptr) {
    if (unsent_.empty() || reconnect_scheduled_) return;
    auto* r = new StreamReactor(this);
    stream_ = r;
    ++reactors_alive_;
    lock.unlock();
    jobs_->async()->EnqueueStream(&r->ctx, r);
    r->AddHold();
    r->StartRead(&r->read_msg);
    r->StartCall();
    lock.lock();
    r->starting = false;
    if (ShouldReleaseLocked(r)) {
      lock.unlock();
      r->RemoveHold();
      return;
    }
  }
  StreamReactor* r = stream_;
  if (r->starting || r->dead || r->writing) return;
  if (!BuildWriteLocked(r)) return;
  r->writing = true;
  lock.unlock();
  r->StartWrite(&r->write_msg);
}

void Client::Impl::OnStreamWrite(StreamReactor* r, bool ok) {
  std::unique_lock<std::mutex> lock(mu_);
  r->writing = false;
  if (!ok) r->dead = true;
  if (ShouldReleaseLocked(r)) {
    lock.unlock();
    r->RemoveHold();
    return;
  }
  if (r->dead || closing_ || !BuildWriteLocked(r)) return;
  r->writing = true;
  lock.unlock();
  r->StartWrite(&r->write_msg);
}

void Client::Impl::OnStreamRead(StreamReactor* r, bool ok) {
  if (!ok) {
    std::unique_lock<std::mutex> lock(mu_);
    r->dead = true;
    if (ShouldReleaseLocked(r)) {
      lock.unlock();
      r->RemoveHold();
    }
    return;
  }
  std::vector<std::pair<EnqueueCallback, absl::StatusOr<v1::EnqueueResponse>>> answered;
  auto take = [&](v1::EnqueueStreamResponse& a) {
    auto it = pending_.find(a.request_id());
    if (it == pending_.end()) return;  // timed out: nobody waits any more
    if (a.error_code() != 0) {
      answered.emplace_back(std::move(it->second.done),
                            absl::Status(static_cast<absl::StatusCode>(a.error_code()),
                                         a.error_message()));
    } else {
      answered.emplace_back(std::move(it->second.done), std::move(*a.mutable_result()));
    }
    pending_.erase(it);
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    stream_failures_ = 0;
    take(r->read_msg);
    for (auto& m : *r->read_msg.mutable_more()) take(m);
    r->read_msg.Clear();
  }
  r->StartRead(&r->read_msg);
  for (auto& [done, result] : answered) done(std::move(result));
}

void Client::Impl::OnStreamDone(StreamReactor* r, const grpc::Status& s) {
  std::vector<EnqueueCallback> failed;
  std::unique_lock<std::mutex> lock(mu_);
  if (stream_ == r) stream_ = nullptr;
  // Every unanswered request is sent again on the next stream, in order;
  // but a stream refused for its token fails them at once: resending cannot
  // help.
  const bool refused = s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
                       s.error_code() == grpc::StatusCode::PERMISSION_DENIED;
  unsent_.clear();
  for (auto it = pending_.begin(); it != pending_.end();) {
    if ((refused || ++it->second.failures >= options_.retry.max_attempts) && !closing_) {
      failed.push_back(std::move(it->second.done));
      it = pending_.erase(it);
    } else {
      unsent_.push_back(it->first);
      ++it;
    }
  }
  if (!closing_) {
    ++stream_failures_;
    if (!pending_.empty() && !reconnect_scheduled_) {
      reconnect_scheduled_ = true;
      scheduler_.After(internal::BackoffFor(options_.retry, stream_failures_), [this] {
        {
          std::lock_guard<std::mutex> l(mu_);
          reconnect_scheduled_ = false;
        }
        Pump();
      });
    }
  }
  // Built before unlocking: ~Impl may proceed as soon as mu_ is released.
  absl::Status err =
      refused ? internal::ToAbsl(s)
              : absl::UnavailableError("EnqueueStream failed " +
                                       std::to_string(options_.retry.max_attempts) +
                                       " times; last: " +
                                       (s.ok() ? std::string("ended") : s.error_message()));
  cv_.notify_all();
  lock.unlock();
  for (auto& done : failed) done(err);
}

void Client::Impl::OnReactorDeleted() {
  std::lock_guard<std::mutex> lock(mu_);
  --reactors_alive_;
  cv_.notify_all();
}

void Client::Impl::ScheduleSweepLocked() {
  if (sweep_scheduled_ || closing_) return;
  sweep_scheduled_ = true;
  scheduler_.After(std::chrono::milliseconds(100), [this] { Sweep(); });
}

void Client::Impl::Sweep() {
  std::vector<EnqueueCallback> expired;
  {
    std::lock_guard<std::mutex> lock(mu_);
    sweep_scheduled_ = false;
    if (closing_) return;
    auto now = SteadyClock::now();
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->second.deadline <= now) {
        expired.push_back(std::move(it->second.done));
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
    if (!pending_.empty()) ScheduleSweepLocked();
  }
  for (auto& done : expired) {
    done(absl::DeadlineExceededError("enqueue not acknowledged within its timeout"));
  }
}

// ---------------------------------------------------------------------------
// Unary calls.

bool Client::Impl::Register(grpc::ClientContext* ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closing_) return false;
  contexts_.insert(ctx);
  ++calls_in_flight_;
  return true;
}

void Client::Impl::Unregister(grpc::ClientContext* ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  contexts_.erase(ctx);
  --calls_in_flight_;
  cv_.notify_all();
}

bool Client::Impl::SleepUnlessClosing(std::chrono::milliseconds d) {
  std::unique_lock<std::mutex> lock(mu_);
  return !cv_.wait_for(lock, d, [this] { return closing_; });
}

absl::Status Client::Impl::Call(std::chrono::milliseconds per_attempt,
                                const std::function<grpc::Status(grpc::ClientContext*)>& fn) {
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext ctx;
    ctx.set_deadline(internal::After(per_attempt));
    if (!Register(&ctx)) return absl::CancelledError("errand::Client is shutting down");
    grpc::Status s = fn(&ctx);
    Unregister(&ctx);
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE &&
        attempt < options_.retry.max_attempts &&
        SleepUnlessClosing(internal::BackoffFor(options_.retry, attempt))) {
      continue;
    }
    return ToAbsl(s);
  }
}

void Client::Impl::SubmitBatch(v1::EnqueueBatchRequest req, BatchCallback done,
                               std::chrono::milliseconds timeout) {
  if (options_.auto_idempotency_key) {
    for (auto& j : *req.mutable_jobs()) {
      if (j.idempotency_key().empty()) j.set_idempotency_key(internal::RandomKey());
    }
  }
  auto call = std::make_shared<BatchCall>();
  call->req = std::move(req);
  call->done = std::move(done);
  call->deadline =
      SteadyClock::now() + (timeout.count() > 0 ? timeout : options_.enqueue_timeout);
  StartBatchAttempt(std::move(call));
}

void Client::Impl::StartBatchAttempt(std::shared_ptr<BatchCall> call) {
  call->attempt++;
  call->resp.Clear();
  auto ctx = std::make_shared<grpc::ClientContext>();
  auto now = SteadyClock::now();
  auto per_attempt = std::min(options_.rpc_timeout,
                              std::chrono::duration_cast<std::chrono::milliseconds>(
                                  call->deadline - now));
  ctx->set_deadline(internal::After(std::max(per_attempt, std::chrono::milliseconds(1))));
  if (!Register(ctx.get())) {
    call->done(absl::CancelledError("errand::Client is shutting down"));
    return;
  }
  grpc::ClientContext* raw = ctx.get();
  // The callback owns the context and drops it before Unregister: its channel
  // reference must never be the last one (see StreamReactor::OnDone).
  jobs_->async()->EnqueueBatch(raw, &call->req, &call->resp,
                               [this, call, ctx = std::move(ctx)](grpc::Status s) mutable {
    bool retry = false;
    std::chrono::milliseconds wait{0};
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE &&
        call->attempt < options_.retry.max_attempts) {
      wait = internal::BackoffFor(options_.retry, call->attempt);
      retry = SteadyClock::now() + wait < call->deadline;
    }
    if (retry) {
      // The scheduler runs it at once (reporting CANCELLED) when closing.
      scheduler_.After(wait, [this, call] { StartBatchAttempt(call); });
    } else if (s.ok()) {
      call->done(std::move(call->resp));
    } else {
      call->done(ToAbsl(s));
    }
    grpc::ClientContext* done_ctx = ctx.get();
    {
      std::lock_guard<std::mutex> lock(mu_);
      contexts_.erase(done_ctx);
    }
    ctx.reset();
    std::lock_guard<std::mutex> lock(mu_);  // Last: ~Impl may proceed after this.
    --calls_in_flight_;
    cv_.notify_all();
  });
}

absl::StatusOr<v1::Job> Client::Impl::Wait(const JobId& id, std::chrono::milliseconds timeout) {
  auto deadline = SteadyClock::now() + timeout;
  for (;;) {
    auto remaining =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now());
    if (remaining.count() <= 0) {
      return absl::DeadlineExceededError("job " + id + " did not finish in time");
    }
    auto round = std::min(remaining, std::chrono::milliseconds(60000));
    v1::WaitJobRequest req;
    req.set_job_id(id);
    *req.mutable_timeout() = ToDuration(round);
    v1::WaitJobResponse resp;
    absl::Status s = Call(round + options_.rpc_timeout, [&](grpc::ClientContext* ctx) {
      return jobs_->WaitJob(ctx, req, &resp);
    });
    if (!s.ok()) return s;
    if (resp.done()) return std::move(*resp.mutable_job());
  }
}

absl::StatusOr<v1::Job> Client::Impl::EnqueueAndWatch(const v1::EnqueueRequest& job,
                                                      WatchCallback on_message,
                                                      std::chrono::milliseconds timeout) {
  v1::EnqueueRequest req = job;
  if (req.idempotency_key().empty() && options_.auto_idempotency_key) {
    req.set_idempotency_key(internal::RandomKey());
  }
  const bool bounded = timeout.count() > 0;
  const auto deadline = SteadyClock::now() + timeout;
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext ctx;
    if (bounded) ctx.set_deadline(std::chrono::system_clock::now() + timeout);
    if (!Register(&ctx)) return absl::CancelledError("errand::Client is shutting down");
    auto reader = jobs_->EnqueueAndWatch(&ctx, req);
    v1::WatchJobResponse m;
    std::string id;
    v1::Job final_job;
    bool terminal = false;
    while (reader->Read(&m)) {
      if (m.has_accepted()) id = m.accepted().job_id();
      if (m.has_event() && IsTerminalEvent(m.event().type())) {
        terminal = true;
        final_job = m.event().job();
      }
      if (on_message) on_message(m);
    }
    grpc::Status s = reader->Finish();
    Unregister(&ctx);
    if (terminal) {
      if (final_job.id().empty()) {
        v1::GetJobRequest g;
        g.set_job_id(id);
        v1::GetJobResponse gr;
        absl::Status gs = Call(options_.rpc_timeout, [&](grpc::ClientContext* c) {
          return jobs_->GetJob(c, g, &gr);
        });
        if (!gs.ok()) return gs;
        return std::move(*gr.mutable_job());
      }
      return final_job;
    }
    if (!id.empty()) {
      // Accepted, but the stream ended early: follow the job by long poll.
      auto left = bounded ? std::chrono::duration_cast<std::chrono::milliseconds>(
                                deadline - SteadyClock::now())
                          : std::chrono::hours(24 * 365);
      return Wait(id, left);
    }
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE &&
        attempt < options_.retry.max_attempts &&
        SleepUnlessClosing(internal::BackoffFor(options_.retry, attempt))) {
      continue;
    }
    if (s.ok()) return absl::InternalError("EnqueueAndWatch ended without an answer");
    return ToAbsl(s);
  }
}

Client::Impl::~Impl() {
  std::vector<EnqueueCallback> cancelled;
  {
    std::unique_lock<std::mutex> lock(mu_);
    closing_ = true;
    if (stream_ != nullptr) stream_->ctx.TryCancel();
    for (auto* ctx : contexts_) ctx->TryCancel();
    cv_.notify_all();
    cv_.wait(lock, [this] {
      return stream_ == nullptr && reactors_alive_ == 0 && calls_in_flight_ == 0;
    });
  }
  scheduler_.Stop();  // runs what is left; everything sees closing_
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, p] : pending_) cancelled.push_back(std::move(p.done));
    pending_.clear();
  }
  for (auto& done : cancelled) done(absl::CancelledError("errand::Client destroyed"));
}

// ---------------------------------------------------------------------------
// Client.

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.address.empty()) return absl::InvalidArgumentError("ClientOptions.address is empty");
  if (options.keepalive_time < std::chrono::seconds(1) ||
      options.keepalive_time > std::chrono::hours(24)) {
    return absl::InvalidArgumentError("ClientOptions.keepalive_time must be between 1s and 24h");
  }
  if (options.keepalive_timeout < std::chrono::milliseconds(100) ||
      options.keepalive_timeout > std::chrono::hours(1)) {
    return absl::InvalidArgumentError(
        "ClientOptions.keepalive_timeout must be between 100ms and 1h");
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  // Come back quickly after a broker restart.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // Notice a silently dead connection (ClientOptions::keepalive_time).
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(options.keepalive_time.count()));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(options.keepalive_timeout.count()));
  // gRPC stops pinging after two pings without data by default, and an idle
  // Workers.Connect, Subscribe or WaitJob sends none: keep pinging.
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  auto made = internal::MakeChannel(options, args);
  if (!made.ok()) return made.status();
  auto channel = std::move(*made);
  if (options.connect_timeout.count() > 0 &&
      !channel->WaitForConnected(internal::After(options.connect_timeout))) {
    bool tls = options.tls || !options.tls_ca_file.empty() || !options.tls_cert_file.empty();
    return absl::UnavailableError(
        "cannot reach the errand broker at " + options.address +
        (tls ? " over TLS (check that it serves TLS, that tls_ca_file signed its certificate "
               "and that the certificate names the host; a broker with --tls-client-ca also "
               "needs tls_cert_file and tls_key_file)"
             : ""));
  }
  return std::unique_ptr<Client>(new Client(std::make_unique<Impl>(options, std::move(channel))));
}

Client::Client(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Client::~Client() = default;

std::shared_ptr<grpc::Channel> Client::channel() const { return impl_->channel_; }
const ClientOptions& Client::options() const { return impl_->options_; }

absl::StatusOr<JobId> Client::Enqueue(const v1::EnqueueRequest& job, const EnqueueOptions& opts) {
  absl::StatusOr<v1::EnqueueResponse> r = EnqueueFuture(job, opts).get();
  if (!r.ok()) return r.status();
  return std::move(*r->mutable_job_id());
}

void Client::EnqueueAsync(const v1::EnqueueRequest& job, EnqueueCallback done,
                          const EnqueueOptions& opts) {
  impl_->Submit(job, std::move(done), opts.timeout);
}

std::future<absl::StatusOr<v1::EnqueueResponse>> Client::EnqueueFuture(
    const v1::EnqueueRequest& job, const EnqueueOptions& opts) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<v1::EnqueueResponse>>>();
  auto future = promise->get_future();
  impl_->Submit(
      job,
      [promise](absl::StatusOr<v1::EnqueueResponse> r) { promise->set_value(std::move(r)); },
      opts.timeout);
  return future;
}

absl::StatusOr<std::vector<JobId>> Client::EnqueueBatch(const std::vector<v1::EnqueueRequest>& jobs,
                                                        const EnqueueOptions& opts) {
  absl::StatusOr<v1::EnqueueBatchResponse> r = EnqueueBatchFuture(jobs, opts).get();
  if (!r.ok()) return r.status();
  std::vector<JobId> ids;
  ids.reserve(r->results_size());
  for (auto& res : *r->mutable_results()) ids.push_back(std::move(*res.mutable_job_id()));
  return ids;
}

void Client::EnqueueBatchAsync(const std::vector<v1::EnqueueRequest>& jobs, BatchCallback done,
                               const EnqueueOptions& opts) {
  v1::EnqueueBatchRequest req;
  for (const auto& j : jobs) *req.add_jobs() = j;
  impl_->SubmitBatch(std::move(req), std::move(done), opts.timeout);
}

std::future<absl::StatusOr<v1::EnqueueBatchResponse>> Client::EnqueueBatchFuture(
    const std::vector<v1::EnqueueRequest>& jobs, const EnqueueOptions& opts) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<v1::EnqueueBatchResponse>>>();
  auto future = promise->get_future();
  EnqueueBatchAsync(
      jobs,
      [promise](absl::StatusOr<v1::EnqueueBatchResponse> r) { promise->set_value(std::move(r)); },
      opts);
  return future;
}

absl::StatusOr<v1::Job> Client::Get(const JobId& id) {
  v1::GetJobRequest req;
  req.set_job_id(id);
  v1::GetJobResponse resp;
  absl::Status s = impl_->Call(impl_->options_.rpc_timeout, [&](grpc::ClientContext* ctx) {
    return impl_->jobs_->GetJob(ctx, req, &resp);
  });
  if (!s.ok()) return s;
  return std::move(*resp.mutable_job());
}

absl::StatusOr<v1::Job> Client::Wait(const JobId& id, std::chrono::milliseconds timeout) {
  return impl_->Wait(id, timeout);
}

absl::StatusOr<v1::Job> Client::Cancel(const JobId& id, const std::string& reason) {
  v1::CancelJobRequest req;
  req.set_job_id(id);
  req.set_reason(reason);
  v1::CancelJobResponse resp;
  absl::Status s = impl_->Call(impl_->options_.rpc_timeout, [&](grpc::ClientContext* ctx) {
    return impl_->jobs_->CancelJob(ctx, req, &resp);
  });
  if (!s.ok()) return s;
  return std::move(*resp.mutable_job());
}

absl::StatusOr<v1::Job> Client::EnqueueAndWatch(const v1::EnqueueRequest& job,
                                                WatchCallback on_message,
                                                std::chrono::milliseconds timeout) {
  return impl_->EnqueueAndWatch(job, std::move(on_message), timeout);
}

}  // namespace errand
