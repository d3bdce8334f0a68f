// End to end: configuration and logs of the real errand-broker binary. A
// config file, ERRAND_BROKER_* environment variables and flags apply in that order
// of precedence; --print-config output read back as a config file gives the
// same configuration; unknown keys stop the broker with the key's name;
// --log-format=json writes one JSON object per line; --log-level filters.

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <stdlib.h>

#include <fstream>
#include <sstream>

#include "e2e/e2e_support.h"
#include "e2e/http_support.h"

namespace errand::e2e {
namespace {

// Sets an environment variable for the scope (the broker process started in
// it inherits it).
class ScopedEnv {
 public:
  ScopedEnv(const std::string& name, const std::string& value) : name_(name) {
    ::setenv(name.c_str(), value.c_str(), 1);
  }
  ~ScopedEnv() { ::unsetenv(name_.c_str()); }

 private:
  std::string name_;
};

std::string WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

grpc::Status Batch(Client& c, const std::string& queue, int n) {
  v1::EnqueueBatchRequest req;
  for (int i = 0; i < n; ++i) *req.add_jobs() = NewJob(queue);
  v1::EnqueueBatchResponse resp;
  return c.EnqueueBatch(req, &resp);
}

TEST(ConfigE2E, FileThenEnvironmentThenFlagOnTheRealBroker) {
  testing::TempDir dir;
  std::string file = WriteFile(dir.path() + "/errand.toml",
                               "# errand-broker config\n"
                               "max-batch = 10\n"
                               "default_max_attempts = 3   # snake_case works too\n"
                               "event-retention-count = 500\n");
  std::unique_ptr<testing::BrokerProcess> broker;
  {
    ScopedEnv batch("ERRAND_BROKER_MAX_BATCH", "20");
    ScopedEnv attempts("ERRAND_BROKER_DEFAULT_MAX_ATTEMPTS", "4");
    broker = std::make_unique<testing::BrokerProcess>(
        dir.path() + "/data",
        std::vector<std::string>{"--config", file, "--default-max-attempts=6"});
    std::string error;
    ASSERT_TRUE(broker->Start(&error)) << error;
  }
  Client c(broker->Channel());
  // max-batch: the environment (20) beats the file (10).
  EXPECT_TRUE(Batch(c, "cfg", 15).ok());
  grpc::Status too_many = Batch(c, "cfg", 25);
  EXPECT_EQ(too_many.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(too_many);
  EXPECT_CONTAINS(too_many.error_message(), "20");
  // default-max-attempts: the flag (6) beats the environment (4) and the file (3).
  std::string id = c.MustEnqueue(NewJob("cfg"));
  EXPECT_EQ(c.MustGetJob(id).max_attempts(), 6u);
  // event-retention-count: only the file sets it.
  EXPECT_EQ(MetricValue(HttpGet(broker->http_port(), "/metrics").body,
                        "errand_event_retention_max_events"),
            500);
  // The startup log shows the effective configuration.
  EXPECT_CONTAINS(broker->Log(), "max-batch=20 ");
  EXPECT_CONTAINS(broker->Log(), "default-max-attempts=6 ");
  EXPECT_EQ(broker->Stop(), 0);
}

TEST(ConfigE2E, PrintConfigReadsBackAsTheSameConfiguration) {
  testing::TempDir dir;
  RunResult first = RunCommand({ERRAND_BROKER_PATH, "--print-config", "--commit=async",
                                "--sync-interval=50", "--data-dir=" + dir.path() + "/x y"},
                               {{"ERRAND_BROKER_RETENTION", "2h"}}, dir.path());
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_CONTAINS(first.out, "\ncommit = \"async\"\n");
  EXPECT_CONTAINS(first.out, "\nsync-interval = 50\n");
  EXPECT_CONTAINS(first.out, "\nretention = \"2h\"\n");
  EXPECT_CONTAINS(first.out, "\nlisten = \"127.0.0.1:7600\"\n");
  EXPECT_CONTAINS(first.out, "\nhttp-listen = \"127.0.0.1:7601\"\n");
  EXPECT_CONTAINS(first.out, "# env: ERRAND_BROKER_MAX_BATCH\n");
  EXPECT_EQ(first.err, "");

  std::string file = WriteFile(dir.path() + "/printed.toml", first.out);
  RunResult second = RunCommand({ERRAND_BROKER_PATH, "--config", file, "--print-config"}, {},
                                dir.path());
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_EQ(second.out, first.out);

  // The printed file runs a broker (the test harness's flags override its
  // addresses and data directory).
  testing::BrokerProcess broker(dir.path() + "/data", {"--config", file});
  std::string error;
  ASSERT_TRUE(broker.Start(&error)) << error;
  std::string scrape = HttpGet(broker.http_port(), "/metrics").body;
  EXPECT_EQ(MetricValue(scrape, "errand_commit_mode{mode=\"async\"}"), 1);
  EXPECT_EQ(MetricValue(scrape, "errand_commit_sync_interval_seconds"), 0.05);
  EXPECT_EQ(broker.Stop(), 0);
}

TEST(ConfigE2E, UnknownKeyStopsTheBrokerNamingIt) {
  testing::TempDir dir;
  std::string file = WriteFile(dir.path() + "/bad.toml", "listen = \"127.0.0.1:0\"\nmax-batches = 5\n");
  RunResult r = RunCommand({ERRAND_BROKER_PATH, "--config", file, "--data-dir", dir.path() + "/d"},
                           {}, dir.path());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_CONTAINS(r.err, "unknown key \"max-batches\"");
  EXPECT_CONTAINS(r.err, "line 2");
  // Nothing was started: the data directory was never created.
  EXPECT_NE(::access((dir.path() + "/d").c_str(), F_OK), 0);
}

TEST(ConfigE2E, MissingConfigFileAndBadValuesAreErrors) {
  testing::TempDir dir;
  RunResult missing = RunCommand({ERRAND_BROKER_PATH, "--print-config"},
                                 {{"ERRAND_BROKER_CONFIG", dir.path() + "/none.toml"}},
                                 dir.path());
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_CONTAINS(missing.err, "none.toml");
  RunResult bad = RunCommand({ERRAND_BROKER_PATH, "--print-config"},
                             {{"ERRAND_BROKER_COMMIT", "sometimes"}}, dir.path());
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_CONTAINS(bad.err, "--commit");
}

// The keepalive flags: a bad value stops the broker naming the flag, from the
// command line and from the config file; the file's keys set them.
TEST(ConfigE2E, KeepaliveFlagsAreValidatedAndSetByTheConfigFile) {
  testing::TempDir dir;
  struct Bad {
    std::string arg, flag;
  };
  const Bad cases[] = {
      {"--keepalive-time=500ms", "--keepalive-time must"},
      {"--keepalive-time=soon", "--keepalive-time:"},
      {"--keepalive-timeout=0", "--keepalive-timeout must"},
      {"--keepalive-timeout=2h", "--keepalive-timeout must"},
      {"--keepalive-min-client-interval=10ms", "--keepalive-min-client-interval must"},
      {"--keepalive-min-client-interval=-1s", "--keepalive-min-client-interval:"},
  };
  for (const Bad& bad : cases) {
    RunResult r = RunCommand({ERRAND_BROKER_PATH, bad.arg, "--data-dir", dir.path() + "/d"}, {},
                             dir.path());
    EXPECT_EQ(r.exit_code, 2) << bad.arg << ": " << r.err;
    EXPECT_CONTAINS(r.err, bad.flag);
  }
  // Nothing was started: the data directory was never created.
  EXPECT_NE(::access((dir.path() + "/d").c_str(), F_OK), 0);

  std::string bad_file = WriteFile(dir.path() + "/bad.toml", "keepalive-timeout = \"50ms\"\n");
  RunResult r = RunCommand({ERRAND_BROKER_PATH, "--config", bad_file, "--print-config"}, {},
                           dir.path());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_CONTAINS(r.err, "--keepalive-timeout must");

  std::string file = WriteFile(dir.path() + "/ka.toml",
                               "keepalive-time = \"45s\"\n"
                               "keepalive_timeout = \"3s\"\n"
                               "keepalive-min-client-interval = \"2s\"\n");
  RunResult printed = RunCommand({ERRAND_BROKER_PATH, "--config", file, "--print-config"}, {},
                                 dir.path());
  ASSERT_EQ(printed.exit_code, 0) << printed.err;
  EXPECT_CONTAINS(printed.out, "\nkeepalive-time = \"45s\"\n");
  EXPECT_CONTAINS(printed.out, "\nkeepalive-timeout = \"3s\"\n");
  EXPECT_CONTAINS(printed.out, "\nkeepalive-min-client-interval = \"2s\"\n");
  EXPECT_CONTAINS(printed.out, "# env: ERRAND_BROKER_KEEPALIVE_TIME\n");
  // The defaults, as --help shows them.
  RunResult help = RunCommand({ERRAND_BROKER_PATH, "--help"}, {}, dir.path());
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_CONTAINS(help.out, "--keepalive-time TEXT=30s ");
  EXPECT_CONTAINS(help.out, "--keepalive-timeout TEXT=10s ");
  EXPECT_CONTAINS(help.out, "--keepalive-min-client-interval TEXT=5s ");
}

TEST(ConfigE2E, HelpNamesEachFlagsEnvironmentVariable) {
  testing::TempDir dir;
  RunResult r = RunCommand({ERRAND_BROKER_PATH, "--help"}, {}, dir.path());
  EXPECT_EQ(r.exit_code, 0);
  for (const char* env :
       {"ERRAND_BROKER_LISTEN", "ERRAND_BROKER_DATA_DIR", "ERRAND_BROKER_MAX_BATCH",
        "ERRAND_BROKER_HTTP_LISTEN", "ERRAND_BROKER_LOG_FORMAT", "ERRAND_BROKER_CONFIG"}) {
    EXPECT_CONTAINS(r.out, env);
  }
  EXPECT_CONTAINS(r.out, "--print-config");
}

class JsonLogsE2E : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override { return {"--log-format=json"}; }
};

TEST_F(JsonLogsE2E, EveryLineParsesAsJson) {
  client().MustEnqueue(NewJob("json-q", "SECRET-PAYLOAD"));
  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(10s));
  v1::PauseQueueRequest pause;
  pause.set_queue("json-q");
  v1::PauseQueueResponse presp;
  ASSERT_TRUE(client().admin->PauseQueue(&ctx, pause, &presp).ok());
  client_.reset();
  ASSERT_EQ(broker_->Stop(), 0);

  std::istringstream log(broker_->Log());
  int lines = 0;
  std::string all_msgs;
  for (std::string line; std::getline(log, line);) {
    google::protobuf::Struct obj;
    auto s = google::protobuf::util::JsonStringToMessage(line, &obj);
    ASSERT_TRUE(s.ok()) << "not JSON: " << line << " (" << s.ToString() << ")";
    const auto& f = obj.fields();
    ASSERT_TRUE(f.count("time") && f.count("level") && f.count("msg")) << line;
    EXPECT_EQ(f.at("time").string_value().back(), 'Z') << line;
    all_msgs += f.at("msg").string_value() + "\n";
    ++lines;
  }
  EXPECT_GE(lines, 4);
  EXPECT_CONTAINS(all_msgs, "effective config: listen=\"127.0.0.1:0\"");
  // jemalloc in a normal build, glibc's malloc with sanitizers (CMakeLists).
  EXPECT_CONTAINS(all_msgs, "allocator: " ERRAND_BROKER_ALLOCATOR);
#ifdef ERRAND_BROKER_JEMALLOC
  // tools/jemalloc/malloc_conf.cc took effect.
  EXPECT_CONTAINS(all_msgs, ", 2 arenas, background purging");
#endif
  EXPECT_CONTAINS(all_msgs, "queue json-q paused");
  EXPECT_CONTAINS(all_msgs, "shutdown complete");
  EXPECT_NOT_CONTAINS(broker_->Log(), "SECRET-PAYLOAD");
}

class WarnLevelE2E : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override { return {"--log-level=warn"}; }
};

TEST_F(WarnLevelE2E, InfoLinesAreNotWritten) {
  client().MustEnqueue(NewJob("quiet-q"));
  client_.reset();
  ASSERT_EQ(broker_->Stop(), 0);
  EXPECT_NOT_CONTAINS(broker_->Log(), "effective config");
  EXPECT_NOT_CONTAINS(broker_->Log(), "serving on port");
  EXPECT_NOT_CONTAINS(broker_->Log(), "shutdown complete");
}

}  // namespace
}  // namespace errand::e2e
