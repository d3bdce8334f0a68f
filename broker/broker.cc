#include "broker.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>

#include <asio/post.hpp>
#include <fstream>
#include <future>

#include "grpc/health/v1/health.pb.h"
#include "util/thread_name.h"
#include "service/malformed_request.h"

namespace errand {
namespace {

constexpr const char* kServices[] = {"errand.v1.Jobs", "errand.v1.Workers", "errand.v1.Events",
                                     "errand.v1.Admin"};

// TLS server credentials from the configured PEM files, or plaintext.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const Config& c) {
  if (c.tls_cert.empty()) return grpc::InsecureServerCredentials();
  auto read = [](const std::string& path, const char* flag) -> absl::StatusOr<std::string> {
    std::ifstream in(path, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) {
      return absl::InvalidArgumentError(std::string("cannot read ") + flag + " " + path);
    }
    if (text.find("-----BEGIN ") == std::string::npos) {
      return absl::InvalidArgumentError(std::string(flag) + " " + path +
                                        " is not a PEM file (or cannot be read)");
    }
    return text;
  };
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  auto cert = read(c.tls_cert, "--tls-cert");
  if (!cert.ok()) return cert.status();
  auto key = read(c.tls_key, "--tls-key");
  if (!key.ok()) return key.status();
  pair.cert_chain = std::move(*cert);
  pair.private_key = std::move(*key);
  grpc::SslServerCredentialsOptions opts(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  opts.pem_key_cert_pairs.push_back(std::move(pair));
  if (!c.tls_client_ca.empty()) {
    auto ca = read(c.tls_client_ca, "--tls-client-ca");
    if (!ca.ok()) return ca.status();
    opts.pem_root_certs = std::move(*ca);
    opts.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(opts);
}

// Runs `fn` in core and waits for it. Only for start and stop.
template <typename F>
void RunOnCore(util::CoreExecutor& core, F fn) {
  std::promise<void> done;
  core.Post([&] {
    fn();
    done.set_value();
  });
  done.get_future().wait();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Broker>> Broker::Start(const Config& config) {
  if (auto s = config.Validate(); !s.ok()) return s;
  if (auto s = config.ValidateSecurity(); !s.ok()) return s;
  auto credentials = ServerCredentials(config);
  if (!credentials.ok()) return credentials.status();
  std::unique_ptr<Broker> b(new Broker(config));
  if (!config.token_file.empty()) {
    auto auth = auth::Authenticator::Open(config.token_file);
    if (!auth.ok()) return auth.status();
    b->auth_ = std::move(*auth);
    b->ctx_.auth = b->auth_.get();
  } else if (!IsLoopbackAddress(config.listen)) {
    spdlog::warn("--insecure: serving {} with no token file; anyone who can reach it may call "
                 "every RPC", config.listen);
  }
  if (b->auth_ && config.tls_cert.empty() && !IsLoopbackAddress(config.listen)) {
    spdlog::warn("bearer tokens travel in clear text on {}: give --tls-cert and --tls-key",
                 config.listen);
  }

  auto store = store::JobStore::Open({config.data_dir, nullptr});
  if (!store.ok()) return store.status();
  b->store_ = std::move(*store);
  auto last_seq = b->store_->LastEventSeq();
  if (!last_seq.ok()) return last_seq.status();
  auto first_seq = b->store_->FirstEventSeq();
  if (!first_seq.ok()) return first_seq.status();

  commit::CommitPipeline::Options popts;
  popts.mode = config.commit;
  popts.sync_interval = config.sync_interval;
  popts.max_events = config.event_retention_count;
  popts.max_event_age = config.event_retention_age;
  // Core writes each commit group itself (no hand-off to a writer thread)
  // and answers unsynced writes at once; the syncer fsyncs.
  popts.write_on_post_thread = true;
  Broker* raw = b.get();
  // No deliver_post: the fsync thread hands the answers to what it fsynced
  // to `post` too, so it runs them in core itself when core is idle (queued
  // behind the closure running otherwise), as a gRPC thread does. Handing
  // every group's answers to the core thread cost a wake-up and 1.5 context
  // switches per job in sync mode, more than the next fsync loses by
  // starting after at most 32 closures: sync roundtrip 3,337-3,733 -> 3,800
  // jobs/s at 4 producers, paced p50 ~1.0 -> 0.86 ms.
  b->pipeline_ = std::make_unique<commit::CommitPipeline>(
      b->store_.get(), popts,
      [raw](std::function<void()> fn) { raw->exec_.Run(std::move(fn)); }, *last_seq,
      *first_seq);

  dispatch::EngineOptions eopts;
  eopts.default_lease = config.default_lease;
  eopts.default_max_attempts = config.default_max_attempts;
  eopts.retention = config.retention;
  eopts.idempotency_window = config.idempotency_window;
  eopts.max_queue_depth = config.max_queue_depth;
  {
    store::JobStore* store_ptr = b->store_.get();
    eopts.request_compaction = [store_ptr] { store_ptr->RequestJobsCompaction(); };
  }
  eopts.sync_by_default = config.commit == commit::SyncMode::kAlways;
  eopts.on_core = [raw](std::function<void()> fn) { raw->exec_.Run(std::move(fn)); };
  b->engine_ = std::make_unique<dispatch::Engine>(b->core_, b->clock_, *b->store_, b->pipeline_.get(), eopts,
                                                  b->store_->boot_epoch());
  if (auto s = b->engine_->Recover(); !s.ok()) return s;
  hub::EventHub::Options hopts;
  hopts.post_to_core = [raw](std::function<void()> fn) { raw->exec_.Post(std::move(fn)); };
  b->hub_ = std::make_unique<hub::EventHub>(b->core_, b->readers_, b->store_.get(),
                                            b->pipeline_.get(), hopts, *last_seq);
  b->pipeline_->SetEventSink(
      [raw](std::vector<v1::Event>&& events) {
        raw->hub_->Publish(events);
        raw->workers_.OnEvents(events);
      });

  b->pipeline_->Start();
  b->work_ = std::make_unique<asio::executor_work_guard<asio::io_context::executor_type>>(
      b->core_.get_executor());
  b->core_thread_ = std::thread([raw] {
    util::SetThreadName("errand-core");
    raw->core_.run();
  });
  RunOnCore(b->exec_, [raw] { raw->engine_->Start(); });
  // Start releases the jobs that were leased when the broker went down,
  // with writes of their own (fsynced in sync mode: they carry events).
  // Serve once those committed, so that the first reads see the jobs READY.
  b->AwaitCommitsAnswered(std::chrono::seconds(30));

  auto& ctx = b->ctx_;
  ctx.core = &b->core_;
  ctx.exec = &b->exec_;
  ctx.engine = b->engine_.get();
  ctx.pipeline = b->pipeline_.get();
  ctx.hub = b->hub_.get();
  ctx.workers = &b->workers_;
  ctx.worker_grace = config.worker_grace;
  ctx.clock = &b->clock_;
  ctx.limits.max_payload_bytes = config.max_payload_bytes;
  ctx.limits.max_batch = config.max_batch;
  ctx.limits.max_headers_bytes = config.max_headers_bytes;
  ctx.limits.max_result_bytes = config.max_result_bytes;
  ctx.sync_by_default = eopts.sync_by_default;
  ctx.sync_interval = config.sync_interval;
  ctx.started_at = b->clock_.Now();
  ctx.boot_epoch = b->store_->boot_epoch();
  ctx.version = ERRAND_VERSION;
  // Limits on open calls.
  {
    service::CallLimitOptions lopts;
    lopts.max_streams = config.max_streams;
    lopts.max_streams_per_connection = config.max_streams_per_connection;
    lopts.max_long_polls = config.max_long_polls;
    lopts.max_long_polls_per_connection = config.max_long_polls_per_connection;
    lopts.max_subscribers = config.max_subscribers;
    b->call_limiter_ = std::make_unique<service::CallLimiter>(lopts);
    ctx.call_limiter = b->call_limiter_.get();
  }
  b->jobs_service_ = std::make_unique<service::JobsService>(&ctx);
  b->workers_service_ = std::make_unique<service::WorkersService>(&ctx);
  b->events_service_ = std::make_unique<service::EventsService>(&ctx);
  b->admin_service_ = std::make_unique<service::AdminService>(&ctx);

  // Linking the health messages lets reflection describe grpc.health.v1.
  (void)grpc::health::v1::HealthCheckRequest::descriptor();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.listen, *credentials, &b->port_);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config.max_message_bytes));
  // Liveness of client connections. gRPC's server defaults ping nobody for
  // two hours and answer a client that pings more than once per 5 minutes
  // without data with GOAWAY too_many_pings, while an idle stream (a
  // worker's Connect on an empty queue, a Subscribe on a quiet topic) sends
  // no data for as long as it is idle.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS,
                             static_cast<int>(config.keepalive_time.count()));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             static_cast<int>(config.keepalive_timeout.count()));
  // Ping connections without calls too (they hold a socket each), and accept
  // clients' pings on them at the same rate.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Keep pinging a connection whose streams are idle: by default gRPC stops
  // after two pings until it sends data.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             static_cast<int>(config.keepalive_min_client_interval.count()));
  builder.RegisterService(b->jobs_service_.get());
  builder.RegisterService(b->workers_service_.get());
  builder.RegisterService(b->events_service_.get());
  builder.RegisterService(b->admin_service_.get());
  // Requests that fail to parse: INVALID_ARGUMENT naming the message type.
  builder.experimental().SetInterceptorCreators(service::MalformedRequestInterceptors());
  b->server_ = builder.BuildAndStart();
  if (!b->server_ || b->port_ == 0) {
    b->Stop().IgnoreError();
    return absl::UnavailableError("cannot listen on " + config.listen);
  }
  if (auto* health = b->server_->GetHealthCheckService()) {
    health->SetServingStatus(true);
    for (const char* s : kServices) health->SetServingStatus(s, true);
  }
  // Operators' HTTP endpoints.
  if (!config.http_listen.empty()) {
    auto ops = OpsHttp::Start(config, &b->ctx_, b->store_.get());
    if (!ops.ok()) {
      b->Stop().IgnoreError();
      return ops.status();
    }
    b->ops_http_ = std::move(*ops);
    if (!config.http_port_file.empty()) {
      std::string tmp = config.http_port_file + ".tmp";
      {
        std::ofstream out(tmp);
        out << b->ops_http_->port() << "\n";
      }
      std::rename(tmp.c_str(), config.http_port_file.c_str());
    }
    spdlog::info("HTTP /metrics, /healthz and /readyz on port {} (listen {})",
                 b->ops_http_->port(), config.http_listen);
  }
  if (!config.port_file.empty()) {
    std::string tmp = config.port_file + ".tmp";
    {
      std::ofstream out(tmp);
      out << b->port_ << "\n";
    }
    std::rename(tmp.c_str(), config.port_file.c_str());
  }
  spdlog::info("errand-broker {} serving on port {} (listen {}, data {}, commit {}{}, epoch {})",
               ERRAND_VERSION, b->port_, config.listen, config.data_dir,
               ctx.sync_by_default ? "sync" : "async",
               ctx.sync_by_default ? ""
                                   : ", sync every " +
                                         std::to_string(config.sync_interval.count()) + " ms",
               ctx.boot_epoch);
  spdlog::info("security: {}{}, {}", config.tls_cert.empty() ? "plaintext" : "TLS",
               config.tls_client_ca.empty() ? "" : " with client certificates (mutual TLS)",
               b->auth_ ? std::to_string(b->auth_->size()) + " bearer tokens from " +
                              config.token_file
                        : std::string("no bearer tokens"));
  return b;
}

void Broker::AwaitCommitsAnswered(std::chrono::steady_clock::duration limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  int idle_in_a_row = 0;
  while (idle_in_a_row < 2 && std::chrono::steady_clock::now() < until) {
    bool idle = false;
    RunOnCore(exec_, [this, &idle] { idle = pipeline_->Idle(); });
    idle_in_a_row = idle ? idle_in_a_row + 1 : 0;
    if (!idle) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

absl::Status Broker::Stop() {
  if (stopped_) return absl::OkStatus();
  stopped_ = true;
  if (server_) {
    if (auto* health = server_->GetHealthCheckService()) health->SetServingStatus(false);
  }
  // 1. Refuse new work and answer long polls.
  if (core_thread_.joinable()) {
    RunOnCore(exec_, [this] {
      ctx_.stopping = true;
      engine_->Shutdown();
      hub_->Shutdown(absl::UnavailableError("broker is shutting down"));
      workers_.Shutdown();
    });
  }
  // 2. Let in-flight calls finish: wait (up to the grace) until every write
  // submitted so far has committed and its answer went out from core.
  if (core_thread_.joinable()) AwaitCommitsAnswered(config_.shutdown_grace);
  // HTTP answered /readyz 503 ("shutting down") while in-flight calls
  // finished; it stops before core and the store, which its scrapes use.
  if (ops_http_) ops_http_->Stop();
  // 3. Stop the server. gRPC waits for every client connection to go away
  // before it completes a shutdown, and idle clients may keep theirs open, so
  // the remaining calls (idle streams, stragglers refused with UNAVAILABLE)
  // are cancelled after a short deadline.
  if (server_) {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    server_->Wait();
  }
  // 4. Commit and fsync whatever is still queued; results go to core.
  if (pipeline_) pipeline_->Stop();
  // 5. Drain core. No gRPC thread runs core any more; what is left runs on
  // the core thread.
  exec_.CloseInPlace();
  if (core_thread_.joinable()) {
    work_.reset();
    core_thread_.join();
  }
  readers_.join();
  absl::Status s = store_ ? store_->Close() : absl::OkStatus();
  auto st = pipeline_ ? pipeline_->stats() : commit::CommitPipeline::Stats{};
  spdlog::info("errand-broker stopped: {} writes in {} commits, {} fsyncs", st.writes, st.groups,
               st.fsyncs);
  return s;
}

absl::Status Broker::ReloadTokens() {
  if (!auth_) return absl::FailedPreconditionError("no --token-file to reload");
  return auth_->Reload();
}

Broker::~Broker() { Stop().IgnoreError(); }

}  // namespace errand
