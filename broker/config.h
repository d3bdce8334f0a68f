#pragma once

#include <absl/status/status.h>
#include <absl/status/statusor.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "commit/commit_pipeline.h"

namespace errand {

// Everything the broker can be told at start. Each field's comment gives its
// flag and default; Validate() explains what is wrong with a bad value.
struct Config {
  // --listen: gRPC address. Default: 127.0.0.1:7600. Port 0 picks a free one.
  std::string listen = "127.0.0.1:7600";
  // --data-dir: RocksDB directory, created when missing. Default: ./errand-data.
  std::string data_dir = "errand-data";
  // --commit: kAlways ("sync") acknowledges after fsync; kInterval ("async")
  // after the WAL write, with a background fsync every sync_interval.
  // Default: sync.
  commit::SyncMode commit = commit::SyncMode::kAlways;
  // --sync-interval: async mode's longest unsynced window. Default: 100 ms.
  std::chrono::milliseconds sync_interval{100};
  // --default-lease: lease of jobs that name none. Default: 30s.
  std::chrono::microseconds default_lease{std::chrono::seconds(30)};
  // --default-max-attempts. Default: 5.
  uint32_t default_max_attempts = 5;
  // --max-payload-bytes. Default: 1 MiB.
  size_t max_payload_bytes = 1 << 20;
  // --max-batch: most jobs per EnqueueBatch. Default: 1000.
  size_t max_batch = 1000;
  // --max-message-bytes: largest gRPC message accepted. Default: 64 MiB.
  size_t max_message_bytes = 64 << 20;
  // --port-file: write the bound port here once serving (for scripts and
  // tests that listen on port 0). Default: none.
  std::string port_file;
  // --worker-grace: how long the leases of a dropped Workers.Connect stream
  // are kept before their jobs are retried. Default: 10s.
  std::chrono::milliseconds worker_grace{10000};
  // Connection liveness (HTTP/2 keepalive pings). A peer that vanished
  // without closing its connection (a pulled cable, a dead NAT entry) is
  // noticed within keepalive_time + keepalive_timeout; its Connect stream
  // then ends (leases released after --worker-grace) and its Subscribe
  // streams go.
  // --keepalive-time: the broker pings a connection that has been quiet this
  // long, idle streams included. Default: 30s.
  std::chrono::milliseconds keepalive_time{30000};
  // --keepalive-timeout: ...and closes it when the ping is not answered
  // within this. Default: 10s.
  std::chrono::milliseconds keepalive_timeout{10000};
  // --keepalive-min-client-interval: clients may ping this often while no
  // data flows (with or without open calls); a client pinging faster gets
  // GOAWAY "too_many_pings" after a few pings. Must not exceed the client
  // library's default ClientOptions::keepalive_time (10s). Default: 5s.
  std::chrono::milliseconds keepalive_min_client_interval{5000};
  // --shutdown-grace: how long SIGTERM waits for in-flight calls. Default: 5s.
  std::chrono::milliseconds shutdown_grace{5000};
  // --event-retention-count: the event log keeps at most this many events.
  // Default: 1,000,000.
  uint64_t event_retention_count = 1'000'000;
  // --event-retention-age: ...and only events younger than this. Default: 24h.
  std::chrono::microseconds event_retention_age{std::chrono::hours(24)};
  // --retention: how long finished jobs (SUCCEEDED, DEAD, CANCELLED) are kept
  // when they name no retention of their own. Default: 7 days.
  std::chrono::microseconds retention{std::chrono::hours(24 * 7)};
  // --idempotency-window: how long an idempotency key answers with its job.
  // Default: 24h.
  std::chrono::microseconds idempotency_window{std::chrono::hours(24)};
  // --max-queue-depth: most non-terminal jobs per queue; 0: no limit.
  // Default: 1,000,000.
  uint64_t max_queue_depth = 1'000'000;
  // --max-headers-bytes: largest sum of one job's header keys and values.
  // Default: 64 KiB.
  size_t max_headers_bytes = 64 << 10;
  // --max-result-bytes: largest result a worker may pass to Complete.
  // Default: 1 MiB.
  size_t max_result_bytes = 1 << 20;

  // Limits on calls that stay open (streams, long polls): a client that opens
  // more gets RESOURCE_EXHAUSTED naming the flag. "Per connection" is per
  // client HTTP/2 connection (the call's peer address).
  // --max-streams: open EnqueueStream, EnqueueAndWatch, Connect and Subscribe
  // streams in total. Default: 10000.
  size_t max_streams = 10000;
  // --max-streams-per-connection: ...on one connection. Default: 1000.
  size_t max_streams_per_connection = 1000;
  // --max-long-polls: WaitJob calls and Lease calls with a wait, in total.
  // Default: 10000.
  size_t max_long_polls = 10000;
  // --max-long-polls-per-connection: ...on one connection. Default: 1000.
  size_t max_long_polls_per_connection = 1000;
  // --max-subscribers: open Subscribe and EnqueueAndWatch streams in total.
  // Default: 10000.
  size_t max_subscribers = 10000;

  // --- Operating it: HTTP endpoints and logs ---
  // --http-listen: IP:PORT of the HTTP server for /metrics (Prometheus),
  // /healthz and /readyz; port 0 picks a free one; empty disables it.
  // Default: 127.0.0.1:7601.
  std::string http_listen = "127.0.0.1:7601";
  // --http-port-file: write the bound HTTP port here once serving.
  // Default: none.
  std::string http_port_file;
  // --http-timeout: how long an HTTP connection may take to send its request
  // and read the answer. Default: 10s.
  std::chrono::milliseconds http_timeout{10000};
  // --ready-min-free-bytes: /readyz reports not ready while the filesystem of
  // the data directory has less free space than this. Default: 64 MiB.
  uint64_t ready_min_free_bytes = 64 << 20;
  // --log-level: trace, debug, info, warn, error, critical or off.
  // Default: info.
  std::string log_level = "info";
  // --log-format: "text" for people, "json" (one object per line) for
  // machines. Default: text.
  std::string log_format = "text";

  absl::Status Validate() const;

  // --- Security: TLS and bearer tokens (README "Security") ---
  // --tls-cert, --tls-key: PEM certificate chain and private key; when set
  // the gRPC port speaks TLS only. Default: none (plaintext).
  std::string tls_cert;
  std::string tls_key;
  // --tls-client-ca: PEM CA certificates; when set every client must present
  // a certificate signed by one of them (mutual TLS). Needs --tls-cert.
  // Default: none.
  std::string tls_client_ca;
  // --token-file: bearer tokens with roles and queue patterns (format in
  // auth/token_table.h); re-read on SIGHUP. Default: none (no token checks).
  std::string token_file;
  // --insecure: allow a non-loopback --listen address without --token-file.
  // Default: false.
  bool insecure = false;

  // Checks the security fields: cert and key come together, the client CA
  // needs them, and without a token file only loopback addresses are
  // allowed unless `insecure`.
  absl::Status ValidateSecurity() const;
};

// True when a gRPC listen address ("127.0.0.1:7600", "[::1]:0",
// "localhost:7600", "unix:/path") can only be reached from this machine.
bool IsLoopbackAddress(const std::string& listen);

// Parses "250ms", "30s", "5m", "1h" (a bare number means `bare_unit`).
absl::StatusOr<std::chrono::microseconds> ParseDuration(const std::string& text,
                                                        std::chrono::microseconds bare_unit);

}  // namespace errand
