// errand-worker, errandctl and the examples, run as processes against the
// real broker.

#include <fstream>
#include <thread>

#include "e2e/client_support.h"
#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

class ClientToolsTest : public BrokerTest {
 protected:
  // errandctl ARGS... against the test broker.
  RunResult Ctl(std::vector<std::string> args, const std::string& input = "") {
    args.insert(args.begin(), {ERRANDCTL_PATH, "--addr", broker_->address()});
    return RunProgram(args, input, {}, 30s);
  }
  std::unique_ptr<BackgroundProgram> StartWorker(std::vector<std::string> flags,
                                                 std::vector<std::string> command) {
    std::vector<std::string> argv = {ERRAND_WORKER_PATH, "--addr", broker_->address()};
    argv.insert(argv.end(), flags.begin(), flags.end());
    argv.push_back("--");
    argv.insert(argv.end(), command.begin(), command.end());
    return std::make_unique<BackgroundProgram>(argv);
  }
  v1::Job WaitDone(const std::string& id, std::chrono::milliseconds timeout = 20s) {
    auto start = Clock::now();
    v1::Job job;
    while (Since(start) < testing::Scaled(timeout)) {
      job = client().MustGetJob(id);
      if (job.state() == v1::JOB_STATE_SUCCEEDED || job.state() == v1::JOB_STATE_DEAD ||
          job.state() == v1::JOB_STATE_CANCELLED) {
        break;
      }
      std::this_thread::sleep_for(20ms);
    }
    return job;
  }
};

TEST_F(ClientToolsTest, WorkerDaemonRunsTheCommandPerJob) {
  auto w = StartWorker({"--queue", "sh", "--concurrency", "2"}, {"/bin/sh", "-c", "cat; echo"});
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(client().MustEnqueue(NewJob("sh", "payload-" + std::to_string(i))));
  for (int i = 0; i < 6; ++i) {
    auto job = WaitDone(ids[i]);
    EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << w->Log();
    EXPECT_EQ(job.result(), "payload-" + std::to_string(i) + "\n");
  }
  EXPECT_NE(w->Log().find("job=" + ids[0]), std::string::npos) << w->Log();
}

TEST_F(ClientToolsTest, WorkerDaemonPassesJobEnvironment) {
  auto w = StartWorker({"--queue", "env"},
                       {"/bin/sh", "-c", "printf '%s %s %s' \"$ERRAND_JOB_ID\" \"$ERRAND_QUEUE\" \"$ERRAND_ATTEMPT\""});
  auto id = client().MustEnqueue(NewJob("env"));
  auto job = WaitDone(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << w->Log();
  EXPECT_EQ(job.result(), id + " env 1");
}

TEST_F(ClientToolsTest, WorkerDaemonFailsNonZeroExitWithStderrTail) {
  auto w = StartWorker({"--queue", "bad"}, {"/bin/sh", "-c", "echo partial; echo 'it broke' >&2; exit 3"});
  auto job = NewJob("bad");
  job.set_max_attempts(1);
  auto id = client().MustEnqueue(job);
  auto done = WaitDone(id);
  EXPECT_EQ(done.state(), v1::JOB_STATE_DEAD) << w->Log();
  EXPECT_NE(done.error().find("exit code 3"), std::string::npos) << done.error();
  EXPECT_NE(done.error().find("it broke"), std::string::npos) << done.error();
}

TEST_F(ClientToolsTest, WorkerDaemonKillsJobPastTimeout) {
  auto w = StartWorker({"--queue", "slow", "--timeout", "500ms"}, {"/bin/sh", "-c", "sleep 30"});
  auto job = NewJob("slow");
  job.set_max_attempts(1);
  auto id = client().MustEnqueue(job);
  auto start = Clock::now();
  auto done = WaitDone(id, 15s);
  EXPECT_LT(Since(start), testing::Scaled(10s));
  EXPECT_EQ(done.state(), v1::JOB_STATE_DEAD) << w->Log();
  EXPECT_NE(done.error().find("timed out"), std::string::npos) << done.error();
}

TEST_F(ClientToolsTest, WorkerDaemonDrainsOnSigterm) {
  auto w = StartWorker({"--queue", "drain", "--grace", "10s"}, {"/bin/sh", "-c", "sleep 1; cat"});
  auto id = client().MustEnqueue(NewJob("drain", "finished anyway"));
  auto start = Clock::now();
  while (client().MustGetJob(id).state() != v1::JOB_STATE_LEASED &&
         Since(start) < testing::Scaled(10s)) {
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_EQ(client().MustGetJob(id).state(), v1::JOB_STATE_LEASED);
  w->Signal(SIGTERM);
  EXPECT_EQ(w->Wait(15s), 0) << w->Log();
  auto job = client().MustGetJob(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << w->Log();
  EXPECT_EQ(job.result(), "finished anyway");
  // It took no new job after SIGTERM.
  auto later = client().MustEnqueue(NewJob("drain"));
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(client().MustGetJob(later).state(), v1::JOB_STATE_READY);
}

TEST_F(ClientToolsTest, ErrandctlEnqueueGetWait) {
  auto r = Ctl({"enqueue", "ctl", "hello"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string id = r.out.substr(0, r.out.find('\n'));
  EXPECT_EQ(client().MustGetJob(id).payload(), "hello");
  // From stdin and from a file.
  r = Ctl({"enqueue", "ctl"}, "from stdin");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(client().MustGetJob(r.out.substr(0, 16)).payload(), "from stdin");
  std::string file = dir_.path() + "/payload.bin";
  std::ofstream(file) << "from a file";
  r = Ctl({"enqueue", "ctl", "@" + file});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(client().MustGetJob(r.out.substr(0, 16)).payload(), "from a file");

  r = Ctl({"get", id});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("READY"), std::string::npos) << r.out;
  r = Ctl({"--json", "get", id});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"id\":\"" + id + "\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("JOB_STATE_READY"), std::string::npos) << r.out;

  r = Ctl({"get", "00000000000000ff"});
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  r = Ctl({"wait", id, "--timeout", "200ms"});
  EXPECT_EQ(r.exit_code, 5) << r.out << r.err;

  auto lease = client().MustLeaseOne("ctl");
  ASSERT_TRUE(client().Complete(lease.job().id(), lease.lease_token(), "res").ok());
  r = Ctl({"wait", lease.job().id(), "--timeout", "5s"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("SUCCEEDED"), std::string::npos) << r.out;

  auto dead_job = NewJob("ctl-dead");
  dead_job.set_max_attempts(1);
  auto dead_id = client().MustEnqueue(dead_job);
  auto dl = client().MustLeaseOne("ctl-dead");
  ASSERT_TRUE(client().Fail(dl.job().id(), dl.lease_token(), "nope").ok());
  r = Ctl({"wait", dead_id});
  EXPECT_EQ(r.exit_code, 7) << r.out << r.err;
}

TEST_F(ClientToolsTest, ErrandctlExitCodesOnErrors) {
  auto r = Ctl({});
  EXPECT_EQ(r.exit_code, 1);
  r = Ctl({"frobnicate"});
  EXPECT_EQ(r.exit_code, 1);
  r = Ctl({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("Exit codes"), std::string::npos) << r.out;
  for (const char* sub : {"enqueue", "get", "wait", "watch", "cancel", "queues", "stats", "pause",
                          "resume", "purge", "dead", "redrive", "health"}) {
    r = Ctl({sub, "--help"});
    EXPECT_EQ(r.exit_code, 0) << sub;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << sub << ": " << r.out;
  }
  r = Ctl({"enqueue", "bad queue!", "x"});
  EXPECT_EQ(r.exit_code, 6) << r.err;
  r = RunProgram({ERRANDCTL_PATH, "--addr", "127.0.0.1:1", "--rpc-timeout", "300ms", "get",
                  "00000000000000ff"});
  EXPECT_EQ(r.exit_code, 4) << r.err;
  r = RunProgram({ERRANDCTL_PATH, "--rpc-timeout", "300ms", "get", "00000000000000ff"}, "",
                 {"ERRAND_ADDR=" + broker_->address()});
  EXPECT_EQ(r.exit_code, 2) << r.err;
}

TEST_F(ClientToolsTest, ErrandctlAdminCommands) {
  for (int i = 0; i < 3; ++i) client().MustEnqueue(NewJob("adm"));
  auto r = Ctl({"queues"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("adm"), std::string::npos) << r.out;
  r = Ctl({"--json", "stats", "adm"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"ready\":\"3\""), std::string::npos) << r.out;
  r = Ctl({"stats", "adm"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = Ctl({"health"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("SERVING"), std::string::npos) << r.out;

  r = Ctl({"pause", "adm"});
  if (r.exit_code == 1 && r.err.find("UNIMPLEMENTED") != std::string::npos) {
    GTEST_SKIP() << "broker has no PauseQueue yet";
  }
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(client().Stats("adm").paused());
  r = Ctl({"resume", "adm"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(client().Stats("adm").paused());
  r = Ctl({"purge", "adm"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("purged 3"), std::string::npos) << r.out;

  auto dj = NewJob("adm-dead");
  dj.set_max_attempts(1);
  auto id = client().MustEnqueue(dj);
  auto l = client().MustLeaseOne("adm-dead");
  ASSERT_TRUE(client().Fail(l.job().id(), l.lease_token(), "dead on arrival").ok());
  r = Ctl({"dead", "adm-dead"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find(id), std::string::npos) << r.out;
  r = Ctl({"redrive", "adm-dead", id});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(client().MustGetJob(id).state(), v1::JOB_STATE_READY);
  r = Ctl({"redrive", "adm-dead", id});  // not DEAD any more
  EXPECT_EQ(r.exit_code, 3) << r.out << r.err;

  r = Ctl({"cancel", id});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = Ctl({"cancel", id});  // already CANCELLED
  EXPECT_EQ(r.exit_code, 3) << r.out << r.err;
  r = Ctl({"cancel", "00000000000000ff"});
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
}

TEST_F(ClientToolsTest, ErrandctlWatchStreamsEvents) {
  auto id = client().MustEnqueue(NewJob("watch"));
  auto lease = client().MustLeaseOne("watch");
  ASSERT_TRUE(client().Complete(id, lease.lease_token(), "").ok());
  auto r = Ctl({"watch", "--queue", "watch", "--from-oldest", "--count", "3"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("ENQUEUED"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("LEASED"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("SUCCEEDED"), std::string::npos) << r.out;
  r = Ctl({"--json", "watch", "--job", id, "--type", "succeeded", "--from-oldest", "--count", "1"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("EVENT_TYPE_SUCCEEDED"), std::string::npos) << r.out;
  r = Ctl({"watch", "--after", "99999999", "--count", "1"});
  EXPECT_EQ(r.exit_code, 6) << r.out << r.err;  // OUT_OF_RANGE
}

TEST_F(ClientToolsTest, ExamplesRun) {
  BackgroundProgram worker({ERRAND_EXAMPLE_WORKER, broker_->address(), "ex", "32"});
  auto p = RunProgram({ERRAND_EXAMPLE_PRODUCER, broker_->address(), "ex", "30"}, "", {}, 60s);
  EXPECT_EQ(p.exit_code, 0) << p.out << p.err;
  EXPECT_NE(p.out.find("SUCCEEDED result=LAST"), std::string::npos) << p.out;
  EXPECT_EQ(worker.Wait(30s), 0) << worker.Log();
  auto s = RunProgram({ERRAND_EXAMPLE_SUBSCRIBER, broker_->address(), "ex", "10"}, "", {}, 60s);
  EXPECT_EQ(s.exit_code, 0) << s.out << s.err;
  EXPECT_NE(s.out.find("EVENT_TYPE_ENQUEUED"), std::string::npos) << s.out;
}

}  // namespace
}  // namespace errand::e2e
