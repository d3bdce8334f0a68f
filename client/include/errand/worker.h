#pragma once

// errand::Worker: runs a handler for the jobs of one or more queues.
//
// The worker keeps at most `concurrency` jobs leased, runs one handler call
// per job on its own threads, extends each lease while its handler runs
// (heartbeat), forwards progress, and turns the handler's answer into
// Complete (a value) or Fail (an error status). Delivery is at least once: a
// handler may see a job again after a crash or a lost lease.
//
// Thread-safety: Stop() and stats() may be called from any thread (not from
// a handler). The handler is called concurrently from up to `concurrency`
// threads. JobContext is used by its handler call only (any thread it
// likes), and lives until the handler returns.
//
// Ownership: Start returns the owner; it borrows the Client, which must
// outlive the Worker. Destroying a running Worker calls Stop().
//
// Transport (WorkerOptions::transport): by default one Workers.Connect
// stream per Worker, granting one credit per free handler slot; the
// broker pushes deliveries and cancel requests, and Complete/Fail/Extend ride
// the same stream. A job's complete or fail also grants the credit for the
// slot it frees (ConnectRequest.more_credits), and the handler thread does
// not wait for its ack: it starts the next job as soon as one is there
// (the broker may push it with or before the ack). The outcome is counted
// in stats() when its ack arrives, and Stop() waits for the acks of
// finished jobs. A broken stream is reopened with backoff; jobs held from
// the old stream, and outcomes not yet acked, are still reported (with
// their tokens) on the new one. The unary Lease long poll +
// Complete/Fail/Extend remains as kUnary, where the handler thread waits
// for each answer before its next job.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "errand/client.h"
#include "errand/options.h"
#include "errand/v1/job.pb.h"

namespace errand {

// What a handler may do with its job while it runs.
class JobContext {
 public:
  virtual ~JobContext() = default;
  // Records progress; sent with the next lease extension.
  virtual void SetProgress(double fraction, const std::string& message) = 0;
  // True once a client cancelled the job (CancelJob), the lease was lost, or
  // Stop() gave up waiting for this handler. A handler should then stop
  // soon; whatever it returns is still reported (a lost lease is ignored by
  // the broker).
  virtual bool cancelled() const = 0;
  // True once Stop() was called: finish (or give up) soon.
  virtual bool stopping() const = 0;
  // The fencing token of this delivery.
  virtual uint64_t lease_token() const = 0;
};

// Returns the job's result (stored by Complete), or an error (stored by
// Fail; the job is retried while attempts remain, unless the status was
// made with NonRetryable()).
using JobHandler = std::function<absl::StatusOr<std::string>(const v1::Job&, JobContext&)>;

// An error status that makes the job DEAD at once (Fail with non_retryable).
absl::Status NonRetryable(absl::Status error);
bool IsNonRetryable(const absl::Status& error);

// Counters since Start.
struct WorkerStats {
  uint64_t leased = 0;
  // Completes and fails the broker accepted, counted when its answer
  // arrives.
  uint64_t completed = 0;
  uint64_t failed = 0;
  // Jobs failed back by Stop() after stop_timeout.
  uint64_t abandoned = 0;
  // Complete/Fail/Extend answered FAILED_PRECONDITION or NOT_FOUND.
  uint64_t lost_leases = 0;
};

class Worker {
 public:
  // Starts polling at once. INVALID_ARGUMENT for no queue, concurrency < 1
  // or a null handler.
  static absl::StatusOr<std::unique_ptr<Worker>> Start(Client& client, WorkerOptions options,
                                                       JobHandler handler);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Takes no new jobs, lets running handlers finish for up to
  // options.stop_timeout, then fails the rest back to the broker (error
  // "worker stopping") and returns once every handler returned and every
  // outcome reported was answered (a handler that ignores cancelled() for
  // more than another stop_timeout is left behind on a detached thread; an
  // outcome unanswered after that long is given up). Idempotent.
  void Stop();

  WorkerStats stats() const;

  class Impl;  // client/src: not part of the API.

 private:
  explicit Worker(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace errand
