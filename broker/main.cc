// errand-broker: the durable job broker daemon.
#include <malloc.h>
#ifdef ERRAND_WITH_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif
#include <signal.h>
#include <spdlog/spdlog.h>

#include <absl/synchronization/mutex.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "broker.h"
#include "config.h"
#include "config_file.h"
#include "logging.h"

namespace {

bool ParseDurationFlag(const std::string& text, std::chrono::microseconds bare_unit,
                       const char* flag, std::chrono::microseconds* out) {
  auto d = errand::ParseDuration(text, bare_unit);
  if (!d.ok()) {
    std::fprintf(stderr, "errand-broker: %s: %s\n", flag, std::string(d.status().message()).c_str());
    return false;
  }
  *out = *d;
  return true;
}

// A duration flag whose bare numbers are seconds, into a Config field of any
// std::chrono duration (truncated to its unit).
template <class Duration>
bool ParseSecondsFlag(const std::string& text, const char* flag, Duration* out) {
  std::chrono::microseconds d;
  if (!ParseDurationFlag(text, std::chrono::seconds(1), flag, &d)) return false;
  *out = std::chrono::duration_cast<Duration>(d);
  return true;
}

// The allocator this binary uses, for the startup log.
std::string AllocatorName() {
#ifdef ERRAND_WITH_JEMALLOC
  // The settings in effect (tools/jemalloc/malloc_conf.cc, then MALLOC_CONF).
  const char* version = "?";
  size_t size = sizeof(version);
  mallctl("version", &version, &size, nullptr, 0);
  unsigned arenas = 0;
  size = sizeof(arenas);
  mallctl("opt.narenas", &arenas, &size, nullptr, 0);
  bool background = false;
  size = sizeof(background);
  mallctl("background_thread", &background, &size, nullptr, 0);
  return std::string("jemalloc ") + version + ", " + std::to_string(arenas) + " arenas, " +
         (background ? "background purging" : "no background purging");
#else
  return "glibc malloc";
#endif
}

}  // namespace

int main(int argc, char** argv) {
#ifndef ERRAND_WITH_JEMALLOC
  // Blocks of 256 KiB and more (RocksDB's memtable blocks, large messages)
  // get their own mappings, given back to the system when freed. glibc's
  // default raises this threshold after the first such free, and freed
  // memtables then leave holes of megabytes in the heap that a broker
  // holding a million jobs never gives back (~40 MB measured).
  mallopt(M_MMAP_THRESHOLD, 256 << 10);
#endif
  errand::Config config;
  CLI::App app{
      "errand-broker: a durable job broker with pub/sub.\n\n"
      "Producers enqueue jobs over gRPC (package errand.v1) and get an id back once the job is\n"
      "committed; workers lease jobs, and complete or fail them. Server reflection and\n"
      "grpc.health.v1.Health are served, so `grpcurl -plaintext ADDR list` works.\n"};
  std::string commit = "sync";
  std::string default_lease = "30s";
  std::string shutdown_grace = "5s";
  std::string worker_grace = "10s";
  std::string keepalive_time = "30s";
  std::string keepalive_timeout = "10s";
  std::string keepalive_min_client_interval = "5s";
  std::string retention = "168h";
  std::string event_retention_age = "24h";
  std::string idempotency_window = "24h";
  int64_t sync_interval_ms = 100;
  app.add_option("--listen", config.listen, "gRPC listen address (port 0 picks a free port)")
      ->capture_default_str();
  app.add_option("--data-dir", config.data_dir, "data directory, created when missing")
      ->capture_default_str();
  app.add_option("--commit", commit,
                 "sync: acknowledge a write after the WAL is fsynced (concurrent writes share\n"
                 "one fsync); async: acknowledge once the write is in the WAL; it survives a\n"
                 "process crash, but a power loss may lose writes acknowledged within the last\n"
                 "--sync-interval milliseconds")
      ->check(CLI::IsMember({"sync", "async"}))
      ->capture_default_str();
  app.add_option("--sync-interval", sync_interval_ms,
                 "async mode: fsync the WAL at least this often (milliseconds)")
      ->capture_default_str();
  app.add_option("--default-lease", default_lease,
                 "lease of jobs that name none (e.g. 30s, 5m)")
      ->capture_default_str();
  app.add_option("--default-max-attempts", config.default_max_attempts,
                 "attempts before a failing job becomes DEAD, for jobs that name none")
      ->capture_default_str();
  app.add_option("--max-payload-bytes", config.max_payload_bytes, "largest job payload accepted")
      ->capture_default_str();
  app.add_option("--max-batch", config.max_batch, "most jobs in one EnqueueBatch")
      ->capture_default_str();
  app.add_option("--max-message-bytes", config.max_message_bytes, "largest gRPC message accepted")
      ->capture_default_str();
  app.add_option("--port-file", config.port_file, "write the bound port to this file");
  app.add_option("--worker-grace", worker_grace,
                 "how long the leases of a dropped Workers.Connect stream are kept before\n"
                 "their jobs are retried (e.g. 10s)")
      ->capture_default_str();
  app.add_option("--keepalive-time", keepalive_time,
                 "ping a client connection that has been quiet this long (idle streams\n"
                 "included), to notice clients that vanished without closing it (e.g. 30s)")
      ->capture_default_str();
  app.add_option("--keepalive-timeout", keepalive_timeout,
                 "close the connection when the ping is not answered within this; its\n"
                 "Connect streams end (leases released after --worker-grace) and its\n"
                 "Subscribe streams go (e.g. 10s)")
      ->capture_default_str();
  app.add_option("--keepalive-min-client-interval", keepalive_min_client_interval,
                 "clients may ping this often while no data flows; faster ones get\n"
                 "GOAWAY too_many_pings. Keep it at or below the clients' keepalive time\n"
                 "(the client library's default is 10s)")
      ->capture_default_str();
  app.add_option("--shutdown-grace", shutdown_grace,
                 "on SIGTERM/SIGINT, how long in-flight calls may take to finish")
      ->capture_default_str();
  app.add_option("--event-retention-count", config.event_retention_count,
                 "the event log (Subscribe's resume window) keeps at most this many events")
      ->capture_default_str();
  app.add_option("--event-retention-age", event_retention_age,
                 "...and only events younger than this (e.g. 24h); older ones are trimmed\n"
                 "about once a second")
      ->capture_default_str();
  app.add_option("--retention", retention,
                 "how long finished jobs (SUCCEEDED, DEAD, CANCELLED) are kept before they are\n"
                 "deleted, unless a job names its own retention (e.g. 168h, 30m)")
      ->capture_default_str();
  app.add_option("--idempotency-window", idempotency_window,
                 "how long an enqueue's idempotency_key keeps answering with the original job\n"
                 "(same queue) instead of making a new one")
      ->capture_default_str();
  app.add_option("--max-queue-depth", config.max_queue_depth,
                 "most jobs not yet finished (SCHEDULED, READY, LEASED) per queue; enqueues\n"
                 "beyond it get RESOURCE_EXHAUSTED (0: no limit)")
      ->capture_default_str();
  app.add_option("--max-headers-bytes", config.max_headers_bytes,
                 "largest total size of one job's header keys and values")
      ->capture_default_str();
  app.add_option("--max-result-bytes", config.max_result_bytes,
                 "largest result a worker may pass to Complete")
      ->capture_default_str();
  // --- Security: TLS and bearer tokens ---
  app.add_option("--tls-cert", config.tls_cert,
                 "PEM certificate chain: serve TLS (with --tls-key) instead of plaintext");
  app.add_option("--tls-key", config.tls_key, "PEM private key of --tls-cert");
  app.add_option("--tls-client-ca", config.tls_client_ca,
                 "PEM CA certificates: require every client to present a certificate signed by\n"
                 "one of them (mutual TLS); needs --tls-cert");
  app.add_option("--token-file", config.token_file,
                 "bearer tokens and their roles, one per line (re-read on SIGHUP; a bad file\n"
                 "keeps the old tokens and logs why):\n"
                 "  <name> <roles> <token> [<queue patterns>]\n"
                 "roles: comma-separated producer, worker, subscriber, admin (admin may call\n"
                 "everything); patterns: comma-separated, '*' and '?' wildcards, e.g. billing-*\n"
                 "(absent: every queue). Clients send 'authorization: Bearer <token>'. Health\n"
                 "and reflection stay open. Without this flag every call is allowed");
  app.add_flag("--insecure", config.insecure,
               "allow a non-loopback --listen address without --token-file (otherwise the\n"
               "broker refuses to start)");

  // Limits on open calls: beyond them a call gets RESOURCE_EXHAUSTED naming the flag.
  app.add_option("--max-streams", config.max_streams,
                 "most open streams (EnqueueStream, EnqueueAndWatch, Connect, Subscribe) in\n"
                 "total")
      ->capture_default_str();
  app.add_option("--max-streams-per-connection", config.max_streams_per_connection,
                 "most open streams on one client connection")
      ->capture_default_str();
  app.add_option("--max-long-polls", config.max_long_polls,
                 "most waiting long polls (WaitJob, Lease with a wait) in total")
      ->capture_default_str();
  app.add_option("--max-long-polls-per-connection", config.max_long_polls_per_connection,
                 "most waiting long polls on one client connection")
      ->capture_default_str();
  app.add_option("--max-subscribers", config.max_subscribers,
                 "most open event subscribers (Subscribe and EnqueueAndWatch streams)")
      ->capture_default_str();

  // Operating it: HTTP endpoints and logs.
  app.add_option("--http-listen", config.http_listen,
                 "IP:PORT of the HTTP server for /metrics (Prometheus text format),\n"
                 "/healthz and /readyz (port 0 picks a free one; empty disables it)")
      ->capture_default_str();
  app.add_option("--http-port-file", config.http_port_file,
                 "write the bound HTTP port to this file");
  std::string http_timeout = "10s";
  app.add_option("--http-timeout", http_timeout,
                 "an HTTP connection that has not sent its request and read the answer\n"
                 "within this is closed (e.g. 10s, 500ms)")
      ->capture_default_str();
  app.add_option("--ready-min-free-bytes", config.ready_min_free_bytes,
                 "/readyz answers 503 while the data directory's filesystem has less free\n"
                 "space than this")
      ->capture_default_str();
  app.add_option("--log-level", config.log_level, "trace, debug, info, warn, error, critical or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
      ->capture_default_str();
  app.add_option("--log-format", config.log_format,
                 "text, or json for one JSON object per line (time, level, msg)")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();

  // A config file and ERRAND_* environment variables for every option,
  // wherever it is added.
  // ERRAND_BROKER_*, not ERRAND_*: errandctl and errand-worker read
  // ERRAND_TLS_CERT, ERRAND_TOKEN_FILE and more with client meanings, and they
  // run beside the broker (its container's health check, say).
  errand::ConfigLayers layers(app, "ERRAND_BROKER_");
  CLI11_PARSE(app, argc, argv);
  if (!ParseSecondsFlag(http_timeout, "--http-timeout", &config.http_timeout)) return 2;

  config.commit = commit == "sync" ? errand::commit::SyncMode::kAlways
                                   : errand::commit::SyncMode::kInterval;
  config.sync_interval = std::chrono::milliseconds(sync_interval_ms);
  if (!ParseSecondsFlag(default_lease, "--default-lease", &config.default_lease) ||
      !ParseSecondsFlag(shutdown_grace, "--shutdown-grace", &config.shutdown_grace) ||
      !ParseSecondsFlag(worker_grace, "--worker-grace", &config.worker_grace) ||
      !ParseSecondsFlag(keepalive_time, "--keepalive-time", &config.keepalive_time) ||
      !ParseSecondsFlag(keepalive_timeout, "--keepalive-timeout", &config.keepalive_timeout) ||
      !ParseSecondsFlag(keepalive_min_client_interval, "--keepalive-min-client-interval",
                        &config.keepalive_min_client_interval) ||
      !ParseSecondsFlag(event_retention_age, "--event-retention-age",
                        &config.event_retention_age) ||
      !ParseSecondsFlag(retention, "--retention", &config.retention) ||
      !ParseSecondsFlag(idempotency_window, "--idempotency-window", &config.idempotency_window)) {
    return 2;
  }
  if (auto s = config.Validate(); !s.ok()) {
    std::fprintf(stderr, "errand-broker: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (layers.print_requested()) {
    std::fputs(layers.Render().c_str(), stdout);
    return 0;
  }
  if (auto s = errand::ConfigureLogging(config.log_level, config.log_format); !s.ok()) {
    std::fprintf(stderr, "errand-broker: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  spdlog::info("effective config: {}", layers.Summary());
  spdlog::info("allocator: {}", AllocatorName());

  // absl's lock-order checks cost a graph lookup per lock; the tests keep
  // them, the broker does not need them.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // Block the stop signals in every thread; the main thread waits for them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGHUP);  // reloads --token-file
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto broker = errand::Broker::Start(config);
  if (!broker.ok()) {
    spdlog::error("cannot start: {}", broker.status().ToString());
    return 1;
  }
  int sig = 0;
  while (sigwait(&stop_signals, &sig) == 0 && sig == SIGHUP) {
    absl::Status r = (*broker)->ReloadTokens();
    if (r.ok()) {
      spdlog::info("SIGHUP: reloaded {}", config.token_file);
    } else {
      spdlog::error("SIGHUP: keeping the current tokens: {}", r.ToString());
    }
  }
  spdlog::info("received {}, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  absl::Status s = (*broker)->Stop();
  if (!s.ok()) {
    spdlog::error("shutdown: {}", s.ToString());
    return 1;
  }
  spdlog::info("shutdown complete");
  return 0;
}
