// End to end: the broker's peak memory (VmHWM) while it takes the largest
// requests its default limits let through: a batch of --max-batch tiny jobs,
// one message of --max-message-bytes of real payload, and one message of
// --max-message-bytes packed with empty jobs (millions, refused by
// --max-batch). Each runs on a broker of its own; the figures are printed
// and bounded (peak RSS, not time: nothing here depends on the machine's
// speed).


#include <fstream>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {


// Peak resident set size of a process in KiB (VmHWM); 0 if unreadable.
uint64_t VmHwmKb(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10);
  }
  return 0;
}

using testing::WireField;

class HostileMemory : public BrokerTest {
 protected:
  // Sends `bytes` as one EnqueueBatch; returns the growth of the broker's
  // peak RSS in KiB and prints it beside the message size.
  uint64_t PeakGrowthKb(const std::string& what, const std::string& bytes, grpc::Status* s) {
    auto ch = broker_->Channel();
    int health = 0;
    EXPECT_TRUE(testing::HealthCheck(ch, "", &health).ok());
    const uint64_t before = VmHwmKb(broker_->pid());
    *s = testing::RawUnaryCall(ch, "/errand.v1.Jobs/EnqueueBatch", bytes, 60s);
    const uint64_t after = VmHwmKb(broker_->pid());
    std::cout << "[ memory ] " << what << ": message " << bytes.size() / 1024 << " KiB, peak RSS "
              << before / 1024 << " -> " << after / 1024 << " MiB (+" << (after - before) / 1024
              << " MiB)" << std::endl;
    return after - before;
  }
};

TEST_F(HostileMemory, MaxBatchOfTinyJobs) {
  std::string batch;
  for (int i = 0; i < 1000; ++i) batch += WireField(1, WireField(1, "q") + WireField(4, "p"));
  grpc::Status s;
  const uint64_t kb = PeakGrowthKb("1000 tiny jobs", batch, &s);
  EXPECT_TRUE(s.ok()) << Show(s);
  if (kRssIsMeaningful) {
    EXPECT_LT(kb, 32u << 10);
  }
  EXPECT_EQ(client().Stats("q").ready(), 1000u);
}

TEST_F(HostileMemory, MaximalMessageOfPayload) {
  // 63 jobs of 1 MiB (--max-payload-bytes) each: just under 64 MiB.
  std::string batch;
  const std::string job = WireField(1, "big") + WireField(4, std::string((1 << 20) - 64, 'x'));
  for (int i = 0; i < 63; ++i) batch += WireField(1, job);
  grpc::Status s;
  const uint64_t kb = PeakGrowthKb("63 jobs of 1 MiB", batch, &s);
  EXPECT_TRUE(s.ok()) << Show(s);
  // Measured: about twice the message (the received bytes, the parsed jobs
  // and their records on the way to the store).
  if (kRssIsMeaningful) {
    EXPECT_LT(kb, 4 * batch.size() / 1024 + (32u << 10));
  }
  EXPECT_EQ(client().Stats("big").ready(), 63u);
}

TEST_F(HostileMemory, MaximalMessageOfEmptyJobs) {
  // 2 bytes per empty job: about 33 million of them in 64 MiB.
  std::string batch;
  const std::string job = WireField(1, "");
  const size_t n = ((64u << 20) - 64) / job.size();
  batch.reserve(n * job.size());
  for (size_t i = 0; i < n; ++i) batch += job;
  grpc::Status s;
  const uint64_t kb = PeakGrowthKb(std::to_string(n) + " empty jobs", batch, &s);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
  EXPECT_NE(s.error_message().find("jobs has " + std::to_string(n) + " entries"),
            std::string::npos)
      << Show(s);
  EXPECT_NE(s.error_message().find("--max-batch"), std::string::npos) << Show(s);
  // The jobs are counted in the bytes, not parsed: about the message itself.
  // (Parsed, they took some 250 bytes each: 8 GB.)
  if (kRssIsMeaningful) {
    EXPECT_LT(kb, 2 * batch.size() / 1024 + (32u << 10));
  }
  EXPECT_FALSE(client().MustEnqueue(NewJob("after")).empty());
}

}  // namespace
}  // namespace errand::e2e
