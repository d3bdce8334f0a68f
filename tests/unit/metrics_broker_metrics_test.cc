#include "metrics/broker_metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <sstream>
#include <string>

namespace errand::metrics {
namespace {

using ::testing::HasSubstr;

BrokerSample Sample() {
  BrokerSample s;
  s.version = "0.1.0";
  s.sync_commit = false;
  s.sync_interval_seconds = 0.1;
  QueueSample q;
  q.queue = "emails";
  q.ready = 2;
  q.leased = 1;
  q.succeeded = 4;
  q.paused = true;
  q.enqueued_total = 7;
  q.leased_total = 5;
  q.succeeded_total = 4;
  q.failed_total = 1;
  q.dead_total = 1;
  q.lease_expired_total = 1;
  s.queues.push_back(q);
  QueueSample odd;
  odd.queue = "we\"ird\\q";
  s.queues.push_back(odd);
  s.commit_writes = 20;
  s.commit_groups = 10;
  s.fsyncs = 3;
  s.core_in_place = 70;
  s.core_on_core_thread = 12;
  Histogram sizes(Histogram::PowersOfTwo(4));
  sizes.Observe(1);
  sizes.Observe(3);
  s.group_sizes = sizes.Read();
  Histogram fsync(Histogram::Exponential(0.001, 10, 2));
  fsync.Observe(0.002);
  s.fsync_seconds = fsync.Read();
  s.event_head_seq = 30;
  s.event_first_seq = 11;
  s.subscribers = 2;
  s.subscriber_lag_max = 9;
  s.lease_waiters = 4;
  s.column_families.push_back({"jobs", 1000, 200, 30});
  s.resident_memory_bytes = 1 << 20;
  s.ready = true;
  return s;
}

TEST(BrokerMetricsTest, ReportsQueuesByStateAndTotals) {
  std::string text = RenderMetrics(Sample());
  EXPECT_THAT(text, HasSubstr("\nerrand_jobs{queue=\"emails\",state=\"ready\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_jobs{queue=\"emails\",state=\"leased\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_jobs{queue=\"emails\",state=\"succeeded\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_jobs{queue=\"emails\",state=\"scheduled\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_queue_paused{queue=\"emails\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_jobs_enqueued_total{queue=\"emails\"} 7\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_jobs_leased_total{queue=\"emails\"} 5\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_jobs_completed_total{queue=\"emails\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_jobs_failed_total{queue=\"emails\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_jobs_dead_total{queue=\"emails\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_lease_expiries_total{queue=\"emails\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("errand_jobs{queue=\"we\\\"ird\\\\q\",state=\"ready\"} 0\n"));
}

TEST(BrokerMetricsTest, ReportsCommitEventsStoreAndProcess) {
  std::string text = RenderMetrics(Sample());
  EXPECT_THAT(text, HasSubstr("\nerrand_commit_mode{mode=\"async\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_commit_sync_interval_seconds 0.10000000000000001\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_commit_mutations_total 20\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_commit_writes_total 10\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_fsyncs_total 3\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_commit_batch_size_mutations_bucket{le=\"1\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_commit_batch_size_mutations_bucket{le=\"4\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_commit_batch_size_mutations_count 2\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_fsync_duration_seconds_bucket{le=\"0.01\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_fsync_duration_seconds_count 1\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_event_log_head_seq 30\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_event_log_retained_events 20\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_subscribers 2\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_subscriber_lag_max_events 9\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_long_polls{kind=\"lease\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_core_closures_total{ran=\"in_place\"} 70\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_core_closures_total{ran=\"core_thread\"} 12\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_rocksdb_sst_bytes{cf=\"jobs\"} 1000\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_rocksdb_pending_compaction_bytes{cf=\"jobs\"} 30\n"));
  EXPECT_THAT(text, HasSubstr("\nprocess_resident_memory_bytes 1048576\n"));
  EXPECT_THAT(text, HasSubstr("\nerrand_ready 1\n"));
}

// The format rules promtool checks: each family declared once with HELP
// and TYPE before its samples; counters end in _total; every sample belongs
// to a declared family.
TEST(BrokerMetricsTest, EveryFamilyIsDeclaredOnceBeforeItsSamples) {
  std::istringstream in(RenderMetrics(Sample()));
  std::map<std::string, std::string> types;
  std::set<std::string> helped;
  int samples = 0;
  for (std::string line; std::getline(in, line);) {
    ASSERT_FALSE(line.empty());
    if (line.rfind("# HELP ", 0) == 0) {
      std::string name = line.substr(7, line.find(' ', 7) - 7);
      EXPECT_TRUE(helped.insert(name).second) << "HELP twice: " << name;
      continue;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream f(line.substr(7));
      std::string name, type;
      f >> name >> type;
      EXPECT_TRUE(helped.count(name)) << "TYPE before HELP: " << name;
      EXPECT_TRUE(types.emplace(name, type).second) << "TYPE twice: " << name;
      if (type == "counter") {
        EXPECT_THAT(name, ::testing::EndsWith("_total"));
      }
      continue;
    }
    std::string name = line.substr(0, line.find_first_of("{ "));
    std::string family = name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      std::string sfx = suffix;
      if (!types.count(family) && name.size() > sfx.size() &&
          name.compare(name.size() - sfx.size(), sfx.size(), sfx) == 0) {
        family = name.substr(0, name.size() - sfx.size());
      }
    }
    EXPECT_TRUE(types.count(family)) << "sample of an undeclared family: " << line;
    ++samples;
  }
  EXPECT_GT(samples, 40);
}

}  // namespace
}  // namespace errand::metrics
