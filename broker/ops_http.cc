#include "ops_http.h"

#include <sys/statvfs.h>

#include <future>

#include "metrics/prometheus.h"

namespace errand {
namespace {

// How long a scrape waits for core before it gives up.
constexpr std::chrono::seconds kCoreTimeout{5};

double Seconds(const google::protobuf::Duration& d) {
  return static_cast<double>(d.seconds()) + static_cast<double>(d.nanos()) / 1e9;
}

}  // namespace

absl::StatusOr<std::unique_ptr<OpsHttp>> OpsHttp::Start(const Config& config,
                                                        const service::ServiceContext* ctx,
                                                        store::JobStore* store) {
  std::unique_ptr<OpsHttp> ops(new OpsHttp(config, ctx, store));
  OpsHttp* raw = ops.get();
  std::map<std::string, http::HttpServer::Handler> routes;
  routes["/metrics"] = [raw] { return raw->Metrics(); };
  routes["/healthz"] = [] { return http::Response{200, "text/plain; charset=utf-8", "ok\n"}; };
  routes["/readyz"] = [raw] { return raw->Readyz(); };
  http::HttpServer::Options options;
  options.timeout = config.http_timeout;
  auto server = http::HttpServer::Start(config.http_listen, std::move(routes), options);
  if (!server.ok()) {
    return absl::Status(server.status().code(),
                        "--http-listen: " + std::string(server.status().message()));
  }
  ops->server_ = std::move(*server);
  return ops;
}

bool OpsHttp::GatherOnCore(metrics::BrokerSample* s, bool* stopping) {
  struct Core {
    std::vector<v1::QueueStats> queues;
    std::map<std::string, dispatch::Engine::LeaseTotals> leases;
    hub::EventHub::Stats hub;
    size_t lease_waiters = 0, wait_job_waiters = 0;
    bool stopping = false;
  };
  // Shared with the posted closure, which may run after a timed-out wait.
  auto promise = std::make_shared<std::promise<Core>>();
  auto future = promise->get_future();
  const service::ServiceContext* ctx = ctx_;
  const bool full = s != nullptr;
  ctx_->OnCore([ctx, promise, full] {
    Core c;
    c.stopping = ctx->stopping;
    if (!full) {  // readiness only
      promise->set_value(std::move(c));
      return;
    }
    c.queues = ctx->engine->ListQueues();
    c.leases = ctx->engine->LeaseTotalsByQueue();
    c.hub = ctx->hub->stats();
    c.lease_waiters = ctx->engine->waiting_leases();
    c.wait_job_waiters = ctx->engine->waiting_jobs();
    promise->set_value(std::move(c));
  });
  if (future.wait_for(kCoreTimeout) != std::future_status::ready) return false;
  Core c = future.get();
  *stopping = c.stopping;
  if (!full) return true;
  for (const v1::QueueStats& q : c.queues) {
    metrics::QueueSample m;
    m.queue = q.queue();
    m.scheduled = q.scheduled();
    m.ready = q.ready();
    m.leased = q.leased();
    m.succeeded = q.succeeded();
    m.dead = q.dead();
    m.cancelled = q.cancelled();
    m.paused = q.paused();
    m.oldest_ready_age_seconds = Seconds(q.oldest_ready_age());
    m.enqueued_total = q.total_enqueued();
    m.succeeded_total = q.total_succeeded();
    m.failed_total = q.total_failed();
    m.dead_total = q.total_dead();
    if (auto it = c.leases.find(q.queue()); it != c.leases.end()) {
      m.leased_total = it->second.leased;
      m.lease_expired_total = it->second.expired;
    }
    s->queues.push_back(std::move(m));
  }
  s->subscribers = c.hub.subscribers;
  s->subscribers_catching_up = c.hub.catching_up;
  s->subscriber_lag_max = c.hub.max_lag;
  s->subscriber_lag_total = c.hub.total_lag;
  s->subscribers_cut_off_total = c.hub.cut_off;
  s->lease_waiters = c.lease_waiters;
  s->wait_job_waiters = c.wait_job_waiters;
  return true;
}

absl::Status OpsHttp::Readiness(bool core_answered, bool stopping) const {
  if (store_ == nullptr) return absl::UnavailableError("the store is not open");
  if (!core_answered) return absl::UnavailableError("the core thread did not answer in time");
  if (stopping) return absl::UnavailableError("shutting down");
  if (ctx_->pipeline->write_failing()) {
    return absl::UnavailableError("the last commit failed; writes are refused");
  }
  struct statvfs vfs{};
  if (::statvfs(config_.data_dir.c_str(), &vfs) != 0) {
    return absl::UnavailableError("cannot stat the data directory's filesystem");
  }
  uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  if (free_bytes < config_.ready_min_free_bytes) {
    return absl::ResourceExhaustedError("disk nearly full: " + std::to_string(free_bytes) +
                                        " bytes free, --ready-min-free-bytes is " +
                                        std::to_string(config_.ready_min_free_bytes));
  }
  return absl::OkStatus();
}

http::Response OpsHttp::Readyz() {
  bool stopping = false;
  bool answered = GatherOnCore(nullptr, &stopping);
  absl::Status s = Readiness(answered, stopping);
  if (s.ok()) return http::Response{200, "text/plain; charset=utf-8", "ready\n"};
  return http::Response{503, "text/plain; charset=utf-8",
                        "not ready: " + std::string(s.message()) + "\n"};
}

http::Response OpsHttp::Metrics() {
  metrics::BrokerSample s;
  bool stopping = false;
  if (!GatherOnCore(&s, &stopping)) {
    return http::Response{503, "text/plain; charset=utf-8",
                          "the core thread did not answer in time\n"};
  }
  s.ready = Readiness(true, stopping).ok();
  s.version = ctx_->version;
  s.sync_commit = ctx_->sync_by_default;
  s.sync_interval_seconds = std::chrono::duration<double>(ctx_->sync_interval).count();
  s.start_time_seconds =
      std::chrono::duration<double>(ctx_->started_at.time_since_epoch()).count();
  const util::CoreExecutor::Counts core = ctx_->exec->counts();
  s.core_in_place = core.in_place;
  s.core_on_core_thread = core.core_thread;
  const commit::CommitPipeline* p = ctx_->pipeline;
  auto st = p->stats();
  s.commit_writes = st.writes;
  s.commit_groups = st.groups;
  s.fsyncs = st.fsyncs;
  s.commit_failures = st.failed;
  s.group_sizes = p->group_sizes().Read();
  s.fsync_seconds = p->fsync_seconds().Read();
  s.event_head_seq = p->last_event_seq();
  s.event_first_seq = p->first_event_seq();
  s.event_retention_max_events = p->options().max_events;
  s.event_retention_max_age_seconds =
      std::chrono::duration<double>(p->options().max_event_age).count();
  rocksdb::DB* db = store_->db();
  const std::pair<const char*, rocksdb::ColumnFamilyHandle*> cfs[] = {
      {"default", db->DefaultColumnFamily()},
      {"jobs", store_->jobs_cf()},
      {"events", store_->events_cf()}};
  for (const auto& [name, cf] : cfs) {
    metrics::ColumnFamilySample c;
    c.name = name;
    db->GetIntProperty(cf, "rocksdb.total-sst-files-size", &c.sst_bytes);
    db->GetIntProperty(cf, "rocksdb.size-all-mem-tables", &c.memtable_bytes);
    db->GetIntProperty(cf, "rocksdb.estimate-pending-compaction-bytes",
                       &c.pending_compaction_bytes);
    s.column_families.push_back(std::move(c));
  }
  metrics::ReadProcessMemory(&s.resident_memory_bytes, &s.virtual_memory_bytes);
  return http::Response{200, metrics::TextWriter::kContentType, metrics::RenderMetrics(s)};
}

}  // namespace errand
