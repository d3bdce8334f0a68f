// End to end: the broker on a small tmpfs that the test mounts (as root) and
// fills. Enqueues then fail with RESOURCE_EXHAUSTED "disk full"; reads,
// health and subscriptions keep working; nothing acknowledged is lost or
// corrupted; once space is freed the same broker process takes writes again,
// and after a restart every acknowledged job is still there.
//
// Where mounting is not allowed (not root, no CAP_SYS_ADMIN) the tests skip
// and say so.

#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <set>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

// RocksDB preallocates WAL space in blocks of about 1.1 times the write
// buffer (16 MiB here), so the file system must leave room for one such
// block plus the first SST flush.
constexpr char kTmpfsSize[] = "size=64m";
constexpr size_t kPayloadBytes = 256 << 10;
constexpr char kQueue[] = "full";

// A payload that names its job, so corruption would show.
std::string Payload(int n) {
  std::string p = "job-" + std::to_string(n) + "-";
  p.reserve(kPayloadBytes);
  while (p.size() < kPayloadBytes) p += static_cast<char>('a' + (p.size() * 7 + n) % 26);
  return p;
}

class DiskFullE2E : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    mount_point_ = dir_.path() + "/fs";
    ASSERT_EQ(::mkdir(mount_point_.c_str(), 0755), 0) << std::strerror(errno);
    if (::mount("tmpfs", mount_point_.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, kTmpfsSize) != 0) {
      const int err = errno;
      if (err == EPERM || err == EACCES) {
        GTEST_SKIP() << "cannot mount a tmpfs here (" << std::strerror(err)
                     << "); the disk-full tests need root or CAP_SYS_ADMIN";
      }
      FAIL() << "mount tmpfs on " << mount_point_ << ": " << std::strerror(err);
    }
    mounted_ = true;
    data_dir_ = mount_point_ + "/data";
    broker_ = std::make_unique<testing::BrokerProcess>(
        data_dir_, std::vector<std::string>{"--commit=" + GetParam()});
    std::string error;
    ASSERT_TRUE(broker_->Start(&error)) << error;
    client_ = std::make_unique<Client>(broker_->Channel());
  }

  void TearDown() override {
    if (HasFailure() && broker_) std::cerr << "---- errand-broker log ----\n" << broker_->Log();
    client_.reset();
    broker_.reset();  // SIGKILLs a broker still running
    if (mounted_ && ::umount2(mount_point_.c_str(), 0) != 0) {
      ::umount2(mount_point_.c_str(), MNT_DETACH);
    }
  }

  // Fills the file system with a ballast file until it is full.
  void FillWithBallast() {
    ballast_ = mount_point_ + "/ballast";
    int fd = ::open(ballast_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    std::string chunk(1 << 20, 'b');
    size_t total = 0;
    for (int i = 0; i < 1024; ++i) {  // bounded: the tmpfs holds 64 MiB
      ssize_t n = ::write(fd, chunk.data(), chunk.size());
      if (n < static_cast<ssize_t>(chunk.size())) break;
      total += static_cast<size_t>(n);
    }
    // Top up to the last byte with small writes.
    for (int i = 0; i < 1 << 20; ++i) {
      if (::write(fd, chunk.data(), 4096) <= 0) break;
    }
    ::close(fd);
    ASSERT_GT(total, 0u);
  }

  grpc::Status EnqueueOne(int n, std::string* id) {
    v1::EnqueueResponse resp;
    grpc::Status s = client_->Enqueue(NewJob(kQueue, Payload(n)), &resp);
    if (s.ok()) *id = resp.job_id();
    return s;
  }

  // Every acknowledged job is there, with its payload.
  void ExpectAllAckedIntact(const char* when) {
    size_t bad = 0;
    for (const auto& [id, n] : acked_) {
      v1::Job job;
      grpc::Status s = client_->GetJob(id, &job);
      if (!s.ok() || job.payload() != Payload(n)) {
        if (++bad <= 5) {
          ADD_FAILURE() << when << ": acknowledged job " << id << " "
                        << (s.ok() ? "has a corrupt payload" : "lost: " + Show(s));
        }
      }
    }
    EXPECT_EQ(bad, 0u) << when << ": of " << acked_.size() << " acknowledged jobs";
  }

  testing::TempDir dir_;
  std::string mount_point_;
  std::string data_dir_;
  std::string ballast_;
  bool mounted_ = false;
  std::unique_ptr<testing::BrokerProcess> broker_;
  std::unique_ptr<Client> client_;
  std::map<std::string, int> acked_;  // job id -> payload number
};

TEST_P(DiskFullE2E, FullDiskRefusesWritesWithResourceExhaustedKeepsReadsAndRecoversWithoutRestart) {
  // Before: a few jobs, one of them leased, and a subscriber on the queue.
  int next = 0;
  for (; next < 4; ++next) {
    std::string id;
    grpc::Status s = EnqueueOne(next, &id);
    ASSERT_TRUE(s.ok()) << Show(s);
    acked_[id] = next;
  }
  v1::SubscribeRequest sub;
  sub.add_queues(kQueue);
  sub.set_from_oldest(true);
  EventStream events(client_->events.get(), sub);
  // A lease long enough to outlast filling the disk on a slow (sanitizer,
  // loaded) machine: the default 30 s ran out there, and the job was READY
  // again before the test completed it.
  v1::LeaseRequest lease_req = LeaseReq({kQueue}, 1);
  *lease_req.mutable_lease_duration() = Dur(std::chrono::minutes(30));
  auto leases = client_->MustLease(lease_req);
  ASSERT_EQ(leases.size(), 1u);
  v1::Lease lease = leases[0];
  ASSERT_FALSE(lease.job().id().empty());

  // Fill the disk, then enqueue until the broker says it is full (bounded:
  // the preallocated WAL holds at most ~70 such jobs).
  ASSERT_NO_FATAL_FAILURE(FillWithBallast());
  grpc::Status refused;
  const auto give_up = Clock::now() + 120s;
  for (int i = 0; i < 400 && Clock::now() < give_up; ++i, ++next) {
    std::string id;
    grpc::Status s = EnqueueOne(next, &id);
    if (!s.ok()) {
      refused = s;
      break;
    }
    acked_[id] = next;
  }
  ASSERT_FALSE(refused.ok()) << "the broker never reported the disk full";
  std::printf("disk full after %zu acknowledged jobs: %s\n", acked_.size(), Show(refused).c_str());
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Show(refused);
  EXPECT_NE(refused.error_message().find("disk full"), std::string::npos) << Show(refused);

  // While full: further writes fail the same way and fast, and nothing
  // else breaks.
  {
    std::string id;
    grpc::Status s = EnqueueOne(next++, &id);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Show(s);
    EXPECT_NE(s.error_message().find("disk full"), std::string::npos) << Show(s);
  }
  int health = 0;
  EXPECT_TRUE(testing::HealthCheck(broker_->Channel(), "", &health).ok());
  EXPECT_EQ(health, 1) << "health is not SERVING while the disk is full";
  ExpectAllAckedIntact("disk full");
  v1::QueueStats stats = client_->Stats(kQueue);
  EXPECT_EQ(TotalJobs(stats), acked_.size());
  {
    // A new subscriber reads the retained log.
    EventStream late(client_->events.get(), sub);
    auto first = late.Next(10s);
    ASSERT_TRUE(first.has_value()) << "a subscriber could not read the event log";
    EXPECT_EQ(first->type(), v1::EVENT_TYPE_ENQUEUED);
  }
  {
    // Leasing writes the attempt: refused the same way, the jobs stay READY.
    v1::LeaseResponse resp;
    grpc::Status s = client_->Lease(LeaseReq({kQueue}, 1), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Show(s);
    EXPECT_NE(s.error_message().find("disk full"), std::string::npos) << Show(s);
    EXPECT_EQ(client_->Stats(kQueue).leased(), 1u);
  }
  // Completing the leased job needs a write: refused as disk full (the
  // lease stays), unless it still fitted.
  grpc::Status completed = client_->Complete(lease.job().id(), lease.lease_token(), "done");
  if (!completed.ok()) {
    EXPECT_EQ(completed.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Show(completed);
  }
  EXPECT_TRUE(broker_->running());

  // Free the space: the same process takes writes again (it retries its
  // store at most every 200 ms; bounded wait).
  ASSERT_EQ(::unlink(ballast_.c_str()), 0);
  grpc::Status s;
  std::string id;
  const auto until = Clock::now() + 30s;
  do {
    s = EnqueueOne(next, &id);
    if (!s.ok()) std::this_thread::sleep_for(100ms);
  } while (!s.ok() && Clock::now() < until);
  ASSERT_TRUE(s.ok()) << "no write accepted after space was freed: " << Show(s);
  std::printf("writes accepted again %lld ms after space was freed\n",
              static_cast<long long>((Since(until - 30s)).count()));
  acked_[id] = next++;
  if (!completed.ok()) {
    completed = client_->Complete(lease.job().id(), lease.lease_token(), "done");
    EXPECT_TRUE(completed.ok()) << "completing the leased job after recovery: " << Show(completed);
  }
  EXPECT_EQ(client_->MustGetJob(lease.job().id()).state(), v1::JOB_STATE_SUCCEEDED);

  // The first subscriber saw every committed event once, in order, with no
  // gap: the refused writes consumed no sequence numbers.
  std::vector<v1::Event> seen;
  const size_t want = acked_.size() + 2;  // enqueues, one lease, one success
  while (seen.size() < want) {
    auto ev = events.Next(10s);
    if (!ev) break;
    seen.push_back(std::move(*ev));
  }
  ASSERT_EQ(seen.size(), want) << "the subscription stopped delivering";
  for (size_t i = 1; i < seen.size(); ++i) {
    ASSERT_EQ(seen[i].seq(), seen[i - 1].seq() + 1) << "gap in the event stream";
  }
  EXPECT_EQ(seen.back().type(), v1::EVENT_TYPE_SUCCEEDED);
  ExpectAllAckedIntact("after recovery");

  // And after a clean restart, everything acknowledged is on disk.
  client_.reset();
  ASSERT_EQ(broker_->Stop(), 0) << "errand-broker did not exit cleanly on SIGTERM";
  std::string error;
  ASSERT_TRUE(broker_->Start(&error)) << error;
  client_ = std::make_unique<Client>(broker_->Channel());
  ExpectAllAckedIntact("after restart");
  EXPECT_EQ(client_->MustGetJob(lease.job().id()).state(), v1::JOB_STATE_SUCCEEDED);
}

INSTANTIATE_TEST_SUITE_P(Commit, DiskFullE2E, ::testing::Values("sync", "async"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace errand::e2e
