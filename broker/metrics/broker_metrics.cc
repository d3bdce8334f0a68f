#include "metrics/broker_metrics.h"

#include <unistd.h>

#include <cstdio>
#include <functional>

#include "metrics/prometheus.h"

namespace errand::metrics {
namespace {

// One family with one sample per queue.
void PerQueue(TextWriter& w, const BrokerSample& s, const std::string& name,
              const std::string& help, const std::string& type,
              const std::function<double(const QueueSample&)>& value) {
  w.Family(name, help, type);
  for (const QueueSample& q : s.queues) w.Sample(name, {{"queue", q.queue}}, value(q));
}

void PerColumnFamily(TextWriter& w, const BrokerSample& s, const std::string& name,
                     const std::string& help,
                     const std::function<double(const ColumnFamilySample&)>& value) {
  w.Family(name, help, "gauge");
  for (const ColumnFamilySample& cf : s.column_families) {
    w.Sample(name, {{"cf", cf.name}}, value(cf));
  }
}

}  // namespace

std::string RenderMetrics(const BrokerSample& s) {
  TextWriter w;
  w.Family("errand_build_info", "The broker's version; the value is always 1.", "gauge");
  w.Sample("errand_build_info", {{"version", s.version}}, 1);
  w.Gauge("errand_start_time_seconds", "When the broker started, in Unix time.",
          s.start_time_seconds);
  w.Gauge("errand_ready", "1 when /readyz answers 200 (store open, accepting writes, disk not full).",
          s.ready ? 1 : 0);

  // Jobs.
  w.Family("errand_jobs", "Jobs per queue and state, now.", "gauge");
  for (const QueueSample& q : s.queues) {
    const std::pair<const char*, uint64_t> states[] = {
        {"scheduled", q.scheduled}, {"ready", q.ready}, {"leased", q.leased},
        {"succeeded", q.succeeded}, {"dead", q.dead},   {"cancelled", q.cancelled}};
    for (const auto& [state, n] : states) {
      w.Sample("errand_jobs", {{"queue", q.queue}, {"state", state}}, static_cast<double>(n));
    }
  }
  PerQueue(w, s, "errand_queue_paused", "1 while the queue is paused.", "gauge",
           [](const QueueSample& q) { return q.paused ? 1.0 : 0.0; });
  PerQueue(w, s, "errand_queue_oldest_ready_age_seconds",
           "Age of the queue's oldest READY job (0 when none).", "gauge",
           [](const QueueSample& q) { return q.oldest_ready_age_seconds; });
  PerQueue(w, s, "errand_jobs_enqueued_total", "Jobs enqueued since start.", "counter",
           [](const QueueSample& q) { return static_cast<double>(q.enqueued_total); });
  PerQueue(w, s, "errand_jobs_leased_total", "Leases granted since start.", "counter",
           [](const QueueSample& q) { return static_cast<double>(q.leased_total); });
  PerQueue(w, s, "errand_jobs_completed_total", "Jobs completed (SUCCEEDED) since start.",
           "counter", [](const QueueSample& q) { return static_cast<double>(q.succeeded_total); });
  PerQueue(w, s, "errand_jobs_failed_total",
           "Attempts that failed (Fail, or a lease that ended without an outcome) since start.",
           "counter", [](const QueueSample& q) { return static_cast<double>(q.failed_total); });
  PerQueue(w, s, "errand_jobs_dead_total", "Jobs that became DEAD since start.", "counter",
           [](const QueueSample& q) { return static_cast<double>(q.dead_total); });
  PerQueue(w, s, "errand_lease_expiries_total",
           "Leases that ended without Complete or Fail (deadline passed, or a dropped Connect "
           "stream's grace ran out) since start.",
           "counter",
           [](const QueueSample& q) { return static_cast<double>(q.lease_expired_total); });

  // Commit pipeline.
  w.Family("errand_commit_mode", "The server's default commit mode; the value is always 1.",
           "gauge");
  w.Sample("errand_commit_mode", {{"mode", s.sync_commit ? "sync" : "async"}}, 1);
  w.Gauge("errand_commit_sync_interval_seconds",
          "Async mode: longest time an acknowledged write stays unsynced (0 in sync mode).",
          s.sync_commit ? 0 : s.sync_interval_seconds);
  w.Counter("errand_commit_mutations_total", "Mutations (state changes) committed since start.",
            static_cast<double>(s.commit_writes));
  w.Counter("errand_commit_writes_total", "RocksDB writes (commit groups) since start.",
            static_cast<double>(s.commit_groups));
  w.Counter("errand_fsyncs_total", "Synced writes and background WAL syncs since start.",
            static_cast<double>(s.fsyncs));
  w.Counter("errand_commit_failed_mutations_total",
            "Mutations whose write failed (e.g. disk full) since start.",
            static_cast<double>(s.commit_failures));
  w.Family("errand_commit_batch_size_mutations", "Mutations per commit group (one RocksDB write).",
           "histogram");
  w.HistogramSamples("errand_commit_batch_size_mutations", {}, s.group_sizes);
  w.Family("errand_fsync_duration_seconds",
           "Duration of each fsync of the RocksDB WAL (DB::SyncWAL).", "histogram");
  w.HistogramSamples("errand_fsync_duration_seconds", {}, s.fsync_seconds);

  // Event log and subscribers.
  w.Gauge("errand_event_log_head_seq", "Sequence number of the newest committed event.",
          static_cast<double>(s.event_head_seq));
  w.Gauge("errand_event_log_first_seq",
          "Sequence number of the oldest retained event (0 while the log is empty).",
          static_cast<double>(s.event_first_seq));
  w.Gauge("errand_event_log_retained_events", "Events retained for Subscribe to resume from.",
          s.event_first_seq == 0 || s.event_head_seq < s.event_first_seq
              ? 0
              : static_cast<double>(s.event_head_seq - s.event_first_seq + 1));
  w.Gauge("errand_event_retention_max_events", "--event-retention-count.",
          static_cast<double>(s.event_retention_max_events));
  w.Gauge("errand_event_retention_max_age_seconds", "--event-retention-age.",
          s.event_retention_max_age_seconds);
  w.Gauge("errand_subscribers", "Open Subscribe streams.", static_cast<double>(s.subscribers));
  w.Gauge("errand_subscribers_catching_up",
          "Subscribers being caught up from the event log on disk.",
          static_cast<double>(s.subscribers_catching_up));
  w.Gauge("errand_subscriber_lag_max_events",
          "Committed events not yet sent to the subscriber furthest behind.",
          static_cast<double>(s.subscriber_lag_max));
  w.Gauge("errand_subscriber_lag_events", "Committed events not yet sent, summed over subscribers.",
          static_cast<double>(s.subscriber_lag_total));
  w.Counter("errand_subscribers_cut_off_total",
            "Subscribers ended with OUT_OF_RANGE because they fell behind the retained log.",
            static_cast<double>(s.subscribers_cut_off_total));
  w.Family("errand_core_closures_total",
           "Units of work run in core since start, by thread: in_place on the thread that handed "
           "them in (a gRPC thread, with no hand-off), or on the core thread (timers, answers "
           "after an fsync, and work that queued while core was busy).",
           "counter");
  w.Sample("errand_core_closures_total", {{"ran", "in_place"}},
           static_cast<double>(s.core_in_place));
  w.Sample("errand_core_closures_total", {{"ran", "core_thread"}},
           static_cast<double>(s.core_on_core_thread));
  w.Family("errand_long_polls", "Long-poll calls waiting now, by kind.", "gauge");
  w.Sample("errand_long_polls", {{"kind", "lease"}}, static_cast<double>(s.lease_waiters));
  w.Sample("errand_long_polls", {{"kind", "wait_job"}}, static_cast<double>(s.wait_job_waiters));

  // Store and process.
  PerColumnFamily(w, s, "errand_rocksdb_sst_bytes", "Size of the column family's SST files.",
                  [](const ColumnFamilySample& c) { return static_cast<double>(c.sst_bytes); });
  PerColumnFamily(
      w, s, "errand_rocksdb_memtable_bytes", "Size of the column family's memtables.",
      [](const ColumnFamilySample& c) { return static_cast<double>(c.memtable_bytes); });
  PerColumnFamily(w, s, "errand_rocksdb_pending_compaction_bytes",
                  "RocksDB's estimate of the bytes compaction still has to rewrite.",
                  [](const ColumnFamilySample& c) {
                    return static_cast<double>(c.pending_compaction_bytes);
                  });
  w.Gauge("process_resident_memory_bytes", "Resident memory size in bytes.",
          static_cast<double>(s.resident_memory_bytes));
  w.Gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.",
          static_cast<double>(s.virtual_memory_bytes));
  return w.Take();
}

bool ReadProcessMemory(uint64_t* resident_bytes, uint64_t* virtual_bytes) {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return false;
  unsigned long long size = 0, resident = 0;
  int n = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  if (n != 2) return false;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  *resident_bytes = resident * page;
  *virtual_bytes = size * page;
  return true;
}

}  // namespace errand::metrics
