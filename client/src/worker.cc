// errand::Worker over a pluggable transport:
// - ConnectTransport (default): one Workers.Connect stream, read by one
//   reader thread (deliveries, cancel pushes, acks matched by request_id);
//   writes (hello, credits, complete/fail/extend) under a writer mutex. The
//   sync API is used on purpose: no gRPC callback thread ever holds the
//   last reference to a ClientContext or channel.
// - UnaryTransport: Lease long poll, Complete, Fail, Extend.
// Above the transport:
// - deliveries come from the stream reader (Connect, one credit per free
//   slot) or from one poller thread that leases exactly as many jobs as
//   there are free slots (unary);
// - `concurrency` executor threads run the handler, then report the outcome:
//   on Connect without waiting for the ack (the stream's reader thread
//   counts it; one report thread sends again what a broken stream lost), so
//   the thread takes its next job at once; unary waits for the answer;
// - one heartbeat thread extends the leases of running jobs (a third of the
//   remaining lease, at most max_heartbeat_interval) and turns
//   cancel_requested / lost leases into JobContext::cancelled().
// Threads hold a shared_ptr to Impl, so a handler that ignores Stop() can be
// left behind on a detached thread without touching freed memory.

#include "errand/worker.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <map>
#include <set>
#include <thread>

#include "errand/v1/workers.grpc.pb.h"
#include "internal.h"

namespace errand {

using internal::ToAbsl;
using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr char kNonRetryablePayload[] = "type.errand.dev/non-retryable";

google::protobuf::Duration ToDuration(milliseconds d) {
  google::protobuf::Duration out;
  out.set_seconds(d.count() / 1000);
  out.set_nanos(static_cast<int32_t>((d.count() % 1000) * 1000000));
  return out;
}

std::chrono::system_clock::time_point ToTime(const google::protobuf::Timestamp& ts) {
  return std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(
          std::chrono::seconds(ts.seconds()) + std::chrono::nanoseconds(ts.nanos())));
}

// When to extend a lease whose deadline is `deadline`.
SteadyClock::time_point NextExtend(const google::protobuf::Timestamp& deadline, milliseconds max) {
  auto left = std::chrono::duration_cast<milliseconds>(ToTime(deadline) -
                                                       std::chrono::system_clock::now());
  auto wait = std::min(max, std::max(milliseconds(100), left / 3));
  return SteadyClock::now() + wait;
}

bool LostLease(const absl::Status& s) {
  return s.code() == absl::StatusCode::kFailedPrecondition ||
         s.code() == absl::StatusCode::kNotFound;
}

// What a worker needs from the broker. Thread-safe.
class WorkerTransport {
 public:
  virtual ~WorkerTransport() = default;
  // Blocks up to `wait` (plus the rpc timeout) for up to max_jobs leases.
  virtual absl::StatusOr<std::vector<v1::Lease>> Lease(int max_jobs, milliseconds wait) = 0;
  // Makes a Lease in flight return at once (CANCELLED).
  virtual void Interrupt() = 0;
  virtual absl::Status Complete(const v1::Lease& lease, const std::string& result) = 0;
  virtual absl::Status Fail(const v1::Lease& lease, const std::string& error,
                            bool non_retryable) = 0;
  virtual absl::StatusOr<v1::ExtendResponse> Extend(const v1::Lease& lease,
                                                    const v1::Progress* progress) = 0;
};

class UnaryTransport final : public WorkerTransport {
 public:
  UnaryTransport(Client& client, const WorkerOptions& options)
      : stub_(v1::Workers::NewStub(client.channel())),
        rpc_timeout_(client.options().rpc_timeout),
        options_(options) {}

  absl::StatusOr<std::vector<v1::Lease>> Lease(int max_jobs, milliseconds wait) override {
    v1::LeaseRequest req;
    for (const auto& q : options_.queues) req.add_queues(q);
    req.set_max_jobs(static_cast<uint32_t>(max_jobs));
    *req.mutable_wait() = ToDuration(wait);
    if (options_.lease_duration.count() > 0) {
      *req.mutable_lease_duration() = ToDuration(options_.lease_duration);
    }
    req.set_worker_id(options_.worker_id);
    grpc::ClientContext ctx;
    ctx.set_deadline(internal::After(wait + rpc_timeout_));
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (interrupted_) return absl::CancelledError("worker stopping");
      lease_ctx_ = &ctx;
    }
    v1::LeaseResponse resp;
    grpc::Status s = stub_->Lease(&ctx, req, &resp);
    {
      std::lock_guard<std::mutex> lock(mu_);
      lease_ctx_ = nullptr;
    }
    if (!s.ok()) return ToAbsl(s);
    return std::vector<v1::Lease>(resp.leases().begin(), resp.leases().end());
  }

  void Interrupt() override {
    std::lock_guard<std::mutex> lock(mu_);
    interrupted_ = true;
    if (lease_ctx_ != nullptr) lease_ctx_->TryCancel();
  }

  absl::Status Complete(const v1::Lease& lease, const std::string& result) override {
    v1::CompleteRequest req;
    req.set_job_id(lease.job().id());
    req.set_lease_token(lease.lease_token());
    req.set_result(result);
    v1::CompleteResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(internal::After(rpc_timeout_));
    return ToAbsl(stub_->Complete(&ctx, req, &resp));
  }

  absl::Status Fail(const v1::Lease& lease, const std::string& error,
                    bool non_retryable) override {
    v1::FailRequest req;
    req.set_job_id(lease.job().id());
    req.set_lease_token(lease.lease_token());
    req.set_error(error);
    req.set_non_retryable(non_retryable);
    v1::FailResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(internal::After(rpc_timeout_));
    return ToAbsl(stub_->Fail(&ctx, req, &resp));
  }

  absl::StatusOr<v1::ExtendResponse> Extend(const v1::Lease& lease,
                                            const v1::Progress* progress) override {
    v1::ExtendRequest req;
    req.set_job_id(lease.job().id());
    req.set_lease_token(lease.lease_token());
    if (options_.lease_duration.count() > 0) {
      *req.mutable_extend_by() = ToDuration(options_.lease_duration);
    }
    if (progress != nullptr) *req.mutable_progress() = *progress;
    v1::ExtendResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(internal::After(rpc_timeout_));
    grpc::Status s = stub_->Extend(&ctx, req, &resp);
    if (!s.ok()) return ToAbsl(s);
    return resp;
  }

 private:
  std::unique_ptr<v1::Workers::Stub> stub_;
  const milliseconds rpc_timeout_;
  const WorkerOptions options_;
  std::mutex mu_;
  grpc::ClientContext* lease_ctx_ = nullptr;
  bool interrupted_ = false;
};

// One Workers.Connect stream, reopened with backoff when it breaks.
//
// Threads: the reader (Run) reads deliveries, cancel pushes and acks, and
// runs the continuation of an outcome (ReportOutcome's `done`) when its ack
// arrives or its stream ends; the report thread (RunReports) sends again the
// outcomes a broken stream lost and gives up those without an ack in time;
// any thread writes (executors, heartbeat, Stop). A continuation never runs
// under one of this class's locks and must not block (it runs on the reader).
//
// Locks: write_mu_ (stream liveness and every write) is taken before the
// owner's mutex (free_slots / the `free_slot` and `mutate` callbacks) and
// before pend_mu_ (pending acks, outcomes to send again), never after; the
// owner's mutex and pend_mu_ are never held together. The reader never
// blocks on write_mu_ while a write could be waiting for it.
//
// Slots and credits. The owner has `concurrency` handler slots; free_slots
// counts those not taken by a job that is queued or running (an outcome
// waiting for its ack takes no slot: its job is still leased at the broker
// until the complete applies, but needs no handler thread). Invariant, for
// the live stream: slots taken + jobs in flight to the worker + credits the
// broker holds on it <= concurrency. It holds because every slot is granted
// on a stream by exactly one message, written under write_mu_ together with
// the change that frees the slot:
// - the hello of a stream grants every free slot (free_slots, read under
//   write_mu_); a stream's end forgets its credits, so the next hello
//   starts over from the slots free then;
// - a delivery uses one credit and takes one slot;
// - a slot freed while a stream is live is granted on it by the message that
//   frees it: the outcome's more_credits (ReportOutcome), or a credits
//   message (ReleaseSlot, a job given up without a report); freed while no
//   stream is live (or on a stream whose write failed), it is left to the
//   next hello.
// So an outcome sent again on a later stream carries no credit: that
// stream's hello counted its slot, or the slot is taken by the job its first
// credit brought (granting it again there would let the broker push one job
// more than the worker can hold, for good).
class ConnectTransport final : public WorkerTransport {
 public:
  struct Hooks {
    // Free handler slots; called under the write lock when saying hello.
    std::function<uint32_t()> free_slots;
    std::function<void(v1::Lease)> on_delivery;
    std::function<void(const std::string&)> on_cancel;
  };

  // The outcome's ack status (OK or the broker's error), or why it was given
  // up: UNAVAILABLE after retry.max_attempts attempts (each waits up to
  // rpc_timeout for a stream) or once Close() was called, DEADLINE_EXCEEDED
  // without an ack within rpc_timeout of a send.
  using OutcomeDone = std::function<void(const absl::Status&)>;

  ConnectTransport(Client& client, const WorkerOptions& options, Hooks hooks)
      : stub_(v1::Workers::NewStub(client.channel())),
        rpc_timeout_(client.options().rpc_timeout),
        retry_(client.options().retry),
        options_(options),
        hooks_(std::move(hooks)) {}

  // The reader loop: returns once Close() was called and the stream ended.
  void Run() {
    int failures = 0;
    for (;;) {
      auto ctx = std::make_unique<grpc::ClientContext>();
      std::unique_ptr<grpc::ClientReaderWriter<v1::ConnectRequest, v1::ConnectResponse>> stream;
      bool up = false;
      {
        std::lock_guard<std::mutex> lock(write_mu_);
        if (closing_) break;
        ctx_ = ctx.get();  // Close() may cancel it from now on
      }
      stream = stub_->Connect(ctx.get());
      {
        std::lock_guard<std::mutex> lock(write_mu_);
        v1::ConnectRequest hello;
        auto* h = hello.mutable_hello();
        for (const auto& q : options_.queues) h->add_queues(q);
        h->set_worker_id(options_.worker_id);
        if (options_.lease_duration.count() > 0) {
          *h->mutable_lease_duration() = ToDuration(options_.lease_duration);
        }
        h->set_credits(no_credits_ ? 0 : hooks_.free_slots());
        h->set_packed_acks(true);  // Dispatch reads `acks`
        up = !closing_ && stream->Write(hello);
        if (up) {
          stream_ = stream.get();
          live_ = true;
          SetStreamUp(true);
          write_cv_.notify_all();
        }
      }
      if (!up) ctx->TryCancel();  // closing, or the stream is already dead
      auto opened = SteadyClock::now();
      if (up) {
        v1::ConnectResponse resp;
        while (stream->Read(&resp)) {
          Dispatch(&resp);
          resp.Clear();
        }
      }
      {
        std::lock_guard<std::mutex> lock(write_mu_);
        live_ = false;
        SetStreamUp(false);
        stream_ = nullptr;
      }
      grpc::Status st = stream->Finish();
      {
        std::lock_guard<std::mutex> lock(write_mu_);
        ctx_ = nullptr;
      }
      FailPending(absl::UnavailableError("the Connect stream ended: " +
                                         (st.ok() ? std::string("OK") : st.error_message())));
      stream.reset();
      ctx.reset();
      if (up && SteadyClock::now() - opened > std::chrono::seconds(1)) failures = 0;
      ++failures;
      std::unique_lock<std::mutex> lock(write_mu_);
      if (closing_) break;
      write_cv_.wait_for(
          lock,
          internal::Backoff(options_.error_backoff, options_.max_error_backoff, 2, failures),
          [this] { return closing_; });
      if (closing_) break;
    }
    std::lock_guard<std::mutex> lock(write_mu_);
    finished_ = true;
    write_cv_.notify_all();
  }

  // No more credits from now on (Stop).
  void StopCredits() {
    std::lock_guard<std::mutex> lock(write_mu_);
    no_credits_ = true;
  }

  // Runs `mutate` (which frees a slot in the owner's state) under the write
  // lock, then grants one credit on the live stream, so that a hello sent
  // concurrently counts the freed slot exactly once. For a job whose outcome
  // is not reported (ReportOutcome grants the slot itself).
  void ReleaseSlot(const std::function<void()>& mutate) {
    std::lock_guard<std::mutex> lock(write_mu_);
    mutate();
    if (!live_ || no_credits_) return;
    v1::ConnectRequest req;
    req.set_credits(1);
    stream_->Write(req);  // A failure ends the stream; the next hello counts the slot.
  }

  // Reports a job's outcome (a complete or fail request, from
  // CompleteRequest/FailRequest) without waiting for its ack: runs
  // `free_slot` (which frees the job's slot in the owner's state) under the
  // write lock and writes `req` on the live stream with the slot's credit
  // (more_credits, unless credits have stopped), so the broker may push the
  // next job at once. Without a live stream it is sent by the report thread
  // once one is up. A stream that breaks before the ack makes it sent again
  // (with its token, without a credit: see the class comment) after the
  // retry policy's backoff, up to retry.max_attempts attempts, as Request's
  // callers retry UNAVAILABLE; so is an ack with UNAVAILABLE. `done` runs
  // once, on the reader or the report thread (or on this one when Close()
  // was called): see OutcomeDone.
  void ReportOutcome(v1::ConnectRequest req, const std::function<void()>& free_slot,
                     OutcomeDone done) {
    auto o = std::make_shared<Outcome>();
    o->req = std::move(req);
    o->done = std::move(done);
    {
      std::lock_guard<std::mutex> lock(write_mu_);
      free_slot();
      if (live_) {
        if (!no_credits_) o->req.set_more_credits(1);
        SendOutcome(o);
        return;
      }
      if (!closing_) {
        // The first attempt waits up to rpc_timeout for a stream.
        o->not_before = SteadyClock::now();
        o->stream_by = o->not_before + rpc_timeout_;
        std::lock_guard<std::mutex> pl(pend_mu_);
        retries_.push_back(o);
        WakeReports();
        return;
      }
    }
    o->done(absl::UnavailableError("worker stopping"));
  }

  // The report thread's loop (see ReportOutcome); returns after
  // StopReports(), which is called after Close() and Run() returned.
  void RunReports() {
    std::unique_lock<std::mutex> pl(pend_mu_);
    for (;;) {
      const auto now = SteadyClock::now();
      // Sleep at most rpc_timeout: an outcome sent meanwhile is not overdue
      // before that.
      auto wake_at = now + rpc_timeout_;
      std::vector<std::shared_ptr<Outcome>> overdue, due;
      for (auto it = pending_.begin(); it != pending_.end();) {
        const std::shared_ptr<Pending>& p = it->second;
        if (p->outcome != nullptr) {
          if (reports_stopped_ || p->ack_by <= now) {
            overdue.push_back(p->outcome);
            it = pending_.erase(it);
            continue;
          }
          wake_at = std::min(wake_at, p->ack_by);
        }
        ++it;
      }
      std::vector<std::shared_ptr<Outcome>> waiting;
      for (auto& o : retries_) {
        if (reports_stopped_ || (o->not_before <= now && (stream_up_ || o->stream_by <= now))) {
          due.push_back(std::move(o));
        } else {
          wake_at = std::min(wake_at, o->not_before > now ? o->not_before : o->stream_by);
          waiting.push_back(std::move(o));
        }
      }
      retries_.swap(waiting);
      if (!overdue.empty() || !due.empty()) {
        const absl::Status why = reports_stopped_
                                     ? absl::UnavailableError("worker stopping")
                                     : absl::DeadlineExceededError("no answer on the Connect stream");
        pl.unlock();
        for (auto& o : overdue) o->done(why);
        for (auto& o : due) Attempt(o);
        pl.lock();
        continue;
      }
      if (reports_stopped_) return;
      pend_cv_.wait_until(pl, wake_at, [this] { return wake_; });
      wake_ = false;
    }
  }

  // Ends RunReports: what still waits to be sent again is given up.
  void StopReports() {
    std::lock_guard<std::mutex> pl(pend_mu_);
    reports_stopped_ = true;
    WakeReports();
  }

  // Half-closes the stream and waits up to `timeout` for it to end
  // (cancelling it past that). Run() returns afterwards.
  void Close(milliseconds timeout) {
    std::unique_lock<std::mutex> lock(write_mu_);
    closing_ = true;
    no_credits_ = true;
    if (live_) {
      stream_->WritesDone();
      live_ = false;  // no more writes on it
      SetStreamUp(false);
    }
    write_cv_.notify_all();
    if (!write_cv_.wait_for(lock, timeout, [this] { return finished_; })) {
      if (ctx_ != nullptr) ctx_->TryCancel();
    }
  }

  absl::StatusOr<std::vector<v1::Lease>> Lease(int, milliseconds) override {
    return absl::UnimplementedError("Connect pushes deliveries");
  }
  void Interrupt() override {}

  // Blocking, without a credit (Stop's fail-backs).
  absl::Status Complete(const v1::Lease& lease, const std::string& result) override {
    return Request(CompleteRequest(lease, result)).status();
  }
  absl::Status Fail(const v1::Lease& lease, const std::string& error,
                    bool non_retryable) override {
    return Request(FailRequest(lease, error, non_retryable)).status();
  }

  static v1::ConnectRequest CompleteRequest(const v1::Lease& lease, const std::string& result) {
    v1::ConnectRequest req;
    auto* c = req.mutable_complete();
    c->set_job_id(lease.job().id());
    c->set_lease_token(lease.lease_token());
    c->set_result(result);
    return req;
  }
  static v1::ConnectRequest FailRequest(const v1::Lease& lease, const std::string& error,
                                        bool non_retryable) {
    v1::ConnectRequest req;
    auto* f = req.mutable_fail();
    f->set_job_id(lease.job().id());
    f->set_lease_token(lease.lease_token());
    f->set_error(error);
    f->set_non_retryable(non_retryable);
    return req;
  }

  absl::StatusOr<v1::ExtendResponse> Extend(const v1::Lease& lease,
                                            const v1::Progress* progress) override {
    v1::ConnectRequest req;
    auto* e = req.mutable_extend();
    e->set_job_id(lease.job().id());
    e->set_lease_token(lease.lease_token());
    if (options_.lease_duration.count() > 0) {
      *e->mutable_extend_by() = ToDuration(options_.lease_duration);
    }
    if (progress != nullptr) *e->mutable_progress() = *progress;
    absl::StatusOr<v1::ConnectAck> ack = Request(std::move(req));
    if (!ack.ok()) return ack.status();
    v1::ExtendResponse resp;
    *resp.mutable_deadline() = ack->deadline();
    resp.set_cancel_requested(ack->cancel_requested());
    return resp;
  }

 private:
  // An outcome reported by ReportOutcome. `req` changes only under write_mu_
  // (request_id, more_credits); the rest under pend_mu_ while it waits to
  // be sent again.
  struct Outcome {
    v1::ConnectRequest req;
    OutcomeDone done;
    int attempt = 1;                      // the attempt under way or next
    SteadyClock::time_point not_before;   // of the next attempt (backoff)
    SteadyClock::time_point stream_by;    // that attempt waits for a stream until then
  };

  // A request written on the stream, waiting for its ack: either a thread
  // waits for it (Request: done, status, ack) or it is an outcome (nobody
  // waits; the ack or the stream's end continues it).
  struct Pending {
    bool done = false;
    absl::Status status;
    v1::ConnectAck ack;
    std::shared_ptr<Outcome> outcome;
    SteadyClock::time_point ack_by;  // outcomes: given up without an ack then
  };

  // Under write_mu_ with a live stream: writes `o` with a new request id. A
  // failed write ends the stream; the reader's FailPending then hands the
  // outcome to the report thread like the others that stream lost.
  void SendOutcome(const std::shared_ptr<Outcome>& o) {
    const uint64_t id = ++next_request_id_;
    o->req.set_request_id(id);
    {
      std::lock_guard<std::mutex> pl(pend_mu_);
      auto p = std::make_shared<Pending>();
      p->outcome = o;
      p->ack_by = SteadyClock::now() + rpc_timeout_;
      pending_[id] = std::move(p);
    }
    // The ack (and `done`) may come before Write returns; `req` is only read
    // here, and `o` keeps it alive.
    stream_->Write(o->req);
  }

  // The report thread: one attempt to send `o` again.
  void Attempt(const std::shared_ptr<Outcome>& o) {
    absl::Status failed;
    bool closing = false;
    {
      std::lock_guard<std::mutex> lock(write_mu_);
      if (closing_) {
        closing = true;
        failed = absl::UnavailableError("worker stopping");
      } else if (live_) {
        o->req.clear_more_credits();  // this stream's hello counted the slot
        SendOutcome(o);
        return;
      } else if (SteadyClock::now() < o->stream_by) {
        std::lock_guard<std::mutex> pl(pend_mu_);
        retries_.push_back(o);  // the stream went down again meanwhile: wait on
        return;
      } else {
        failed = absl::UnavailableError("no Connect stream");
      }
    }
    {
      std::lock_guard<std::mutex> pl(pend_mu_);
      if (!closing && RetryLater(o, failed)) return;
    }
    o->done(failed);
  }

  // Under pend_mu_: schedules the next attempt of an outcome whose attempt
  // failed with `s`, as the unary Report retries: UNAVAILABLE only, after
  // BackoffFor(retry, attempt), up to retry.max_attempts. False: give up.
  bool RetryLater(const std::shared_ptr<Outcome>& o, const absl::Status& s) {
    if (s.code() != absl::StatusCode::kUnavailable || o->attempt >= retry_.max_attempts ||
        reports_stopped_) {
      return false;
    }
    o->not_before = SteadyClock::now() + internal::BackoffFor(retry_, o->attempt);
    o->stream_by = o->not_before + rpc_timeout_;
    ++o->attempt;
    retries_.push_back(o);
    WakeReports();
    return true;
  }

  // Under pend_mu_.
  void WakeReports() {
    wake_ = true;
    pend_cv_.notify_all();
  }

  // Under write_mu_: mirrors live_ for the report thread (under pend_mu_).
  void SetStreamUp(bool up) {
    std::lock_guard<std::mutex> pl(pend_mu_);
    stream_up_ = up;
    if (up) WakeReports();
  }

  // Sends `req` on the live stream (waiting up to rpc_timeout for one) and
  // waits up to rpc_timeout for its ack. An ack with an error code becomes
  // that status; a broken stream UNAVAILABLE.
  absl::StatusOr<v1::ConnectAck> Request(v1::ConnectRequest req) {
    auto p = std::make_shared<Pending>();
    uint64_t id;
    {
      std::unique_lock<std::mutex> lock(write_mu_);
      write_cv_.wait_for(lock, rpc_timeout_, [this] { return live_ || closing_; });
      if (!live_) {
        return absl::UnavailableError(closing_ ? "worker stopping" : "no Connect stream");
      }
      id = ++next_request_id_;
      req.set_request_id(id);
      {
        std::lock_guard<std::mutex> plock(pend_mu_);
        pending_[id] = p;
      }
      if (!stream_->Write(req)) {
        std::lock_guard<std::mutex> plock(pend_mu_);
        pending_.erase(id);
        return absl::UnavailableError("the Connect stream broke");
      }
    }
    std::unique_lock<std::mutex> plock(pend_mu_);
    if (!pend_cv_.wait_for(plock, rpc_timeout_, [&] { return p->done; })) {
      pending_.erase(id);
      return absl::DeadlineExceededError("no answer on the Connect stream");
    }
    if (!p->status.ok()) return p->status;
    return std::move(p->ack);
  }

  // Acks packed into the message (hello.packed_acks) come first, in order.
  void Dispatch(v1::ConnectResponse* resp) {
    for (v1::ConnectAck& ack : *resp->mutable_acks()) OnAck(&ack);
    switch (resp->kind_case()) {
      case v1::ConnectResponse::kDelivery:
        hooks_.on_delivery(std::move(*resp->mutable_delivery()));
        return;
      case v1::ConnectResponse::kCancelJobId:
        hooks_.on_cancel(resp->cancel_job_id());
        return;
      case v1::ConnectResponse::kAck:
        OnAck(resp->mutable_ack());
        return;
      case v1::ConnectResponse::KIND_NOT_SET:
        return;
    }
  }

  void OnAck(v1::ConnectAck* ack) {
    std::shared_ptr<Outcome> answered;
    absl::Status status;
    {
      std::lock_guard<std::mutex> plock(pend_mu_);
      auto it = pending_.find(ack->request_id());
      if (it == pending_.end()) return;  // timed out
      auto p = it->second;
      pending_.erase(it);
      if (ack->error_code() != 0) {
        status =
            absl::Status(static_cast<absl::StatusCode>(ack->error_code()), ack->error_message());
      }
      if (p->outcome != nullptr) {
        if (!RetryLater(p->outcome, status)) answered = std::move(p->outcome);
      } else {
        p->status = status;
        p->ack = std::move(*ack);
        p->done = true;
        pend_cv_.notify_all();
      }
    }
    if (answered != nullptr) answered->done(status);  // outside pend_mu_
  }

  // The stream ended: requests waiting for an ack fail with `s`; outcomes
  // are sent again on the next stream (or given up, see RetryLater).
  void FailPending(const absl::Status& s) {
    std::vector<std::shared_ptr<Outcome>> given_up;
    {
      std::lock_guard<std::mutex> plock(pend_mu_);
      for (auto& [id, p] : pending_) {
        if (p->outcome != nullptr) {
          if (!RetryLater(p->outcome, s)) given_up.push_back(std::move(p->outcome));
          continue;
        }
        p->status = s;
        p->done = true;
      }
      pending_.clear();
      pend_cv_.notify_all();
    }
    for (auto& o : given_up) o->done(s);
  }

  std::unique_ptr<v1::Workers::Stub> stub_;
  const milliseconds rpc_timeout_;
  const RetryPolicy retry_;
  const WorkerOptions options_;
  const Hooks hooks_;

  std::mutex write_mu_;
  std::condition_variable write_cv_;
  grpc::ClientReaderWriter<v1::ConnectRequest, v1::ConnectResponse>* stream_ = nullptr;
  grpc::ClientContext* ctx_ = nullptr;  // of the current stream, until Finish returned
  bool live_ = false;                   // stream_ takes writes
  bool closing_ = false;
  bool finished_ = false;
  bool no_credits_ = false;
  uint64_t next_request_id_ = 0;

  std::mutex pend_mu_;
  // Request's waiters and the report thread (wake_) wait on it.
  std::condition_variable pend_cv_;
  std::map<uint64_t, std::shared_ptr<Pending>> pending_;
  // Outcomes to send (again) by the report thread.
  std::vector<std::shared_ptr<Outcome>> retries_;
  bool stream_up_ = false;  // live_, for the report thread
  bool wake_ = false;
  bool reports_stopped_ = false;
};

class Context final : public JobContext {
 public:
  explicit Context(uint64_t token, const std::atomic<bool>* stopping)
      : token_(token), stopping_(stopping) {}
  void SetProgress(double fraction, const std::string& message) override {
    std::lock_guard<std::mutex> lock(mu_);
    progress_.set_fraction(fraction);
    progress_.set_message(message);
    progress_dirty_ = true;
  }
  bool cancelled() const override { return cancelled_.load(); }
  bool stopping() const override { return stopping_->load(); }
  uint64_t lease_token() const override { return token_; }

  void Cancel() { cancelled_.store(true); }
  // The progress to send, if any changed since the last call.
  bool TakeProgress(v1::Progress* out) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!progress_dirty_) return false;
    progress_dirty_ = false;
    *out = progress_;
    return true;
  }
  bool HasProgress() {
    std::lock_guard<std::mutex> lock(mu_);
    return progress_dirty_;
  }

 private:
  const uint64_t token_;
  const std::atomic<bool>* stopping_;
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;
  v1::Progress progress_;
  bool progress_dirty_ = false;
};

std::string DefaultWorkerId() {
  char host[256] = {0};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "worker");
  return std::string(host) + "-" + std::to_string(::getpid());
}

}  // namespace

absl::Status NonRetryable(absl::Status error) {
  error.SetPayload(kNonRetryablePayload, absl::Cord("1"));
  return error;
}

bool IsNonRetryable(const absl::Status& error) {
  return error.GetPayload(kNonRetryablePayload).has_value();
}

class Worker::Impl : public std::enable_shared_from_this<Worker::Impl> {
 public:
  Impl(Client& client, WorkerOptions options, JobHandler handler)
      : options_(std::move(options)),
        retry_(client.options().retry),
        rpc_timeout_(client.options().rpc_timeout),
        handler_(std::move(handler)) {
    if (options_.transport == WorkerOptions::Transport::kUnary) {
      transport_ = std::make_unique<UnaryTransport>(client, options_);
    } else {
      ConnectTransport::Hooks hooks;
      hooks.free_slots = [this] {
        std::lock_guard<std::mutex> lock(mu_);
        return static_cast<uint32_t>(std::max(0, options_.concurrency - held_));
      };
      hooks.on_delivery = [this](v1::Lease lease) { OnDelivery(std::move(lease)); };
      hooks.on_cancel = [this](const std::string& job_id) { OnCancel(job_id); };
      auto t = std::make_unique<ConnectTransport>(client, options_, std::move(hooks));
      connect_ = t.get();
      transport_ = std::move(t);
    }
  }

  void Start() {
    auto self = shared_from_this();
    if (connect_ != nullptr) {
      poller_ = std::thread([self] { self->connect_->Run(); });
      reporter_ = std::thread([self] { self->connect_->RunReports(); });
    } else {
      poller_ = std::thread([self] { self->PollLoop(); });
    }
    heartbeat_ = std::thread([self] { self->HeartbeatLoop(); });
    for (int i = 0; i < options_.concurrency; ++i) {
      executors_.emplace_back([self] { self->ExecLoop(); });
    }
  }

  void Stop();
  WorkerStats stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  WorkerOptions options_;

 private:
  struct Running {
    v1::Lease lease;
    std::shared_ptr<Context> ctx;
    SteadyClock::time_point next_extend;
    SteadyClock::time_point last_extend;
    bool done = false;
    bool abandoned = false;
    bool lost = false;
  };

  void PollLoop();
  // Connect: the stream reader's hooks.
  void OnDelivery(v1::Lease lease);
  void OnCancel(const std::string& job_id);
  void ExecLoop();
  void HeartbeatLoop();
  // Complete or Fail, retried on UNAVAILABLE; blocks until the answer.
  absl::Status Report(const std::function<absl::Status()>& call);
  // Connect: reports `run`'s outcome without waiting for the ack (frees its
  // slot and grants it in the same message).
  void ReportAsync(const Running& run, const absl::StatusOr<std::string>& result);
  // Under mu_: counts an outcome (a complete if `succeeded`, else a fail)
  // that the broker answered with `s`.
  void Count(bool succeeded, const absl::Status& s) {
    if (s.ok()) ++(succeeded ? stats_.completed : stats_.failed);
    if (LostLease(s)) ++stats_.lost_leases;  // the broker redelivers it: ignore
  }
  static std::string ErrorText(const absl::Status& error) {
    std::string text(error.message());
    return text.empty() ? error.ToString() : text;
  }
  bool SleepUnlessStopping(milliseconds d) {
    std::unique_lock<std::mutex> lock(mu_);
    return !cv_.wait_for(lock, d, [this] { return stopping_.load(); });
  }

  const RetryPolicy retry_;
  const milliseconds rpc_timeout_;
  const JobHandler handler_;
  std::unique_ptr<WorkerTransport> transport_;
  ConnectTransport* connect_ = nullptr;  // transport_, when it is a stream

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> stopping_{false};
  bool stopped_ = false;
  // Jobs taking a handler slot: queued or running (and, for a moment after
  // the handler returned, until the outcome is handed to the transport). On
  // Connect this is what the hello's credits and every credit grant count
  // (see ConnectTransport); unary: also while the outcome is reported.
  int held_ = 0;
  // Connect: outcomes handed to the transport whose ack is not in yet (their
  // jobs are still leased at the broker but take no slot). Stop waits for
  // them; WorkerStats counts each when its ack arrives.
  int reporting_ = 0;
  std::deque<v1::Lease> queue_;
  std::map<std::string, std::shared_ptr<Running>> running_;
  // Connect: cancel requests for queued jobs; deliveries after Stop().
  std::set<std::string> cancel_queued_;
  std::vector<v1::Lease> late_;
  WorkerStats stats_;
  std::thread poller_;
  std::thread reporter_;  // Connect: ConnectTransport::RunReports
  std::thread heartbeat_;
  std::vector<std::thread> executors_;
};

void Worker::Impl::PollLoop() {
  int failures = 0;
  while (!stopping_) {
    int free_slots;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || held_ < options_.concurrency; });
      if (stopping_) break;
      free_slots = options_.concurrency - held_;
    }
    absl::StatusOr<std::vector<v1::Lease>> leases =
        transport_->Lease(free_slots, options_.poll_wait);
    if (!leases.ok()) {
      if (stopping_) break;
      ++failures;
      SleepUnlessStopping(internal::Backoff(options_.error_backoff, options_.max_error_backoff, 2,
                                            failures));
      continue;
    }
    failures = 0;
    if (leases->empty()) continue;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& l : *leases) {
      ++held_;
      ++stats_.leased;
      queue_.push_back(std::move(l));
    }
    cv_.notify_all();
  }
}

void Worker::Impl::OnDelivery(v1::Lease lease) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) {
    // Granted before Stop(): Stop fails it back.
    late_.push_back(std::move(lease));
    return;
  }
  ++held_;
  ++stats_.leased;
  queue_.push_back(std::move(lease));
  cv_.notify_all();
}

void Worker::Impl::OnCancel(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = running_.find(job_id);
  if (it != running_.end()) {
    it->second->ctx->Cancel();
    return;
  }
  for (const auto& l : queue_) {
    if (l.job().id() == job_id) cancel_queued_.insert(job_id);
  }
}

absl::Status Worker::Impl::Report(const std::function<absl::Status()>& call) {
  for (int attempt = 1;; ++attempt) {
    absl::Status s = call();
    if (s.code() == absl::StatusCode::kUnavailable && attempt < retry_.max_attempts) {
      std::this_thread::sleep_for(internal::BackoffFor(retry_, attempt));
      continue;
    }
    return s;
  }
}

void Worker::Impl::ExecLoop() {
  for (;;) {
    auto run = std::make_shared<Running>();
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return !queue_.empty() || stopping_; });
      if (queue_.empty()) return;
      run->lease = std::move(queue_.front());
      queue_.pop_front();
      run->ctx = std::make_shared<Context>(run->lease.lease_token(), &stopping_);
      if (cancel_queued_.erase(run->lease.job().id()) > 0) run->ctx->Cancel();
      run->last_extend = SteadyClock::now();
      run->next_extend = NextExtend(run->lease.deadline(), options_.max_heartbeat_interval);
      running_[run->lease.job().id()] = run;
    }
    absl::StatusOr<std::string> result;
    try {
      result = handler_(run->lease.job(), *run->ctx);
    } catch (const std::exception& e) {
      result = absl::InternalError(std::string("handler threw: ") + e.what());
    } catch (...) {
      result = absl::InternalError("handler threw");
    }
    bool abandoned;
    {
      std::lock_guard<std::mutex> lock(mu_);
      run->done = true;
      abandoned = run->abandoned;
      running_.erase(run->lease.job().id());
    }
    if (connect_ != nullptr && !abandoned) {
      ReportAsync(*run, result);  // on to the next job
      continue;
    }
    absl::Status s;
    if (!abandoned) {  // unary: wait for the answer
      if (result.ok()) {
        s = Report([&] { return transport_->Complete(run->lease, *result); });
      } else {
        s = Report([&] {
          return transport_->Fail(run->lease, ErrorText(result.status()),
                                  IsNonRetryable(result.status()));
        });
      }
    }
    auto release = [&] {
      std::lock_guard<std::mutex> lock(mu_);
      if (!abandoned) Count(result.ok(), s);
      --held_;
      cv_.notify_all();
    };
    if (connect_ != nullptr) {
      connect_->ReleaseSlot(release);  // grants the freed slot
    } else {
      release();
    }
  }
}

void Worker::Impl::ReportAsync(const Running& run, const absl::StatusOr<std::string>& result) {
  v1::ConnectRequest req =
      result.ok() ? ConnectTransport::CompleteRequest(run.lease, *result)
                  : ConnectTransport::FailRequest(run.lease, ErrorText(result.status()),
                                                  IsNonRetryable(result.status()));
  const bool succeeded = result.ok();
  // Under the transport's write lock (lock order: write lock, then mu_).
  auto free_slot = [this] {
    std::lock_guard<std::mutex> lock(mu_);
    --held_;
    ++reporting_;
    cv_.notify_all();
  };
  // On the stream's reader or the report thread, or this one (see
  // ConnectTransport::OutcomeDone); never under a transport lock. Those
  // threads hold a reference to *this, and Stop() joins the first two.
  auto done = [this, succeeded](const absl::Status& s) {
    std::lock_guard<std::mutex> lock(mu_);
    Count(succeeded, s);
    --reporting_;
    cv_.notify_all();
  };
  connect_->ReportOutcome(std::move(req), free_slot, std::move(done));
}

void Worker::Impl::HeartbeatLoop() {
  for (;;) {
    std::vector<std::shared_ptr<Running>> due;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, milliseconds(50), [this] { return stopped_; });
      if (stopped_) return;
      auto now = SteadyClock::now();
      for (auto& [id, run] : running_) {
        if (run->done || run->abandoned || run->lost) continue;
        bool progress_due = run->ctx->HasProgress() && now - run->last_extend >= milliseconds(500);
        if (now >= run->next_extend || progress_due) due.push_back(run);
      }
    }
    for (auto& run : due) {
      v1::Progress progress;
      bool has_progress = run->ctx->TakeProgress(&progress);
      absl::StatusOr<v1::ExtendResponse> r =
          transport_->Extend(run->lease, has_progress ? &progress : nullptr);
      std::lock_guard<std::mutex> lock(mu_);
      run->last_extend = SteadyClock::now();
      if (r.ok()) {
        run->next_extend = NextExtend(r->deadline(), options_.max_heartbeat_interval);
        if (r->cancel_requested()) run->ctx->Cancel();
      } else if (LostLease(r.status())) {
        run->lost = true;
        run->ctx->Cancel();
      } else {
        run->next_extend = SteadyClock::now() + milliseconds(250);
      }
    }
  }
}

void Worker::Impl::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_ || stopping_) return;
    stopping_ = true;
    cv_.notify_all();
  }
  if (connect_ != nullptr) {
    connect_->StopCredits();  // the reader runs on: acks and cancels still come
  } else {
    transport_->Interrupt();
    if (poller_.joinable()) poller_.join();
  }
  std::vector<std::shared_ptr<Running>> abandoned;
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, options_.stop_timeout, [this] { return held_ == 0; });
    for (auto& [id, run] : running_) {
      if (run->done) continue;
      run->abandoned = true;
      run->ctx->Cancel();
      ++stats_.abandoned;
      abandoned.push_back(run);
    }
  }
  for (auto& run : abandoned) {
    Report([&] {
      return transport_->Fail(run->lease, "worker stopping: the handler did not finish in time",
                              false);
    }).IgnoreError();  // A lost lease is the broker's to redeliver.
  }
  bool all_done;
  auto fail_late = [this] {
    std::vector<v1::Lease> late;
    {
      std::lock_guard<std::mutex> lock(mu_);
      late.swap(late_);
    }
    for (const auto& lease : late) {
      Report([&] { return transport_->Fail(lease, "worker stopping: not started", false); })
          .IgnoreError();
    }
  };
  {
    // Handlers returned, and (Connect) the outcomes of the finished ones
    // are acked, so stats() is final; bounded like the first wait.
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, options_.stop_timeout, [this] { return held_ == 0 && reporting_ == 0; });
    all_done = held_ == 0;
    stopped_ = true;
    cv_.notify_all();
  }
  if (heartbeat_.joinable()) heartbeat_.join();
  if (connect_ != nullptr) {
    fail_late();
    // Half-close; the broker ends the stream (releasing, after its grace,
    // whatever it delivered after fail_late).
    connect_->Close(rpc_timeout_);
    if (poller_.joinable()) poller_.join();
    // After the reader: no outcome can be handed to the report thread now;
    // what it still holds is given up.
    connect_->StopReports();
    if (reporter_.joinable()) reporter_.join();
  }
  for (auto& t : executors_) {
    if (all_done) {
      t.join();
    } else {
      t.detach();  // a handler ignores cancelled(); it holds a ref to *this
    }
  }
  executors_.clear();
}

absl::StatusOr<std::unique_ptr<Worker>> Worker::Start(Client& client, WorkerOptions options,
                                                      JobHandler handler) {
  if (options.queues.empty()) return absl::InvalidArgumentError("WorkerOptions.queues is empty");
  if (options.concurrency < 1) {
    return absl::InvalidArgumentError("WorkerOptions.concurrency must be at least 1");
  }
  if (!handler) return absl::InvalidArgumentError("the job handler is empty");
  if (options.worker_id.empty()) options.worker_id = DefaultWorkerId();
  if (options.max_heartbeat_interval.count() <= 0) options.max_heartbeat_interval = milliseconds(5000);
  auto impl = std::make_shared<Impl>(client, std::move(options), std::move(handler));
  impl->Start();
  return std::unique_ptr<Worker>(new Worker(std::move(impl)));
}

Worker::Worker(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Worker::~Worker() { Stop(); }
void Worker::Stop() { impl_->Stop(); }
WorkerStats Worker::stats() const { return impl_->stats(); }

}  // namespace errand
