#pragma once

// errand::Client: the producer and observer side of the errand broker.
//
// Thread-safety: every method may be called from any number of threads at
// once. All enqueues of one Client ride ONE long-lived Jobs.EnqueueStream:
// concurrent callers are multiplexed by request id, and requests that queue
// up while a write is in flight are packed into the next message. When the
// stream breaks it is reopened (with backoff) and every unanswered enqueue is
// sent again; each enqueue carries an idempotency key (the caller's, or a
// random one made by the library) so a resent enqueue never makes a second
// job.
//
// Callbacks (EnqueueAsync, EnqueueBatchAsync, EnqueueAndWatch) run on library
// threads: they must not block for long; they may call Client methods
// (except destroying the Client). Every callback is called exactly once,
// also when the Client is destroyed first (with CANCELLED).
//
// Ownership: Connect returns the owner. Worker and Subscription borrow a
// Client, which must outlive them. Destroying the Client cancels its calls
// and waits for its internal threads; it must not happen inside a callback.
//
// Errors are absl::Status values with the broker's codes (see the .proto
// comments): NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION, UNAVAILABLE
// (after retries), DEADLINE_EXCEEDED, CANCELLED. No exceptions.

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "errand/options.h"
#include "errand/v1/jobs.pb.h"

namespace grpc {
class Channel;
}  // namespace grpc

namespace errand {

// Broker-made job id: 16 lowercase hex digits.
using JobId = std::string;

class Client {
 public:
  using EnqueueCallback = std::function<void(absl::StatusOr<v1::EnqueueResponse>)>;
  using BatchCallback = std::function<void(absl::StatusOr<v1::EnqueueBatchResponse>)>;
  // Called for every message of EnqueueAndWatch: the acceptance first, then
  // each event of the job, the terminal one last.
  using WatchCallback = std::function<void(const v1::WatchJobResponse&)>;

  // Creates a client for options.address. With a non-zero connect_timeout,
  // fails with UNAVAILABLE when the broker cannot be reached in time;
  // INVALID_ARGUMENT for an empty address.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);

  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // --- Enqueue: three styles over the shared stream ----------------------
  // Blocking: returns the new job's id (or the original job's id when the
  // idempotency key matched one) once the broker committed it.
  absl::StatusOr<JobId> Enqueue(const v1::EnqueueRequest& job, const EnqueueOptions& opts = {});
  // Callback: `done` runs once with the broker's full answer.
  void EnqueueAsync(const v1::EnqueueRequest& job, EnqueueCallback done,
                    const EnqueueOptions& opts = {});
  // Future: ready with the broker's full answer.
  std::future<absl::StatusOr<v1::EnqueueResponse>> EnqueueFuture(const v1::EnqueueRequest& job,
                                                                  const EnqueueOptions& opts = {});

  // --- EnqueueBatch: atomic (one commit for all jobs, or none) -----------
  // Uses the unary Jobs.EnqueueBatch RPC, retried on UNAVAILABLE (each job
  // gets an idempotency key first). Returns the ids in request order.
  absl::StatusOr<std::vector<JobId>> EnqueueBatch(const std::vector<v1::EnqueueRequest>& jobs,
                                                  const EnqueueOptions& opts = {});
  void EnqueueBatchAsync(const std::vector<v1::EnqueueRequest>& jobs, BatchCallback done,
                         const EnqueueOptions& opts = {});
  std::future<absl::StatusOr<v1::EnqueueBatchResponse>> EnqueueBatchFuture(
      const std::vector<v1::EnqueueRequest>& jobs, const EnqueueOptions& opts = {});

  // --- Reading and waiting -----------------------------------------------
  // The job's committed state. NOT_FOUND for an unknown (or deleted) job.
  absl::StatusOr<v1::Job> Get(const JobId& id);
  // Long poll until the job is terminal (SUCCEEDED, DEAD, CANCELLED) and
  // returns it; DEADLINE_EXCEEDED when `timeout` passes first. Any timeout
  // is allowed (the library polls in rounds of at most a minute).
  absl::StatusOr<v1::Job> Wait(const JobId& id, std::chrono::milliseconds timeout);
  // Cancels the job; returns it after the cancel (CANCELLED, or LEASED with
  // cancel_requested). FAILED_PRECONDITION when it already finished;
  // UNIMPLEMENTED from a broker without CancelJob.
  absl::StatusOr<v1::Job> Cancel(const JobId& id, const std::string& reason = "");
  // Enqueues `job` and calls `on_message` for the acceptance and every event
  // of the job until its terminal event; blocks until then and returns the
  // terminal job. `timeout` zero means no limit. Retried on UNAVAILABLE
  // before the acceptance arrived (safe: idempotency key); a stream that
  // breaks afterwards is followed up with Wait, so the result is still the
  // terminal job (events in the gap are not reported).
  absl::StatusOr<v1::Job> EnqueueAndWatch(const v1::EnqueueRequest& job, WatchCallback on_message,
                                          std::chrono::milliseconds timeout = {});

  // The channel shared by this client's calls (and by Workers and
  // Subscriptions built on it). For tools and tests.
  std::shared_ptr<grpc::Channel> channel() const;
  const ClientOptions& options() const;

  class Impl;  // client/src: not part of the API.

 private:
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace errand
