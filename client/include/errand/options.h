#pragma once

// Option structs of the errand client library, one per concern. Plain values:
// copy them freely. Every field says what it means and its default.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "errand/v1/job.pb.h"

namespace errand {

// How the library retries a call that failed with UNAVAILABLE (the broker is
// down, restarting or shutting down). Retrying enqueues is safe because the
// library gives every enqueue an idempotency key (see
// ClientOptions::auto_idempotency_key).
struct RetryPolicy {
  // Attempts per call, the first one included; 1 disables retries.
  // Default: 10.
  int max_attempts = 10;
  // Wait before the second attempt. Default: 50ms.
  std::chrono::milliseconds initial_backoff{50};
  // Upper bound of any wait. Default: 2s.
  std::chrono::milliseconds max_backoff{2000};
  // Growth factor of the wait per attempt. Default: 2.
  double multiplier = 2.0;
};

// How a Client reaches the broker and bounds its calls.
struct ClientOptions {
  // "host:port" of the broker (plaintext gRPC). Default: "127.0.0.1:7600".
  std::string address = "127.0.0.1:7600";
  // Connect() fails with UNAVAILABLE when no connection is up within this
  // time; zero connects lazily (Connect never fails for an unreachable
  // broker). Default: 5s.
  std::chrono::milliseconds connect_timeout{5000};
  // Deadline of each unary call (Get, Cancel, EnqueueBatch...), per attempt.
  // Default: 10s.
  std::chrono::milliseconds rpc_timeout{10000};
  // How long an enqueue may wait for its answer, retries included, unless
  // EnqueueOptions::timeout says otherwise. Default: 30s.
  std::chrono::milliseconds enqueue_timeout{30000};
  // Retries on UNAVAILABLE, for unary calls and for enqueues whose stream
  // broke. Default: see RetryPolicy.
  RetryPolicy retry;
  // Give every enqueue without an idempotency_key a random 128-bit key, so
  // that a retried enqueue never makes a second job. Turning it off makes
  // retries after a broken stream possibly duplicate jobs. Default: true.
  bool auto_idempotency_key = true;
  // Most enqueues packed into one EnqueueStream message. Default: 1000.
  size_t max_pack = 1000;

  // --- Connection liveness (HTTP/2 keepalive pings) ---
  // A connection that went silently dead (no FIN, no RST: a pulled cable, a
  // dead NAT entry, a partition) is noticed within keepalive_time +
  // keepalive_timeout, also while only idle streams are open (a Worker
  // waiting on an empty queue, a Subscription on a quiet topic, a Wait long
  // poll); the calls on it fail with UNAVAILABLE and Worker, Subscription
  // and enqueues reconnect and go on. Keep keepalive_time at or above the
  // broker's --keepalive-min-client-interval (default 5s): a client pinging
  // faster than that is disconnected with GOAWAY "too_many_pings".
  // Connect() fails with INVALID_ARGUMENT naming a field out of range.
  // Ping the broker when the connection has been quiet this long, with or
  // without data on the open streams; 1s to 24h. Default: 10s.
  std::chrono::milliseconds keepalive_time{10000};
  // Close the connection when a ping is not answered within this; 100ms to
  // 1h. keepalive_time + keepalive_timeout (20s by default) stays below
  // enqueue_timeout, so an enqueue caught on a dead connection is sent again
  // on a new one before it times out. Default: 10s.
  std::chrono::milliseconds keepalive_timeout{10000};

  // --- Security: TLS and the bearer token (README "Security") ---
  // Speak TLS to the broker (its --tls-cert). Setting any tls_*_file below
  // implies it. Connect() fails with INVALID_ARGUMENT naming a file it
  // cannot read. Default: false (plaintext).
  bool tls = false;
  // PEM CA certificates trusted to sign the broker's certificate.
  // Default: "" (the system's trusted roots).
  std::string tls_ca_file;
  // PEM client certificate chain and its private key, for a broker that
  // requires client certificates (its --tls-client-ca). Both or neither.
  // Default: "".
  std::string tls_cert_file;
  std::string tls_key_file;
  // The name the broker's certificate must carry, when it is not the host
  // part of `address` (e.g. connecting by IP to a certificate for a DNS
  // name). Default: "" (the host of `address`).
  std::string tls_server_name;
  // Bearer token sent with every call as "authorization: Bearer <token>",
  // for a broker with --token-file. Without TLS it travels in clear text:
  // use it in plaintext only on loopback. Default: "" (none).
  std::string token;
};

// Per-call enqueue options.
struct EnqueueOptions {
  // Overrides ClientOptions::enqueue_timeout when non-zero. Default: 0.
  std::chrono::milliseconds timeout{0};
};

// What a Worker serves and how.
struct WorkerOptions {
  // Queues to take jobs from (at least one). Default: none.
  std::vector<std::string> queues;
  // Handlers running at once; the worker never holds more leases than this.
  // Default: 1.
  int concurrency = 1;
  // Recorded in each job's attempt history. Default: "" (the library makes
  // "<hostname>-<pid>").
  std::string worker_id;
  // Lease length asked for each job; zero takes each job's own. Default: 0.
  std::chrono::milliseconds lease_duration{0};
  // How the worker talks to the broker.
  enum class Transport {
    // One Workers.Connect stream per Worker: the broker pushes jobs while
    // the worker has free handler slots (credits) and pushes cancel
    // requests; Complete/Fail/Extend ride the same stream. When the worker
    // vanishes, the broker releases its jobs after its --worker-grace
    // instead of the full lease. The stream is reopened (with
    // error_backoff) when it breaks.
    kConnect,
    // The unary Workers.Lease long poll (poll_wait) and unary
    // Complete/Fail/Extend, for brokers or proxies without bidi streams.
    kUnary,
  };
  // Default: kConnect.
  Transport transport = Transport::kConnect;
  // kUnary: how long one lease poll waits for jobs before asking again.
  // Default: 5s.
  std::chrono::milliseconds poll_wait{5000};
  // The lease of a running job is extended when a third of its remaining
  // time has passed, and at least this often (which is also how soon a
  // cancel request is seen). Default: 5s.
  std::chrono::milliseconds max_heartbeat_interval{5000};
  // Stop(): how long running handlers may take to finish before their jobs
  // are failed back to the broker (and JobContext::cancelled() turns true).
  // Default: 10s.
  std::chrono::milliseconds stop_timeout{10000};
  // Backoff between lease polls (kUnary) or stream reconnections (kConnect)
  // after an error (broker down). Default: 100ms growing to 2s.
  std::chrono::milliseconds error_backoff{100};
  std::chrono::milliseconds max_error_backoff{2000};
};

// What a Subscription receives and from where it starts.
struct SubscriptionOptions {
  enum class Start {
    // Events committed after the subscription reached the broker.
    kNow,
    // The oldest event the broker retains.
    kOldest,
    // Events after `after_seq`.
    kAfterSeq,
  };
  // Filters (see events.proto): within a list any entry matches, lists
  // combine with AND; empty lists match everything. Default: none.
  std::vector<std::string> queues;
  std::vector<std::string> job_ids;
  std::vector<std::string> topics;
  std::vector<v1::EventType> types;
  // Where the first connection starts; every reconnection resumes after the
  // last delivered event. Default: kNow.
  Start start = Start::kNow;
  // For Start::kAfterSeq. Default: 0.
  uint64_t after_seq = 0;
  // Backoff between reconnection attempts: grows from initial to max,
  // reset by every delivered event. Default: 50ms to 2s.
  std::chrono::milliseconds initial_backoff{50};
  std::chrono::milliseconds max_backoff{2000};
};

}  // namespace errand
