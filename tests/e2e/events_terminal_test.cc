// End to end: every terminal state (SUCCEEDED, DEAD, CANCELLED) reaches the
// three ways of learning about it at once: an Events.Subscribe subscriber
// filtered by queue, a Jobs.WaitJob long poller, and the Jobs.EnqueueAndWatch
// caller that created the job. Plus WaitJob's timeout answer.

#include <algorithm>
#include <functional>
#include <future>
#include <set>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

class EventsE2ETerminal : public BrokerTest {
 protected:
  struct Case {
    std::string queue;
    v1::EnqueueRequest job;
    // Drives the job to its terminal state; returns when the terminal change
    // was acknowledged.
    std::function<void(const std::string& id)> drive;
    v1::JobState final_state;
    // The events the watcher sees after `accepted` (the subscriber sees
    // EVENT_TYPE_ENQUEUED first, then these).
    std::vector<v1::EventType> watch_types;
    // Checks the terminal event (its job snapshot carries result or error).
    std::function<void(const v1::Event&)> check_terminal = [](const v1::Event&) {};
  };

  // Runs one case and checks all three observers.
  void Run(Case c) {
    SCOPED_TRACE("queue " + c.queue);
    const uint64_t head = HeadSeq(client());
    ASSERT_GT(head, 0u);
    // 1. A subscriber of the queue, from the current head (no start race).
    auto sub_client = NewClient();
    EventStream sub(sub_client->events.get(), SubscribeReq({c.queue}, {}, head));

    // 2. The EnqueueAndWatch caller creates the job.
    auto watch_client = NewClient();
    grpc::ClientContext wctx;
    wctx.set_deadline(testing::In(30s));
    auto watch = watch_client->jobs->EnqueueAndWatch(&wctx, c.job);
    v1::WatchJobResponse first;
    ASSERT_TRUE(watch->Read(&first)) << "EnqueueAndWatch ended before `accepted`: "
                                     << Show(watch->Finish());
    ASSERT_TRUE(first.has_accepted()) << first.DebugString();
    const std::string id = first.accepted().job_id();
    ASSERT_EQ(id.size(), 16u) << first.DebugString();
    EXPECT_EQ(first.accepted().durability(), v1::DURABILITY_SYNC);
    EXPECT_GT(first.accepted().commit_seq(), 0u);
    TimedQueue<v1::WatchJobResponse> watched;
    std::thread watch_thread([&] {
      v1::WatchJobResponse m;
      while (watch->Read(&m)) watched.Push(m);
      watched.Close(watch->Finish());
    });

    // 3. A long poller, started before anything happens to the job.
    auto wait_client = NewClient();
    std::promise<Clock::time_point> woke;
    auto woke_at = woke.get_future();
    v1::WaitJobResponse waited;
    grpc::Status wait_status;
    const auto wait_start = Clock::now();
    std::thread wait_thread([&] {
      wait_status = WaitJob(*wait_client, id, 20s, &waited);
      woke.set_value(Clock::now());
    });
    // The poller is parked: nothing is terminal yet.
    EXPECT_EQ(woke_at.wait_for(300ms), std::future_status::timeout)
        << "WaitJob returned before the job was terminal: " << waited.DebugString();

    c.drive(id);
    const auto terminal_at = Clock::now();

    // The long poller: done=true within a second of the change.
    ASSERT_EQ(woke_at.wait_for(10s), std::future_status::ready) << "WaitJob did not return";
    const auto wake = woke_at.get();
    wait_thread.join();
    ASSERT_TRUE(wait_status.ok()) << Show(wait_status);
    EXPECT_TRUE(waited.done());
    EXPECT_EQ(waited.job().id(), id);
    EXPECT_EQ(waited.job().state(), c.final_state);
    EXPECT_LT(std::chrono::duration_cast<std::chrono::milliseconds>(wake - terminal_at).count(),
              1000)
        << "WaitJob returned long after the job became terminal";
    EXPECT_GE(std::chrono::duration_cast<std::chrono::milliseconds>(wake - wait_start).count(),
              250);

    // The watcher: every event of the job, the terminal one last, then OK.
    std::vector<v1::Event> wevents;
    for (int i = 0; i < 100; ++i) {
      auto m = watched.Next(10s);
      if (!m) break;
      ASSERT_TRUE(m->has_event()) << "second `accepted`: " << m->DebugString();
      wevents.push_back(m->event());
    }
    grpc::Status wend;
    ASSERT_TRUE(watched.WaitClosed(10s, &wend)) << "EnqueueAndWatch did not end";
    watch_thread.join();
    EXPECT_TRUE(wend.ok()) << Show(wend);
    std::vector<v1::EventType> wtypes;
    for (const auto& e : wevents) {
      wtypes.push_back(e.type());
      EXPECT_EQ(e.job_id(), id);
      EXPECT_EQ(e.queue(), c.queue);
    }
    EXPECT_EQ(wtypes, c.watch_types);
    for (size_t i = 1; i < wevents.size(); ++i) EXPECT_GT(wevents[i].seq(), wevents[i - 1].seq());
    ASSERT_FALSE(wevents.empty());
    EXPECT_EQ(wevents.back().job().state(), c.final_state);
    c.check_terminal(wevents.back());

    // The subscriber: ENQUEUED, then the same events with the same seqs.
    std::vector<v1::Event> sevents;
    for (int i = 0; i < 100; ++i) {
      auto e = sub.Next(10s);
      ASSERT_TRUE(e.has_value()) << "subscriber got " << sevents.size() << " events, then nothing";
      EXPECT_EQ(e->job_id(), id) << e->DebugString();
      EXPECT_NE(e->type(), v1::EVENT_TYPE_MESSAGE);
      sevents.push_back(*e);
      if (e->job().state() == c.final_state && e->type() != v1::EVENT_TYPE_ENQUEUED &&
          e->type() != v1::EVENT_TYPE_CANCEL_REQUESTED) {
        break;
      }
    }
    ASSERT_FALSE(sevents.empty());
    EXPECT_EQ(sevents.front().type(), v1::EVENT_TYPE_ENQUEUED);
    EXPECT_GT(sevents.front().seq(), head);
    std::vector<v1::EventType> stypes;
    for (size_t i = 1; i < sevents.size(); ++i) stypes.push_back(sevents[i].type());
    EXPECT_EQ(stypes, c.watch_types);
    if (sevents.size() == wevents.size() + 1) {
      for (size_t i = 0; i < wevents.size(); ++i) {
        EXPECT_EQ(sevents[i + 1].seq(), wevents[i].seq()) << "event " << i;
      }
    }
    EXPECT_EQ(sevents.back().job().state(), c.final_state);
    c.check_terminal(sevents.back());
    // Nothing more for this job.
    auto extra = sub.Next(200ms);
    EXPECT_FALSE(extra.has_value()) << extra->DebugString();

    EXPECT_EQ(client().MustGetJob(id).state(), c.final_state);
  }
};

TEST_F(EventsE2ETerminal, SucceededReachesSubscriberWaiterAndWatcher) {
  Case c;
  c.queue = "term-ok";
  c.job = NewJob(c.queue, "p");
  c.final_state = v1::JOB_STATE_SUCCEEDED;
  c.watch_types = {v1::EVENT_TYPE_LEASED, v1::EVENT_TYPE_PROGRESS, v1::EVENT_TYPE_SUCCEEDED};
  c.check_terminal = [](const v1::Event& e) {
    EXPECT_EQ(e.job().result(), "the-result");
    EXPECT_EQ(e.job().progress().message(), "half");
    EXPECT_EQ(e.attempt(), 1u);
  };
  c.drive = [&](const std::string& id) {
    v1::Lease l = client().MustLeaseOne("term-ok", 5s, "w1");
    ASSERT_EQ(l.job().id(), id);
    v1::ExtendRequest ext;
    ext.set_job_id(id);
    ext.set_lease_token(l.lease_token());
    ext.mutable_progress()->set_fraction(0.5);
    ext.mutable_progress()->set_message("half");
    v1::ExtendResponse er;
    ASSERT_TRUE(client().Extend(ext, &er).ok());
    v1::Job done;
    grpc::Status s = client().Complete(id, l.lease_token(), "the-result", &done);
    ASSERT_TRUE(s.ok()) << Show(s);
  };
  Run(c);
}

TEST_F(EventsE2ETerminal, DeadReachesSubscriberWaiterAndWatcher) {
  Case c;
  c.queue = "term-dead";
  c.job = NewJob(c.queue, "p");
  c.job.set_max_attempts(2);
  c.final_state = v1::JOB_STATE_DEAD;
  c.watch_types = {v1::EVENT_TYPE_LEASED, v1::EVENT_TYPE_RETRY_SCHEDULED, v1::EVENT_TYPE_LEASED,
                   v1::EVENT_TYPE_DEAD};
  c.check_terminal = [](const v1::Event& e) {
    EXPECT_EQ(e.job().error(), "second failure");
    EXPECT_EQ(e.attempt(), 2u);
    EXPECT_EQ(e.job().history_size(), 2);
  };
  c.drive = [&](const std::string& id) {
    v1::Lease l1 = client().MustLeaseOne("term-dead", 5s, "w1");
    ASSERT_EQ(l1.job().id(), id);
    v1::FailRequest f;
    f.set_job_id(id);
    f.set_lease_token(l1.lease_token());
    f.set_error("first failure");
    *f.mutable_retry_after() = Dur(50ms);
    ASSERT_TRUE(client().Fail(f).ok());
    v1::Lease l2 = client().MustLeaseOne("term-dead", 5s, "w2");
    ASSERT_EQ(l2.job().id(), id);
    f.set_lease_token(l2.lease_token());
    f.set_error("second failure");
    v1::Job dead;
    ASSERT_TRUE(client().Fail(f, &dead).ok());
    ASSERT_EQ(dead.state(), v1::JOB_STATE_DEAD);
  };
  Run(c);
}

TEST_F(EventsE2ETerminal, CancelledWhileReadyReachesSubscriberWaiterAndWatcher) {
  Case c;
  c.queue = "term-cancel";
  c.job = NewJob(c.queue, "p");
  c.final_state = v1::JOB_STATE_CANCELLED;
  c.watch_types = {v1::EVENT_TYPE_CANCELLED};
  c.check_terminal = [](const v1::Event& e) { EXPECT_EQ(e.job().error(), "not needed"); };
  c.drive = [&](const std::string& id) {
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(10s));
    v1::CancelJobRequest req;
    req.set_job_id(id);
    req.set_reason("not needed");
    v1::CancelJobResponse resp;
    grpc::Status s = client().jobs->CancelJob(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << Show(s);
    ASSERT_EQ(resp.job().state(), v1::JOB_STATE_CANCELLED);
  };
  Run(c);
}

// A LEASED job's cancel is a request (EVENT_TYPE_CANCEL_REQUESTED, an event
// of the job like any other), then CANCELLED when its worker fails it.
TEST_F(EventsE2ETerminal, CancelledWhileLeasedReachesSubscriberWaiterAndWatcher) {
  Case c;
  c.queue = "term-cancel-leased";
  c.job = NewJob(c.queue, "p");
  c.final_state = v1::JOB_STATE_CANCELLED;
  c.watch_types = {v1::EVENT_TYPE_LEASED, v1::EVENT_TYPE_CANCEL_REQUESTED,
                   v1::EVENT_TYPE_CANCELLED};
  c.drive = [&](const std::string& id) {
    v1::Lease l = client().MustLeaseOne("term-cancel-leased", 5s, "w1");
    ASSERT_EQ(l.job().id(), id);
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(10s));
    v1::CancelJobRequest req;
    req.set_job_id(id);
    v1::CancelJobResponse resp;
    grpc::Status s = client().jobs->CancelJob(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << Show(s);
    ASSERT_EQ(resp.job().state(), v1::JOB_STATE_LEASED);
    ASSERT_TRUE(resp.job().cancel_requested());
    v1::ExtendResponse er;
    ASSERT_TRUE(client().Extend(id, l.lease_token(), &er).ok());
    EXPECT_TRUE(er.cancel_requested());
    v1::Job job;
    ASSERT_TRUE(client().Fail(id, l.lease_token(), "stopped", &job).ok());
    ASSERT_EQ(job.state(), v1::JOB_STATE_CANCELLED);
  };
  Run(c);
}

TEST_F(EventsE2ETerminal, WaitJobTimeoutAnswersCurrentState) {
  const std::string id = client().MustEnqueue(NewJob("wait-timeout"));
  // READY: the wait ends at its timeout with done=false.
  auto start = Clock::now();
  v1::WaitJobResponse r;
  grpc::Status s = WaitJob(client(), id, 300ms, &r);
  auto took = Since(start);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_FALSE(r.done());
  EXPECT_EQ(r.job().id(), id);
  EXPECT_EQ(r.job().state(), v1::JOB_STATE_READY);
  EXPECT_GE(took.count(), 280);
  EXPECT_LT(took.count(), 3000);

  // LEASED: the same, with the lease visible.
  v1::Lease l = client().MustLeaseOne("wait-timeout", 0ms, "w");
  start = Clock::now();
  s = WaitJob(client(), id, 300ms, &r);
  took = Since(start);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_FALSE(r.done());
  EXPECT_EQ(r.job().state(), v1::JOB_STATE_LEASED);
  EXPECT_EQ(r.job().attempts(), 1u);
  EXPECT_GE(took.count(), 280);
  EXPECT_LT(took.count(), 3000);

  // Terminal: answered at once with done=true.
  ASSERT_TRUE(client().Complete(id, l.lease_token(), "r").ok());
  start = Clock::now();
  s = WaitJob(client(), id, 20s, &r);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_TRUE(r.done());
  EXPECT_EQ(r.job().state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(r.job().result(), "r");
  EXPECT_LT(Since(start).count(), 1000);

  // Unknown job: NOT_FOUND.
  s = WaitJob(client(), "00000000000000ff", 100ms, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << Show(s);
}

TEST_F(EventsE2ETerminal, ManyWaitersAllWakeAtCompletion) {
  const std::string id = client().MustEnqueue(NewJob("many-waiters"));
  constexpr int kWaiters = 64;
  auto wc = NewClient();
  std::vector<std::future<std::pair<grpc::Status, v1::WaitJobResponse>>> waits;
  for (int i = 0; i < kWaiters; ++i) {
    waits.push_back(std::async(std::launch::async, [&] {
      v1::WaitJobResponse r;
      grpc::Status s = WaitJob(*wc, id, 20s, &r);
      return std::make_pair(s, r);
    }));
  }
  std::this_thread::sleep_for(300ms);
  v1::Lease l = client().MustLeaseOne("many-waiters", 0ms, "w");
  ASSERT_TRUE(client().Complete(id, l.lease_token(), "done").ok());
  const auto completed = Clock::now();
  for (auto& f : waits) {
    ASSERT_EQ(f.wait_until(completed + 5s), std::future_status::ready);
    auto [s, r] = f.get();
    ASSERT_TRUE(s.ok()) << Show(s);
    EXPECT_TRUE(r.done());
    EXPECT_EQ(r.job().state(), v1::JOB_STATE_SUCCEEDED);
  }
  EXPECT_LT(Since(completed).count(), 2000);
}

}  // namespace
}  // namespace errand::e2e
