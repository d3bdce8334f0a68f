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
// - `concurrency` executor threads run the handler, then report the outcome;
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
// Locks: write_mu_ (stream liveness and every write) is taken before the
// owner's mutex (free_slots / ReleaseSlot's `mutate`), never after; the
// reader never blocks on write_mu_ while a write could be waiting for it.
class ConnectTransport final : public WorkerTransport {
 public:
  struct Hooks {
    // Free handler slots; called under the write lock when saying hello.
    std::function<uint32_t()> free_slots;
    std::function<void(v1::Lease)> on_delivery;
    std::function<void(const std::string&)> on_cancel;
  };

  ConnectTransport(Client& client, const WorkerOptions& options, Hooks hooks)
      : stub_(v1::Workers::NewStub(client.channel())),
        rpc_timeout_(client.options().rpc_timeout),
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
        up = !closing_ && stream->Write(hello);
        if (up) {
          stream_ = stream.get();
          live_ = true;
          ++stream_gen_;
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
  // concurrently counts the freed slot exactly once. `granted_on`: the
  // stream on which the job's complete or fail already carried the slot's
  // credit (more_credits; 0: none); on that stream it is not granted again.
  // A stream opened since counted the slot as held in its hello, so it
  // gets the credit now.
  void ReleaseSlot(const std::function<void()>& mutate, uint64_t granted_on) {
    std::lock_guard<std::mutex> lock(write_mu_);
    mutate();
    if (!live_ || no_credits_) return;
    if (granted_on != 0 && granted_on == stream_gen_) return;
    v1::ConnectRequest req;
    req.set_credits(1);
    stream_->Write(req);  // A failure ends the stream; the next hello counts the slot.
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

  absl::Status Complete(const v1::Lease& lease, const std::string& result) override {
    return Complete(lease, result, nullptr);
  }
  absl::Status Fail(const v1::Lease& lease, const std::string& error,
                    bool non_retryable) override {
    return Fail(lease, error, non_retryable, nullptr);
  }
  // With `granted_on`, the message also grants the credit for the slot the
  // job frees (more_credits): the broker may deliver the next job with the
  // ack instead of waiting for a credit message after it. `*granted_on` is
  // set to the stream the credit went out on (see ReleaseSlot).
  absl::Status Complete(const v1::Lease& lease, const std::string& result,
                        uint64_t* granted_on) {
    v1::ConnectRequest req;
    auto* c = req.mutable_complete();
    c->set_job_id(lease.job().id());
    c->set_lease_token(lease.lease_token());
    c->set_result(result);
    return Request(std::move(req), granted_on).status();
  }
  absl::Status Fail(const v1::Lease& lease, const std::string& error, bool non_retryable,
                    uint64_t* granted_on) {
    v1::ConnectRequest req;
    auto* f = req.mutable_fail();
    f->set_job_id(lease.job().id());
    f->set_lease_token(lease.lease_token());
    f->set_error(error);
    f->set_non_retryable(non_retryable);
    return Request(std::move(req), granted_on).status();
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
  struct Pending {
    bool done = false;
    absl::Status status;
    v1::ConnectAck ack;
  };

  // Sends `req` on the live stream (waiting up to rpc_timeout for one) and
  // waits up to rpc_timeout for its ack. An ack with an error code becomes
  // that status; a broken stream UNAVAILABLE. With `granted_on`, `req`
  // carries one credit (unless credits have stopped) and `*granted_on` gets
  // the stream it was written on.
  absl::StatusOr<v1::ConnectAck> Request(v1::ConnectRequest req,
                                         uint64_t* granted_on = nullptr) {
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
      const bool grant = granted_on != nullptr && !no_credits_;
      if (grant) req.set_more_credits(1);
      {
        std::lock_guard<std::mutex> plock(pend_mu_);
        pending_[id] = p;
      }
      if (!stream_->Write(req)) {
        std::lock_guard<std::mutex> plock(pend_mu_);
        pending_.erase(id);
        return absl::UnavailableError("the Connect stream broke");
      }
      if (grant) *granted_on = stream_gen_;
    }
    std::unique_lock<std::mutex> plock(pend_mu_);
    if (!pend_cv_.wait_for(plock, rpc_timeout_, [&] { return p->done; })) {
      pending_.erase(id);
      return absl::DeadlineExceededError("no answer on the Connect stream");
    }
    if (!p->status.ok()) return p->status;
    return std::move(p->ack);
  }

  void Dispatch(v1::ConnectResponse* resp) {
    switch (resp->kind_case()) {
      case v1::ConnectResponse::kDelivery:
        hooks_.on_delivery(std::move(*resp->mutable_delivery()));
        return;
      case v1::ConnectResponse::kCancelJobId:
        hooks_.on_cancel(resp->cancel_job_id());
        return;
      case v1::ConnectResponse::kAck: {
        std::lock_guard<std::mutex> plock(pend_mu_);
        auto it = pending_.find(resp->ack().request_id());
        if (it == pending_.end()) return;  // timed out
        auto p = it->second;
        pending_.erase(it);
        if (resp->ack().error_code() != 0) {
          p->status = absl::Status(static_cast<absl::StatusCode>(resp->ack().error_code()),
                                   resp->ack().error_message());
        }
        p->ack = std::move(*resp->mutable_ack());
        p->done = true;
        pend_cv_.notify_all();
        return;
      }
      case v1::ConnectResponse::KIND_NOT_SET:
        return;
    }
  }

  void FailPending(const absl::Status& s) {
    std::lock_guard<std::mutex> plock(pend_mu_);
    for (auto& [id, p] : pending_) {
      p->status = s;
      p->done = true;
    }
    pending_.clear();
    pend_cv_.notify_all();
  }

  std::unique_ptr<v1::Workers::Stub> stub_;
  const milliseconds rpc_timeout_;
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
  uint64_t stream_gen_ = 0;  // counts the streams that went live

  std::mutex pend_mu_;
  std::condition_variable pend_cv_;
  std::map<uint64_t, std::shared_ptr<Pending>> pending_;
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
  // Complete or Fail, retried on UNAVAILABLE.
  absl::Status Report(const std::function<absl::Status()>& call);
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
  int held_ = 0;  // leases held: queued or running
  std::deque<v1::Lease> queue_;
  std::map<std::string, std::shared_ptr<Running>> running_;
  // Connect: cancel requests for queued jobs; deliveries after Stop().
  std::set<std::string> cancel_queued_;
  std::vector<v1::Lease> late_;
  WorkerStats stats_;
  std::thread poller_;
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
    absl::Status s;
    // Connect: the stream on which the outcome also granted this slot's
    // credit, so that the next job comes with the ack.
    uint64_t granted_on = 0;
    if (!abandoned) {
      if (result.ok()) {
        s = Report([&] {
          return connect_ != nullptr ? connect_->Complete(run->lease, *result, &granted_on)
                                     : transport_->Complete(run->lease, *result);
        });
      } else {
        std::string error = std::string(result.status().message());
        if (error.empty()) error = result.status().ToString();
        bool non_retryable = IsNonRetryable(result.status());
        s = Report([&] {
          return connect_ != nullptr
                     ? connect_->Fail(run->lease, error, non_retryable, &granted_on)
                     : transport_->Fail(run->lease, error, non_retryable);
        });
      }
    }
    auto release = [&] {
      std::lock_guard<std::mutex> lock(mu_);
      if (!abandoned) {
        if (result.ok() && s.ok()) ++stats_.completed;
        if (!result.ok() && s.ok()) ++stats_.failed;
        if (LostLease(s)) ++stats_.lost_leases;  // the broker redelivers it: ignore
      }
      --held_;
      cv_.notify_all();
    };
    if (connect_ != nullptr) {
      connect_->ReleaseSlot(release, granted_on);  // grants the freed slot unless granted
    } else {
      release();
    }
  }
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
    std::unique_lock<std::mutex> lock(mu_);
    all_done = cv_.wait_for(lock, options_.stop_timeout, [this] { return held_ == 0; });
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
