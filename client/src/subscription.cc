// errand::Subscription: one thread running Events.Subscribe with a blocking
// reader; on a retryable error it reconnects with backoff and resumes after
// the last delivered seq.

#include "errand/subscription.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <thread>

#include "errand/v1/events.grpc.pb.h"
#include "internal.h"

namespace errand {

namespace {

bool Retryable(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::UNKNOWN:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::OK:  // the server ended the stream: resume
      return true;
    default:
      return false;
  }
}

}  // namespace

class Subscription::Impl {
 public:
  Impl(Client& client, SubscriptionOptions options, EventCallback on_event, ErrorCallback on_error)
      : stub_(v1::Events::NewStub(client.channel())),
        options_(std::move(options)),
        on_event_(std::move(on_event)),
        on_error_(std::move(on_error)) {
    if (options_.start == SubscriptionOptions::Start::kAfterSeq) {
      last_seq_ = options_.after_seq;
      resume_ = true;
    }
    thread_ = std::thread([this] { Run(); });
  }

  ~Impl() { Stop(); }

  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      if (ctx_ != nullptr) ctx_->TryCancel();
      cv_.notify_all();
    }
    if (std::this_thread::get_id() == thread_.get_id()) return;  // from a callback
    std::lock_guard<std::mutex> join_lock(join_mu_);
    if (thread_.joinable()) thread_.join();
  }

  uint64_t last_seq() const { return last_seq_.load(); }
  absl::Status status() const {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }
  bool done() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stopping_ || finished_;
  }

 private:
  void Run() {
    int failures = 0;
    for (;;) {
      v1::SubscribeRequest req;
      for (const auto& q : options_.queues) req.add_queues(q);
      for (const auto& j : options_.job_ids) req.add_job_ids(j);
      for (const auto& t : options_.topics) req.add_topics(t);
      for (auto t : options_.types) req.add_types(t);
      if (resume_) {
        req.set_after_seq(last_seq_.load());
      } else if (options_.start == SubscriptionOptions::Start::kOldest) {
        req.set_from_oldest(true);
      }
      grpc::ClientContext ctx;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;
        ctx_ = &ctx;
      }
      auto reader = stub_->Subscribe(&ctx, req);
      v1::SubscribeResponse resp;
      while (reader->Read(&resp)) {
        const v1::Event& e = resp.event();
        if (resume_ && e.seq() <= last_seq_.load()) continue;  // already delivered
        failures = 0;
        if (on_event_) on_event_(e);
        last_seq_.store(e.seq());
        resume_ = true;
        if (stopping_.load()) break;
      }
      if (stopping_.load()) ctx.TryCancel();
      grpc::Status s = reader->Finish();
      {
        std::lock_guard<std::mutex> lock(mu_);
        ctx_ = nullptr;
        if (stopping_) return;
      }
      if (!Retryable(s.error_code())) {
        absl::Status err = internal::ToAbsl(s);
        {
          std::lock_guard<std::mutex> lock(mu_);
          status_ = err;
          finished_ = true;
        }
        if (on_error_) on_error_(err);
        return;
      }
      ++failures;
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_for(lock,
                       internal::Backoff(options_.initial_backoff, options_.max_backoff, 2.0,
                                         failures),
                       [this] { return stopping_.load(); })) {
        return;
      }
    }
  }

  std::unique_ptr<v1::Events::Stub> stub_;
  const SubscriptionOptions options_;
  const EventCallback on_event_;
  const ErrorCallback on_error_;
  std::atomic<uint64_t> last_seq_{0};
  bool resume_ = false;  // thread only
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> stopping_{false};
  bool finished_ = false;
  absl::Status status_;
  grpc::ClientContext* ctx_ = nullptr;
  std::mutex join_mu_;
  std::thread thread_;
};

absl::StatusOr<std::unique_ptr<Subscription>> Subscription::Start(Client& client,
                                                                  SubscriptionOptions options,
                                                                  EventCallback on_event,
                                                                  ErrorCallback on_error) {
  if (!on_event) return absl::InvalidArgumentError("the event callback is empty");
  return std::unique_ptr<Subscription>(new Subscription(
      std::make_unique<Impl>(client, std::move(options), std::move(on_event), std::move(on_error))));
}

Subscription::Subscription(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Subscription::~Subscription() = default;
void Subscription::Stop() { impl_->Stop(); }
uint64_t Subscription::last_seq() const { return impl_->last_seq(); }
absl::Status Subscription::status() const { return impl_->status(); }
bool Subscription::done() const { return impl_->done(); }

}  // namespace errand
