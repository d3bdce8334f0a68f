#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "metrics/histogram.h"

namespace errand::metrics {

// One queue's state and totals, as /metrics reports them.
struct QueueSample {
  std::string queue;
  uint64_t scheduled = 0, ready = 0, leased = 0, succeeded = 0, dead = 0, cancelled = 0;
  bool paused = false;
  double oldest_ready_age_seconds = 0;
  // Since start.
  uint64_t enqueued_total = 0, leased_total = 0, succeeded_total = 0, failed_total = 0,
           dead_total = 0, lease_expired_total = 0;
};

// RocksDB figures for one column family.
struct ColumnFamilySample {
  std::string name;
  uint64_t sst_bytes = 0;
  uint64_t memtable_bytes = 0;
  uint64_t pending_compaction_bytes = 0;
};

// Everything /metrics shows, gathered at scrape time.
struct BrokerSample {
  std::string version;
  bool sync_commit = true;
  double sync_interval_seconds = 0;
  double start_time_seconds = 0;  // Unix time
  std::vector<QueueSample> queues;
  // Commit pipeline.
  uint64_t commit_writes = 0, commit_groups = 0, fsyncs = 0, commit_failures = 0;
  Histogram::Snapshot group_sizes, fsync_seconds;
  // Event log and subscribers.
  uint64_t event_head_seq = 0, event_first_seq = 0;
  uint64_t event_retention_max_events = 0;
  double event_retention_max_age_seconds = 0;
  uint64_t subscribers = 0, subscribers_catching_up = 0, subscriber_lag_max = 0,
           subscriber_lag_total = 0, subscribers_cut_off_total = 0;
  // Long polls waiting now.
  uint64_t lease_waiters = 0, wait_job_waiters = 0;
  // Closures core ran in place (on the thread that handed them in) and on
  // the core thread.
  uint64_t core_in_place = 0, core_on_core_thread = 0;
  // Store and process.
  std::vector<ColumnFamilySample> column_families;
  uint64_t resident_memory_bytes = 0, virtual_memory_bytes = 0;
  bool ready = false;
};

// The Prometheus text format of `s`. Every family has HELP and TYPE, counters
// end in _total and units are in the names, so `promtool check metrics`
// accepts it.
std::string RenderMetrics(const BrokerSample& s);

// This process's resident and virtual memory (from /proc/self/statm); false
// when unavailable.
bool ReadProcessMemory(uint64_t* resident_bytes, uint64_t* virtual_bytes);

}  // namespace errand::metrics
