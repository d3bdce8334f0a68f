// End-to-end tests of the job lifecycle against the real errand-broker
// process on 127.0.0.1: idempotency, cancel, dead letters, queue control,
// retention, listing, fairness, limits.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "errand/v1/admin.grpc.pb.h"
#include "errand/v1/jobs.grpc.pb.h"
#include "errand/v1/workers.grpc.pb.h"
#include "support/test_support.h"

namespace errand {
namespace {

using namespace std::chrono_literals;
using testing::BrokerProcess;
using testing::In;
using testing::TempDir;

std::string Show(const grpc::Status& s) {
  return std::to_string(static_cast<int>(s.error_code())) + ": " + s.error_message();
}

google::protobuf::Duration Secs(int64_t s, int32_t nanos = 0) {
  google::protobuf::Duration d;
  d.set_seconds(s);
  d.set_nanos(nanos);
  return d;
}

// The stubs over one channel; every call has a deadline.
struct Stubs {
  explicit Stubs(const std::shared_ptr<grpc::Channel>& ch)
      : jobs(v1::Jobs::NewStub(ch)),
        workers(v1::Workers::NewStub(ch)),
        admin(v1::Admin::NewStub(ch)) {}

  template <typename Stub, typename Req, typename Resp>
  grpc::Status Call(Stub* stub,
                    grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                    const Req& req, Resp* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(10s));
    return (stub->*method)(&ctx, req, resp);
  }

  v1::EnqueueResponse Enqueue(const v1::EnqueueRequest& req) {
    v1::EnqueueResponse resp;
    grpc::Status s = Call(jobs.get(), &v1::Jobs::Stub::Enqueue, req, &resp);
    EXPECT_TRUE(s.ok()) << "Enqueue: " << Show(s);
    return resp;
  }
  std::string MustEnqueue(const std::string& queue, const std::string& payload = "",
                          const std::string& concurrency_key = "") {
    v1::EnqueueRequest r;
    r.set_queue(queue);
    r.set_payload(payload);
    r.set_concurrency_key(concurrency_key);
    return Enqueue(r).job_id();
  }
  std::vector<v1::Lease> Lease(const std::string& queue, uint32_t n = 1,
                               std::chrono::milliseconds wait = 0ms) {
    v1::LeaseRequest r;
    r.add_queues(queue);
    r.set_max_jobs(n);
    r.set_worker_id("lifecycle-worker");
    if (wait.count() > 0) {
      *r.mutable_wait() =
          Secs(wait.count() / 1000, static_cast<int32_t>(wait.count() % 1000) * 1000000);
    }
    v1::LeaseResponse resp;
    grpc::Status s = Call(workers.get(), &v1::Workers::Stub::Lease, r, &resp);
    EXPECT_TRUE(s.ok()) << "Lease: " << Show(s);
    return {resp.leases().begin(), resp.leases().end()};
  }
  grpc::Status Complete(const v1::Lease& l, const std::string& result = "done") {
    v1::CompleteRequest r;
    r.set_job_id(l.job().id());
    r.set_lease_token(l.lease_token());
    r.set_result(result);
    v1::CompleteResponse resp;
    return Call(workers.get(), &v1::Workers::Stub::Complete, r, &resp);
  }
  v1::FailResponse Fail(const v1::Lease& l, const std::string& error) {
    v1::FailRequest r;
    r.set_job_id(l.job().id());
    r.set_lease_token(l.lease_token());
    r.set_error(error);
    v1::FailResponse resp;
    grpc::Status s = Call(workers.get(), &v1::Workers::Stub::Fail, r, &resp);
    EXPECT_TRUE(s.ok()) << "Fail: " << Show(s);
    return resp;
  }
  v1::ExtendResponse Extend(const v1::Lease& l) {
    v1::ExtendRequest r;
    r.set_job_id(l.job().id());
    r.set_lease_token(l.lease_token());
    v1::ExtendResponse resp;
    grpc::Status s = Call(workers.get(), &v1::Workers::Stub::Extend, r, &resp);
    EXPECT_TRUE(s.ok()) << "Extend: " << Show(s);
    return resp;
  }
  grpc::Status GetJob(const std::string& id, v1::Job* job) {
    v1::GetJobRequest r;
    r.set_job_id(id);
    v1::GetJobResponse resp;
    grpc::Status s = Call(jobs.get(), &v1::Jobs::Stub::GetJob, r, &resp);
    *job = resp.job();
    return s;
  }
  v1::Job MustGet(const std::string& id) {
    v1::Job j;
    grpc::Status s = GetJob(id, &j);
    EXPECT_TRUE(s.ok()) << "GetJob " << id << ": " << Show(s);
    return j;
  }
  grpc::Status Cancel(const std::string& id, const std::string& reason, v1::Job* job) {
    v1::CancelJobRequest r;
    r.set_job_id(id);
    r.set_reason(reason);
    v1::CancelJobResponse resp;
    grpc::Status s = Call(jobs.get(), &v1::Jobs::Stub::CancelJob, r, &resp);
    *job = resp.job();
    return s;
  }
  v1::QueueStats Stats(const std::string& queue) {
    v1::GetQueueStatsRequest r;
    r.set_queue(queue);
    v1::GetQueueStatsResponse resp;
    grpc::Status s = Call(admin.get(), &v1::Admin::Stub::GetQueueStats, r, &resp);
    EXPECT_TRUE(s.ok()) << Show(s);
    return resp.stats();
  }

  std::unique_ptr<v1::Jobs::Stub> jobs;
  std::unique_ptr<v1::Workers::Stub> workers;
  std::unique_ptr<v1::Admin::Stub> admin;
};

class LifecycleE2ETest : public ::testing::Test {
 protected:
  void StartBroker(std::vector<std::string> args = {}) {
    broker_ = std::make_unique<BrokerProcess>(dir_.path() + "/data", std::move(args));
    std::string error;
    ASSERT_TRUE(broker_->Start(&error)) << error;
    stubs_ = std::make_unique<Stubs>(broker_->Channel());
  }

  // SIGTERM, wait for a clean exit, start again on the same data dir. The
  // test's channel is closed first: the broker's graceful stop otherwise
  // waits out its --shutdown-grace for the open connection.
  void RestartBroker() {
    stubs_.reset();
    ASSERT_EQ(broker_->Stop(), 0) << broker_->Log();
    StartBroker();
  }

  TempDir dir_;
  std::unique_ptr<BrokerProcess> broker_;
  std::unique_ptr<Stubs> stubs_;
};

TEST_F(LifecycleE2ETest, DuplicateEnqueueUnderEightConcurrentClientsYieldsOneJob) {
  StartBroker();
  for (int round = 0; round < 5; ++round) {
    const std::string key = "order-" + std::to_string(round);
    std::vector<v1::EnqueueResponse> answers(8);
    std::vector<grpc::Status> statuses(8);
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 8; ++i) {
      threads.emplace_back([&, i] {
        // One channel per client, so the calls really race.
        grpc::ChannelArguments args;
        args.SetInt("lifecycle.client", i);
        auto ch = grpc::CreateCustomChannel(broker_->address(),
                                            grpc::InsecureChannelCredentials(), args);
        auto stub = v1::Jobs::NewStub(ch);
        ch->WaitForConnected(In(5s));
        v1::EnqueueRequest r;
        r.set_queue("dup");
        r.set_payload("from client " + std::to_string(i));
        r.set_idempotency_key(key);
        ready++;
        while (ready.load() < 8) std::this_thread::yield();
        grpc::ClientContext ctx;
        ctx.set_deadline(In(10s));
        statuses[i] = stub->Enqueue(&ctx, r, &answers[i]);
      });
    }
    for (auto& t : threads) t.join();
    std::set<std::string> ids;
    int originals = 0;
    for (int i = 0; i < 8; ++i) {
      ASSERT_TRUE(statuses[i].ok()) << Show(statuses[i]);
      ids.insert(answers[i].job_id());
      if (!answers[i].duplicate()) {
        originals++;
      } else {
        EXPECT_EQ(answers[i].job().id(), answers[i].job_id());
        EXPECT_EQ(answers[i].job().idempotency_key(), key);
      }
    }
    EXPECT_EQ(ids.size(), 1u) << "round " << round;
    EXPECT_EQ(originals, 1) << "round " << round;
  }
  // Exactly five jobs exist in the queue.
  v1::ListJobsRequest lr;
  lr.set_queue("dup");
  v1::ListJobsResponse resp;
  ASSERT_TRUE(stubs_->Call(stubs_->jobs.get(), &v1::Jobs::Stub::ListJobs, lr, &resp).ok());
  EXPECT_EQ(resp.jobs_size(), 5);
  EXPECT_EQ(stubs_->Stats("dup").ready(), 5u);

  // Keys survive a restart.
  RestartBroker();
  v1::EnqueueRequest again;
  again.set_queue("dup");
  again.set_idempotency_key("order-0");
  v1::EnqueueResponse a = stubs_->Enqueue(again);
  EXPECT_TRUE(a.duplicate());
  EXPECT_EQ(stubs_->Stats("dup").ready(), 5u);

  // EnqueueBatch: duplicates inside the batch and against existing keys.
  v1::EnqueueBatchRequest batch;
  for (const char* k : {"order-1", "fresh", "fresh"}) {
    auto* j = batch.add_jobs();
    j->set_queue("dup");
    j->set_idempotency_key(k);
  }
  v1::EnqueueBatchResponse br;
  grpc::Status bs = stubs_->Call(stubs_->jobs.get(), &v1::Jobs::Stub::EnqueueBatch, batch, &br);
  ASSERT_TRUE(bs.ok()) << Show(bs);
  ASSERT_EQ(br.results_size(), 3);
  EXPECT_TRUE(br.results(0).duplicate());
  EXPECT_FALSE(br.results(1).duplicate());
  EXPECT_TRUE(br.results(2).duplicate());
  EXPECT_EQ(br.results(1).job_id(), br.results(2).job_id());
  EXPECT_EQ(stubs_->Stats("dup").ready(), 6u);
}

TEST_F(LifecycleE2ETest, RedriveAfterDeadRunsTheJobAgainWithHistoryKept) {
  StartBroker();
  v1::EnqueueRequest r;
  r.set_queue("dl");
  r.set_payload("v1");
  r.set_max_attempts(1);
  std::string id = stubs_->Enqueue(r).job_id();
  auto leases = stubs_->Lease("dl");
  ASSERT_EQ(leases.size(), 1u);
  v1::FailResponse f = stubs_->Fail(leases[0], "bad input");
  EXPECT_EQ(f.job().state(), v1::JOB_STATE_DEAD);

  v1::ListDeadJobsRequest ld;
  ld.set_queue("dl");
  v1::ListDeadJobsResponse dead;
  ASSERT_TRUE(
      stubs_->Call(stubs_->admin.get(), &v1::Admin::Stub::ListDeadJobs, ld, &dead).ok());
  ASSERT_EQ(dead.jobs_size(), 1);
  EXPECT_EQ(dead.jobs(0).id(), id);
  EXPECT_EQ(dead.jobs(0).history(0).error(), "bad input");

  v1::RedriveJobsRequest rd;
  rd.set_queue("dl");
  rd.add_job_ids(id);
  rd.set_payload("v2");
  rd.set_replace_payload(true);
  v1::RedriveJobsResponse rr;
  grpc::Status s = stubs_->Call(stubs_->admin.get(), &v1::Admin::Stub::RedriveJobs, rd, &rr);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(rr.redriven(), 1u);

  leases = stubs_->Lease("dl");
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_EQ(leases[0].job().id(), id);
  EXPECT_EQ(leases[0].job().attempts(), 1u);
  EXPECT_EQ(leases[0].job().payload(), "v2");
  ASSERT_TRUE(stubs_->Complete(leases[0], "fixed").ok());
  v1::Job j = stubs_->MustGet(id);
  EXPECT_EQ(j.state(), v1::JOB_STATE_SUCCEEDED);
  ASSERT_EQ(j.history_size(), 2);
  EXPECT_EQ(j.history(0).outcome(), v1::ATTEMPT_OUTCOME_FAILED);
  EXPECT_EQ(j.history(0).error(), "bad input");
  EXPECT_EQ(j.history(1).outcome(), v1::ATTEMPT_OUTCOME_SUCCEEDED);

  // Redriving a job that is not DEAD changes nothing.
  s = stubs_->Call(stubs_->admin.get(), &v1::Admin::Stub::RedriveJobs, rd, &rr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Show(s);
  v1::RedriveJobsRequest none;
  s = stubs_->Call(stubs_->admin.get(), &v1::Admin::Stub::RedriveJobs, none, &rr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
}

TEST_F(LifecycleE2ETest, CancelOfALeasedJobReachesTheWorkerThroughExtend) {
  StartBroker();
  std::string id = stubs_->MustEnqueue("cx");
  auto leases = stubs_->Lease("cx");
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_FALSE(stubs_->Extend(leases[0]).cancel_requested());

  v1::Job job;
  grpc::Status s = stubs_->Cancel(id, "user gave up", &job);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(job.state(), v1::JOB_STATE_LEASED);
  EXPECT_TRUE(job.cancel_requested());

  EXPECT_TRUE(stubs_->Extend(leases[0]).cancel_requested());
  v1::FailResponse f = stubs_->Fail(leases[0], "stopped on request");
  EXPECT_EQ(f.job().state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(f.job().error(), "user gave up");

  // Terminal: FAILED_PRECONDITION naming the state; unknown: NOT_FOUND.
  s = stubs_->Cancel(id, "", &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("CANCELLED"), std::string::npos) << s.error_message();
  s = stubs_->Cancel("00000000000000ff", "", &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << Show(s);
  s = stubs_->Cancel("nope", "", &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("job_id"), std::string::npos);

  // A READY job is cancelled at once and never delivered.
  std::string ready = stubs_->MustEnqueue("cx");
  s = stubs_->Cancel(ready, "", &job);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(stubs_->Lease("cx").empty());
  EXPECT_EQ(stubs_->Stats("cx").cancelled(), 2u);
}

TEST_F(LifecycleE2ETest, PausedQueueStaysPausedAcrossARestart) {
  StartBroker();
  v1::PauseQueueRequest pr;
  pr.set_queue("pz");
  v1::PauseQueueResponse presp;
  grpc::Status s = stubs_->Call(stubs_->admin.get(), &v1::Admin::Stub::PauseQueue, pr, &presp);
  ASSERT_TRUE(s.ok()) << Show(s);
  std::string id = stubs_->MustEnqueue("pz", "x");
  EXPECT_TRUE(stubs_->Lease("pz", 1, 300ms).empty());
  EXPECT_TRUE(stubs_->Stats("pz").paused());

  RestartBroker();
  EXPECT_TRUE(stubs_->Stats("pz").paused());
  EXPECT_EQ(stubs_->Stats("pz").ready(), 1u);
  EXPECT_TRUE(stubs_->Lease("pz", 1, 300ms).empty());

  // A waiting lease gets the job once the queue resumes.
  std::vector<v1::Lease> got;
  std::thread waiter([&] {
    Stubs own(broker_->Channel());
    got = own.Lease("pz", 1, 5000ms);
  });
  std::this_thread::sleep_for(300ms);
  v1::ResumeQueueRequest rq;
  rq.set_queue("pz");
  v1::ResumeQueueResponse rresp;
  s = stubs_->Call(stubs_->admin.get(), &v1::Admin::Stub::ResumeQueue, rq, &rresp);
  ASSERT_TRUE(s.ok()) << Show(s);
  waiter.join();
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].job().id(), id);
  EXPECT_FALSE(stubs_->Stats("pz").paused());
}

TEST_F(LifecycleE2ETest, PurgeRemovesReadyAndScheduledJobs) {
  StartBroker();
  stubs_->MustEnqueue("pg");
  auto leases = stubs_->Lease("pg");
  ASSERT_EQ(leases.size(), 1u);
  std::string ready = stubs_->MustEnqueue("pg");
  v1::EnqueueRequest later;
  later.set_queue("pg");
  *later.mutable_delay() = Secs(3600);
  std::string scheduled = stubs_->Enqueue(later).job_id();
  v1::PurgeQueueRequest pr;
  pr.set_queue("pg");
  v1::PurgeQueueResponse presp;
  grpc::Status s = stubs_->Call(stubs_->admin.get(), &v1::Admin::Stub::PurgeQueue, pr, &presp);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(presp.purged(), 2u);
  v1::Job j;
  EXPECT_EQ(stubs_->GetJob(ready, &j).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(stubs_->GetJob(scheduled, &j).error_code(), grpc::StatusCode::NOT_FOUND);
  auto st = stubs_->Stats("pg");
  EXPECT_EQ(st.leased(), 1u);
  EXPECT_EQ(st.ready() + st.scheduled(), 0u);
}

TEST_F(LifecycleE2ETest, RetentionDeletesOnlyFinishedJobsOlderThanTheRetention) {
  StartBroker();
  auto enqueue = [&](int retention_s) {
    v1::EnqueueRequest r;
    r.set_queue("rt");
    if (retention_s > 0) *r.mutable_retention() = Secs(retention_s);
    return stubs_->Enqueue(r).job_id();
  };
  std::string short_done = enqueue(1);
  std::string default_done = enqueue(0);
  std::string short_cancelled = enqueue(1);
  std::string short_unfinished = enqueue(1);
  auto leases = stubs_->Lease("rt", 2);
  ASSERT_EQ(leases.size(), 2u);
  for (auto& l : leases) ASSERT_TRUE(stubs_->Complete(l).ok());
  v1::Job j;
  ASSERT_TRUE(stubs_->Cancel(short_cancelled, "", &j).ok());

  // Still there right after finishing...
  ASSERT_TRUE(stubs_->GetJob(short_done, &j).ok());
  // ...gone a little after the retention.
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline &&
         (stubs_->GetJob(short_done, &j).ok() || stubs_->GetJob(short_cancelled, &j).ok())) {
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(stubs_->GetJob(short_done, &j).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(stubs_->GetJob(short_cancelled, &j).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(stubs_->MustGet(default_done).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(stubs_->MustGet(short_unfinished).state(), v1::JOB_STATE_READY);
  auto st = stubs_->Stats("rt");
  EXPECT_EQ(st.succeeded(), 1u);
  EXPECT_EQ(st.cancelled(), 0u);
  EXPECT_EQ(st.ready(), 1u);

  // The deletion is durable: still gone after a restart.
  RestartBroker();
  EXPECT_EQ(stubs_->GetJob(short_done, &j).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(stubs_->MustGet(default_done).state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(LifecycleE2ETest, ListJobsPaginationVisitsEveryJobExactlyOnceWhileJobsAreAdded) {
  StartBroker();
  std::vector<std::string> initial;
  v1::EnqueueBatchRequest batch;
  for (int i = 0; i < 300; ++i) {
    auto* j = batch.add_jobs();
    j->set_queue("ls");
    j->set_payload(std::to_string(i));
  }
  v1::EnqueueBatchResponse br;
  ASSERT_TRUE(
      stubs_->Call(stubs_->jobs.get(), &v1::Jobs::Stub::EnqueueBatch, batch, &br).ok());
  for (auto& r : br.results()) initial.push_back(r.job_id());

  std::atomic<bool> stop{false};
  std::atomic<int> added{0};
  std::thread writer([&] {
    Stubs own(broker_->Channel());
    while (!stop.load()) {
      own.MustEnqueue("ls");
      added++;
    }
  });
  for (auto order : {v1::SORT_ORDER_OLDEST_FIRST, v1::SORT_ORDER_NEWEST_FIRST}) {
    std::map<std::string, int> seen;
    std::vector<std::string> sequence;
    v1::ListJobsRequest lr;
    lr.set_queue("ls");
    lr.set_page_size(7);
    lr.set_order(order);
    lr.set_omit_payload(true);
    for (int pages = 0; pages < 2000; ++pages) {
      v1::ListJobsResponse resp;
      grpc::Status s = stubs_->Call(stubs_->jobs.get(), &v1::Jobs::Stub::ListJobs, lr, &resp);
      ASSERT_TRUE(s.ok()) << Show(s);
      for (auto& j : resp.jobs()) {
        seen[j.id()]++;
        sequence.push_back(j.id());
        EXPECT_TRUE(j.payload().empty());
      }
      if (resp.next_page_token().empty()) break;
      lr.set_page_token(resp.next_page_token());
    }
    for (const auto& id : initial) EXPECT_EQ(seen[id], 1) << id;
    for (const auto& [id, n] : seen) EXPECT_EQ(n, 1) << id;
    if (order == v1::SORT_ORDER_OLDEST_FIRST) {
      EXPECT_TRUE(std::is_sorted(sequence.begin(), sequence.end()));
    } else {
      EXPECT_TRUE(std::is_sorted(sequence.rbegin(), sequence.rend()));
    }
  }
  stop = true;
  writer.join();
  EXPECT_GT(added.load(), 0);

  // State filter and bad input.
  v1::ListJobsRequest lr;
  lr.set_queue("ls");
  lr.set_state(v1::JOB_STATE_LEASED);
  v1::ListJobsResponse resp;
  ASSERT_TRUE(stubs_->Call(stubs_->jobs.get(), &v1::Jobs::Stub::ListJobs, lr, &resp).ok());
  EXPECT_EQ(resp.jobs_size(), 0);
  lr.set_page_token("garbage");
  grpc::Status s = stubs_->Call(stubs_->jobs.get(), &v1::Jobs::Stub::ListJobs, lr, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("page_token"), std::string::npos);
  lr.set_page_token("");
  lr.set_page_size(5000);
  s = stubs_->Call(stubs_->jobs.get(), &v1::Jobs::Stub::ListJobs, lr, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("page_size"), std::string::npos);
}

TEST_F(LifecycleE2ETest, WithAConcurrencyLimitOfOnePerKeyTwoKeysJobsAlternate) {
  StartBroker();
  v1::SetQueueConfigRequest cr;
  cr.set_queue("fair");
  cr.set_max_leased_per_key(1);
  v1::SetQueueConfigResponse cresp;
  grpc::Status s =
      stubs_->Call(stubs_->admin.get(), &v1::Admin::Stub::SetQueueConfig, cr, &cresp);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(cresp.stats().max_leased_per_key(), 1u);
  // A burst of tenant A, then tenant B.
  for (int i = 0; i < 5; ++i) stubs_->MustEnqueue("fair", "a" + std::to_string(i), "tenant-a");
  for (int i = 0; i < 5; ++i) stubs_->MustEnqueue("fair", "b" + std::to_string(i), "tenant-b");

  // One lease call asking for many gets one job per key.
  auto two = stubs_->Lease("fair", 10);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_NE(two[0].job().concurrency_key(), two[1].job().concurrency_key());
  EXPECT_TRUE(stubs_->Lease("fair", 10).empty());
  for (auto& l : two) ASSERT_TRUE(stubs_->Complete(l).ok());

  std::vector<std::string> keys;
  for (int i = 0; i < 8; ++i) {
    auto l = stubs_->Lease("fair");
    ASSERT_EQ(l.size(), 1u);
    keys.push_back(l[0].job().concurrency_key());
    ASSERT_TRUE(stubs_->Complete(l[0]).ok());
  }
  for (size_t i = 1; i < keys.size(); ++i) {
    EXPECT_NE(keys[i], keys[i - 1]) << "lease " << i << " did not alternate";
  }
  // The setting survives a restart.
  RestartBroker();
  EXPECT_EQ(stubs_->Stats("fair").max_leased_per_key(), 1u);
}

TEST_F(LifecycleE2ETest, LimitsAreEnforcedWithStatusesNamingThem) {
  StartBroker({"--max-queue-depth=2", "--max-headers-bytes=16", "--max-result-bytes=4"});
  stubs_->MustEnqueue("lim");
  stubs_->MustEnqueue("lim");
  v1::EnqueueRequest r;
  r.set_queue("lim");
  v1::EnqueueResponse resp;
  grpc::Status s = stubs_->Call(stubs_->jobs.get(), &v1::Jobs::Stub::Enqueue, r, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Show(s);
  EXPECT_NE(s.error_message().find("\"lim\""), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("2"), std::string::npos) << s.error_message();

  r.set_queue("other");
  (*r.mutable_headers())["key"] = "a value that is too long";
  s = stubs_->Call(stubs_->jobs.get(), &v1::Jobs::Stub::Enqueue, r, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
  EXPECT_NE(s.error_message().find("headers"), std::string::npos) << s.error_message();

  auto leases = stubs_->Lease("lim");
  ASSERT_EQ(leases.size(), 1u);
  s = stubs_->Complete(leases[0], "too long");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
  EXPECT_NE(s.error_message().find("result"), std::string::npos) << s.error_message();
  EXPECT_TRUE(stubs_->Complete(leases[0], "ok").ok());
}

}  // namespace
}  // namespace errand
