// TLS, mutual TLS and bearer tokens with roles, against the real broker:
// handshakes with and without client certificates (made at test time with
// the openssl command), every role against every RPC, queue patterns,
// token reload on SIGHUP, the non-loopback rule, and the tools' options.

#include <signal.h>
#include <sys/stat.h>

#include <functional>

#include "e2e/client_support.h"
#include "e2e/e2e_support.h"
#include "errand/client.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"

namespace errand::e2e {
namespace {

// ---------------------------------------------------------------------------
// Certificates and token files.

// Runs a shell command line; fails the test with its output when it fails.
void Sh(const std::string& command) {
  RunResult r = RunProgram({"/bin/sh", "-c", command}, "", {}, 60s);
  ASSERT_EQ(r.exit_code, 0) << command << "\n" << r.out << r.err;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& text, mode_t mode = 0600) {
  std::ofstream(path, std::ios::trunc) << text;
  ::chmod(path.c_str(), mode);
}

// A test CA, a server certificate for 127.0.0.1/localhost, a client
// certificate from the same CA, and a client certificate from another CA.
// EC P-256 keys: quick to make.
struct Certs {
  std::string dir;
  std::string ca, server_cert, server_key, client_cert, client_key;
  std::string rogue_ca, rogue_cert, rogue_key;

  void Make(const std::string& d) {
    dir = d;
    ca = d + "/ca.pem";
    server_cert = d + "/server.pem";
    server_key = d + "/server.key";
    client_cert = d + "/client.pem";
    client_key = d + "/client.key";
    rogue_ca = d + "/rogue-ca.pem";
    rogue_cert = d + "/rogue.pem";
    rogue_key = d + "/rogue.key";
    const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    std::string c = "set -e; cd '" + d + "'\n";
    c += "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > server.ext\n";
    c += "printf 'extendedKeyUsage=clientAuth\\n' > client.ext\n";
    for (const char* ca_name : {"ca", "rogue-ca"}) {
      c += "openssl req -x509 " + key + " -keyout " + ca_name + ".key -out " + ca_name +
           ".pem -days 2 -subj /CN=" + ca_name + " 2>/dev/null\n";
    }
    auto signed_cert = [&](const std::string& name, const std::string& by, const std::string& cn,
                           const std::string& ext) {
      return "openssl req " + key + " -keyout " + name + ".key -out " + name + ".csr -subj /CN=" +
             cn + " 2>/dev/null\nopenssl x509 -req -in " + name + ".csr -CA " + by +
             ".pem -CAkey " + by + ".key -CAcreateserial -days 2 -extfile " + ext + " -out " +
             name + ".pem 2>/dev/null\n";
    };
    c += signed_cert("server", "ca", "localhost", "server.ext");
    c += signed_cert("client", "ca", "worker-1", "client.ext");
    c += signed_cert("rogue", "rogue-ca", "intruder", "client.ext");
    Sh(c);
  }
};

std::shared_ptr<grpc::ChannelCredentials> Tls(const std::string& ca, const std::string& cert = "",
                                              const std::string& key = "") {
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = Slurp(ca);
  if (!cert.empty()) {
    o.pem_cert_chain = Slurp(cert);
    o.pem_private_key = Slurp(key);
  }
  return grpc::SslCredentials(o);
}

std::shared_ptr<grpc::Channel> ChannelTo(const std::string& address,
                                         std::shared_ptr<grpc::ChannelCredentials> creds) {
  grpc::ChannelArguments args;
  args.SetInt("grpc.use_local_subchannel_pool", 1);
  return grpc::CreateCustomChannel(address, std::move(creds), args);
}

// The tokens of the role tests. Each is at least 16 characters.
constexpr const char* kProducerToken = "producer-token-0123456789";
constexpr const char* kWorkerToken = "worker-token-0123456789";
constexpr const char* kSubscriberToken = "subscriber-token-0123456789";
constexpr const char* kAdminToken = "admin-token-0123456789";
constexpr const char* kBillingToken = "billing-token-0123456789";
constexpr const char* kBillingAdminToken = "billing-admin-token-0123456789";

const char* kTokenFile =
    "# name          roles                        token                    queues\n"
    "producer        producer                     producer-token-0123456789\n"
    "worker          worker                       worker-token-0123456789\n"
    "subscriber      subscriber                   subscriber-token-0123456789\n"
    "admin           admin                        admin-token-0123456789\n"
    "billing         producer,worker,subscriber   billing-token-0123456789  billing-*,ledger\n"
    "billing-admin   admin                        billing-admin-token-0123456789  billing-*\n";

// ---------------------------------------------------------------------------
// Calls carrying a token.

std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token,
                                         std::chrono::milliseconds timeout = 5s) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(testing::In(timeout));
  if (!token.empty()) c->AddMetadata("authorization", "Bearer " + token);
  return c;
}

struct Stubs {
  explicit Stubs(const std::shared_ptr<grpc::Channel>& ch)
      : jobs(v1::Jobs::NewStub(ch)),
        workers(v1::Workers::NewStub(ch)),
        events(v1::Events::NewStub(ch)),
        admin(v1::Admin::NewStub(ch)) {}
  std::unique_ptr<v1::Jobs::Stub> jobs;
  std::unique_ptr<v1::Workers::Stub> workers;
  std::unique_ptr<v1::Events::Stub> events;
  std::unique_ptr<v1::Admin::Stub> admin;
};

grpc::Status Enqueue(Stubs& s, const std::string& token, const std::string& queue,
                     std::string* id = nullptr) {
  v1::EnqueueResponse resp;
  grpc::Status st = s.jobs->Enqueue(Ctx(token).get(), NewJob(queue, "x"), &resp);
  if (id) *id = resp.job_id();
  return st;
}

// Opens EnqueueStream, sends `queues` (one job each, request_id = index + 1),
// reads the answers into `answers`, closes, and returns the final status.
grpc::Status EnqueueStream(Stubs& s, const std::string& token,
                           const std::vector<std::string>& queues,
                           std::vector<v1::EnqueueStreamResponse>* answers = nullptr) {
  auto ctx = Ctx(token);
  auto stream = s.jobs->EnqueueStream(ctx.get());
  v1::EnqueueStreamRequest req;
  for (size_t i = 0; i < queues.size(); ++i) {
    v1::EnqueueStreamRequest* r = i == 0 ? &req : req.add_more();
    r->set_request_id(i + 1);
    *r->mutable_job() = NewJob(queues[i], "x");
  }
  if (stream->Write(req)) {
    size_t got = 0;
    v1::EnqueueStreamResponse resp;
    while (got < queues.size() && stream->Read(&resp)) {
      // Answers come packed: the first in the message, the rest in `more`.
      std::vector<v1::EnqueueStreamResponse> batch{resp};
      for (const auto& m : resp.more()) batch.push_back(m);
      batch[0].clear_more();
      for (auto& a : batch) {
        if (answers) answers->push_back(a);
        ++got;
      }
    }
    stream->WritesDone();
  }
  return stream->Finish();
}

// Workers.Connect: hello for `queues`, then (optionally) one more message,
// then close. `ack` gets the answer to `then` when it has a request_id.
grpc::Status Connect(Stubs& s, const std::string& token, const std::vector<std::string>& queues,
                     const v1::ConnectRequest* then = nullptr, v1::ConnectResponse* ack = nullptr) {
  auto ctx = Ctx(token);
  auto stream = s.workers->Connect(ctx.get());
  v1::ConnectRequest hello;
  for (const auto& q : queues) hello.mutable_hello()->add_queues(q);
  hello.mutable_hello()->set_worker_id("security-test");
  bool ok = stream->Write(hello);
  if (ok && then != nullptr) {
    ok = stream->Write(*then);
    v1::ConnectResponse resp;
    while (ok && stream->Read(&resp)) {
      if (resp.has_ack()) {
        if (ack) *ack = resp;
        break;
      }
    }
  }
  if (ok) stream->WritesDone();
  return stream->Finish();
}

// Reads one message of a server stream, then cancels it; returns the final
// status (CANCELLED after a read; the refusal otherwise).
template <typename Reader, typename Resp>
grpc::Status ReadOneThenCancel(grpc::ClientContext* ctx, Reader& reader, Resp* resp,
                               bool* got = nullptr) {
  bool read = reader->Read(resp);
  if (got) *got = read;
  if (read) ctx->TryCancel();
  while (reader->Read(resp)) {
  }
  return reader->Finish();
}

bool AuthError(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
         s.error_code() == grpc::StatusCode::PERMISSION_DENIED;
}

std::string Show(const grpc::Status& s) {
  return std::to_string(s.error_code()) + " " + s.error_message();
}

// ---------------------------------------------------------------------------
// Tokens on a plaintext loopback broker.

class TokenTest : public BrokerTest {
 protected:
  std::vector<std::string> BrokerFlags() const override {
    return {"--token-file=" + tokens_path_};
  }
  void SetUp() override {
    tokens_path_ = tokens_dir_.path() + "/tokens.conf";
    WriteFile(tokens_path_, kTokenFile);
    BrokerTest::SetUp();
    stubs_ = std::make_unique<Stubs>(broker_->Channel());
  }
  Stubs& stubs() { return *stubs_; }

  testing::TempDir tokens_dir_;
  std::string tokens_path_;
  std::unique_ptr<Stubs> stubs_;
};

// One RPC of the table: its full name, the roles that may call it (admin
// always may), and a call with a request that passes validation.
struct RpcCase {
  const char* method;
  std::vector<const char*> allowed;  // token names besides admin
  std::function<grpc::Status(Stubs&, const std::string& token)> call;
};

const std::string kUnknownJob = "00000000000000ff";

std::vector<RpcCase> AllRpcs() {
  const std::vector<const char*> producer = {"producer"};
  const std::vector<const char*> observer = {"producer", "subscriber"};
  const std::vector<const char*> worker = {"worker"};
  const std::vector<const char*> admin_only = {};
  return {
      // Jobs.
      {"errand.v1.Jobs/Enqueue", producer,
       [](Stubs& s, const std::string& t) { return Enqueue(s, t, "q1"); }},
      {"errand.v1.Jobs/EnqueueBatch", producer,
       [](Stubs& s, const std::string& t) {
         v1::EnqueueBatchRequest r;
         *r.add_jobs() = NewJob("q1");
         v1::EnqueueBatchResponse resp;
         return s.jobs->EnqueueBatch(Ctx(t).get(), r, &resp);
       }},
      {"errand.v1.Jobs/EnqueueStream", producer,
       [](Stubs& s, const std::string& t) {
         std::vector<v1::EnqueueStreamResponse> answers;
         grpc::Status st = EnqueueStream(s, t, {"q1"}, &answers);
         if (st.ok() && (answers.size() != 1 || answers[0].result().job_id().empty())) {
           return grpc::Status(grpc::StatusCode::INTERNAL, "no job id in the stream's answer");
         }
         return st;
       }},
      {"errand.v1.Jobs/GetJob", observer,
       [](Stubs& s, const std::string& t) {
         v1::GetJobRequest r;
         r.set_job_id(kUnknownJob);
         v1::GetJobResponse resp;
         return s.jobs->GetJob(Ctx(t).get(), r, &resp);
       }},
      {"errand.v1.Jobs/WaitJob", observer,
       [](Stubs& s, const std::string& t) {
         v1::WaitJobRequest r;
         r.set_job_id(kUnknownJob);
         v1::WaitJobResponse resp;
         return s.jobs->WaitJob(Ctx(t).get(), r, &resp);
       }},
      {"errand.v1.Jobs/EnqueueAndWatch", producer,
       [](Stubs& s, const std::string& t) {
         auto ctx = Ctx(t);
         auto reader = s.jobs->EnqueueAndWatch(ctx.get(), NewJob("q1"));
         v1::WatchJobResponse resp;
         return ReadOneThenCancel(ctx.get(), reader, &resp);
       }},
      {"errand.v1.Jobs/CancelJob", producer,
       [](Stubs& s, const std::string& t) {
         v1::CancelJobRequest r;
         r.set_job_id(kUnknownJob);
         v1::CancelJobResponse resp;
         return s.jobs->CancelJob(Ctx(t).get(), r, &resp);
       }},
      {"errand.v1.Jobs/ListJobs", observer,
       [](Stubs& s, const std::string& t) {
         v1::ListJobsRequest r;
         r.set_queue("q1");
         v1::ListJobsResponse resp;
         return s.jobs->ListJobs(Ctx(t).get(), r, &resp);
       }},
      // Workers.
      {"errand.v1.Workers/Lease", worker,
       [](Stubs& s, const std::string& t) {
         v1::LeaseResponse resp;
         return s.workers->Lease(Ctx(t).get(), LeaseReq({"q-lease"}), &resp);
       }},
      {"errand.v1.Workers/Connect", worker,
       [](Stubs& s, const std::string& t) { return Connect(s, t, {"q-connect"}); }},
      {"errand.v1.Workers/Complete", worker,
       [](Stubs& s, const std::string& t) {
         v1::CompleteRequest r;
         r.set_job_id(kUnknownJob);
         r.set_lease_token(1);
         v1::CompleteResponse resp;
         return s.workers->Complete(Ctx(t).get(), r, &resp);
       }},
      {"errand.v1.Workers/Fail", worker,
       [](Stubs& s, const std::string& t) {
         v1::FailRequest r;
         r.set_job_id(kUnknownJob);
         r.set_lease_token(1);
         v1::FailResponse resp;
         return s.workers->Fail(Ctx(t).get(), r, &resp);
       }},
      {"errand.v1.Workers/Extend", worker,
       [](Stubs& s, const std::string& t) {
         v1::ExtendRequest r;
         r.set_job_id(kUnknownJob);
         r.set_lease_token(1);
         v1::ExtendResponse resp;
         return s.workers->Extend(Ctx(t).get(), r, &resp);
       }},
      // Events.
      {"errand.v1.Events/Subscribe", observer,
       [](Stubs& s, const std::string& t) {
         auto ctx = Ctx(t);
         v1::SubscribeRequest r;
         r.set_from_oldest(true);
         auto reader = s.events->Subscribe(ctx.get(), r);
         v1::SubscribeResponse resp;
         return ReadOneThenCancel(ctx.get(), reader, &resp);
       }},
      {"errand.v1.Events/Publish", producer,
       [](Stubs& s, const std::string& t) {
         v1::PublishRequest r;
         r.set_topic("t1");
         v1::PublishResponse resp;
         return s.events->Publish(Ctx(t).get(), r, &resp);
       }},
      // Admin.
      {"errand.v1.Admin/ListQueues", admin_only,
       [](Stubs& s, const std::string& t) {
         v1::ListQueuesResponse resp;
         return s.admin->ListQueues(Ctx(t).get(), v1::ListQueuesRequest(), &resp);
       }},
      {"errand.v1.Admin/GetQueueStats", admin_only,
       [](Stubs& s, const std::string& t) {
         v1::GetQueueStatsRequest r;
         r.set_queue("q1");
         v1::GetQueueStatsResponse resp;
         return s.admin->GetQueueStats(Ctx(t).get(), r, &resp);
       }},
      {"errand.v1.Admin/PauseQueue", admin_only,
       [](Stubs& s, const std::string& t) {
         v1::PauseQueueRequest r;
         r.set_queue("q-paused");
         v1::PauseQueueResponse resp;
         return s.admin->PauseQueue(Ctx(t).get(), r, &resp);
       }},
      {"errand.v1.Admin/ResumeQueue", admin_only,
       [](Stubs& s, const std::string& t) {
         v1::ResumeQueueRequest r;
         r.set_queue("q-paused");
         v1::ResumeQueueResponse resp;
         return s.admin->ResumeQueue(Ctx(t).get(), r, &resp);
       }},
      {"errand.v1.Admin/PurgeQueue", admin_only,
       [](Stubs& s, const std::string& t) {
         v1::PurgeQueueRequest r;
         r.set_queue("q-purged");
         v1::PurgeQueueResponse resp;
         return s.admin->PurgeQueue(Ctx(t).get(), r, &resp);
       }},
      {"errand.v1.Admin/ListDeadJobs", admin_only,
       [](Stubs& s, const std::string& t) {
         v1::ListDeadJobsRequest r;
         r.set_queue("q1");
         v1::ListDeadJobsResponse resp;
         return s.admin->ListDeadJobs(Ctx(t).get(), r, &resp);
       }},
      {"errand.v1.Admin/RedriveJobs", admin_only,
       [](Stubs& s, const std::string& t) {
         v1::RedriveJobsRequest r;
         r.set_queue("q1");
         v1::RedriveJobsResponse resp;
         return s.admin->RedriveJobs(Ctx(t).get(), r, &resp);
       }},
      {"errand.v1.Admin/SetQueueConfig", admin_only,
       [](Stubs& s, const std::string& t) {
         v1::SetQueueConfigRequest r;
         r.set_queue("q1");
         v1::SetQueueConfigResponse resp;
         return s.admin->SetQueueConfig(Ctx(t).get(), r, &resp);
       }},
      {"errand.v1.Admin/GetServerInfo", admin_only,
       [](Stubs& s, const std::string& t) {
         v1::GetServerInfoResponse resp;
         return s.admin->GetServerInfo(Ctx(t).get(), v1::GetServerInfoRequest(), &resp);
       }},
  };
}

TEST_F(TokenTest, EveryRoleAgainstEveryRpc) {
  struct Caller {
    const char* name;
    std::string token;
  };
  const std::vector<Caller> callers = {{"producer", kProducerToken},
                                       {"worker", kWorkerToken},
                                       {"subscriber", kSubscriberToken},
                                       {"admin", kAdminToken}};
  auto rpcs = AllRpcs();
  ASSERT_EQ(rpcs.size(), 24u);  // every RPC of Jobs (8), Workers (5), Events (2), Admin (9)
  for (const RpcCase& rpc : rpcs) {
    for (const Caller& c : callers) {
      bool allowed = std::string(c.name) == "admin";
      for (const char* a : rpc.allowed) allowed |= std::string(a) == c.name;
      grpc::Status s = rpc.call(stubs(), c.token);
      if (allowed) {
        EXPECT_FALSE(AuthError(s)) << rpc.method << " as " << c.name << ": " << Show(s);
      } else {
        EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED)
            << rpc.method << " as " << c.name << ": " << Show(s);
        EXPECT_NE(s.error_message().find(std::string(rpc.method) + " needs role"),
                  std::string::npos)
            << s.error_message();
        EXPECT_NE(s.error_message().find("token \"" + std::string(c.name) + "\" has role " +
                                         c.name),
                  std::string::npos)
            << s.error_message();
      }
    }
    // No token, a malformed header, an unknown token: UNAUTHENTICATED.
    grpc::Status none = rpc.call(stubs(), "");
    EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAUTHENTICATED) << rpc.method << Show(none);
    EXPECT_NE(none.error_message().find("authorization: Bearer <token>"), std::string::npos)
        << none.error_message();
    grpc::Status unknown = rpc.call(stubs(), "not-a-known-token-0123456789");
    EXPECT_EQ(unknown.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << rpc.method << Show(unknown);
  }
  // The needed role is named: a worker may not enqueue.
  grpc::Status s = Enqueue(stubs(), kWorkerToken, "q1");
  EXPECT_EQ(s.error_message(),
            "errand.v1.Jobs/Enqueue needs role producer (or admin); token \"worker\" has role "
            "worker");
  // Tokens are never logged.
  std::string log = broker_->Log();
  for (const char* t : {kProducerToken, kWorkerToken, kSubscriberToken, kAdminToken,
                        "not-a-known-token-0123456789"}) {
    EXPECT_EQ(log.find(t), std::string::npos) << t;
  }
}

TEST_F(TokenTest, HealthAndReflectionStayOpen) {
  int health = 0;
  ASSERT_TRUE(testing::HealthCheck(broker_->Channel(), "", &health).ok());
  EXPECT_EQ(health, 1);
  // Reflection lists the services without a token.
  auto stub = grpc::reflection::v1alpha::ServerReflection::NewStub(broker_->Channel());
  auto ctx = Ctx("");
  auto stream = stub->ServerReflectionInfo(ctx.get());
  grpc::reflection::v1alpha::ServerReflectionRequest req;
  req.set_list_services("*");
  ASSERT_TRUE(stream->Write(req));
  grpc::reflection::v1alpha::ServerReflectionResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  bool saw_jobs = false;
  for (const auto& svc : resp.list_services_response().service()) {
    saw_jobs |= svc.name() == "errand.v1.Jobs";
  }
  EXPECT_TRUE(saw_jobs) << resp.DebugString();
}

TEST_F(TokenTest, QueuePatternsRestrictEveryKindOfCall) {
  Stubs& s = stubs();
  // Enqueue: allowed queues pass, others are refused naming queue and patterns.
  std::string billing_job, other_job;
  ASSERT_TRUE(Enqueue(s, kBillingToken, "billing-eu", &billing_job).ok());
  ASSERT_TRUE(Enqueue(s, kBillingToken, "ledger").ok());
  grpc::Status st = Enqueue(s, kBillingToken, "emails");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(st.error_message(),
            "token \"billing\" may not use queue \"emails\" (its queue patterns: "
            "billing-*,ledger)");
  ASSERT_TRUE(Enqueue(s, kAdminToken, "emails", &other_job).ok());

  // EnqueueBatch: one refused job refuses the batch; nothing is enqueued.
  {
    v1::EnqueueBatchRequest r;
    *r.add_jobs() = NewJob("billing-us");
    *r.add_jobs() = NewJob("emails");
    v1::EnqueueBatchResponse resp;
    st = s.jobs->EnqueueBatch(Ctx(kBillingToken).get(), r, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
    v1::GetQueueStatsRequest q;
    q.set_queue("billing-us");
    v1::GetQueueStatsResponse stats;
    ASSERT_TRUE(s.admin->GetQueueStats(Ctx(kAdminToken).get(), q, &stats).ok());
    EXPECT_EQ(stats.stats().ready(), 0u);
  }

  // EnqueueStream: checked per message; the stream goes on.
  {
    std::vector<v1::EnqueueStreamResponse> answers;
    st = EnqueueStream(s, kBillingToken, {"billing-eu", "emails", "ledger"}, &answers);
    ASSERT_TRUE(st.ok()) << Show(st);
    ASSERT_EQ(answers.size(), 3u);
    std::map<uint64_t, v1::EnqueueStreamResponse> by_id;
    for (auto& a : answers) by_id[a.request_id()] = a;
    EXPECT_FALSE(by_id[1].result().job_id().empty());
    EXPECT_EQ(by_id[1].error_code(), 0);
    EXPECT_EQ(by_id[2].error_code(), static_cast<int>(grpc::StatusCode::PERMISSION_DENIED));
    EXPECT_NE(by_id[2].error_message().find("queue \"emails\""), std::string::npos);
    EXPECT_TRUE(by_id[2].result().job_id().empty());
    EXPECT_FALSE(by_id[3].result().job_id().empty());
  }

  // EnqueueAndWatch.
  {
    auto ctx = Ctx(kBillingToken);
    auto reader = s.jobs->EnqueueAndWatch(ctx.get(), NewJob("emails"));
    v1::WatchJobResponse resp;
    st = ReadOneThenCancel(ctx.get(), reader, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
  }

  // By job id: the job's queue decides.
  {
    v1::GetJobRequest r;
    v1::GetJobResponse resp;
    r.set_job_id(billing_job);
    EXPECT_TRUE(s.jobs->GetJob(Ctx(kBillingToken).get(), r, &resp).ok());
    r.set_job_id(other_job);
    st = s.jobs->GetJob(Ctx(kBillingToken).get(), r, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
    EXPECT_NE(st.error_message().find("queue \"emails\""), std::string::npos);
    v1::WaitJobRequest w;
    w.set_job_id(other_job);
    v1::WaitJobResponse wresp;
    st = s.jobs->WaitJob(Ctx(kBillingToken).get(), w, &wresp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
    v1::CancelJobRequest c;
    c.set_job_id(other_job);
    v1::CancelJobResponse cresp;
    st = s.jobs->CancelJob(Ctx(kBillingToken).get(), c, &cresp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
    // The refused cancel changed nothing.
    r.set_job_id(other_job);
    ASSERT_TRUE(s.jobs->GetJob(Ctx(kAdminToken).get(), r, &resp).ok());
    EXPECT_EQ(resp.job().state(), v1::JOB_STATE_READY);
    v1::ListJobsRequest l;
    l.set_queue("emails");
    v1::ListJobsResponse lresp;
    st = s.jobs->ListJobs(Ctx(kBillingToken).get(), l, &lresp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
  }

  // Workers: Lease and Connect name queues; Complete/Fail/Extend name jobs.
  {
    v1::LeaseResponse resp;
    st = s.workers->Lease(Ctx(kBillingToken).get(), LeaseReq({"billing-eu", "emails"}), &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
    st = Connect(s, kBillingToken, {"billing-eu", "emails"});
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
    EXPECT_NE(st.error_message().find("queue \"emails\""), std::string::npos);

    // The admin leases the emails job; the billing worker may not finish it,
    // even with the right lease token.
    ASSERT_TRUE(s.workers->Lease(Ctx(kAdminToken).get(), LeaseReq({"emails"}), &resp).ok());
    ASSERT_EQ(resp.leases_size(), 1);
    const v1::Lease& lease = resp.leases(0);
    v1::CompleteRequest c;
    c.set_job_id(lease.job().id());
    c.set_lease_token(lease.lease_token());
    v1::CompleteResponse cresp;
    st = s.workers->Complete(Ctx(kBillingToken).get(), c, &cresp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
    v1::ExtendRequest e;
    e.set_job_id(lease.job().id());
    e.set_lease_token(lease.lease_token());
    v1::ExtendResponse eresp;
    st = s.workers->Extend(Ctx(kBillingToken).get(), e, &eresp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
    v1::FailRequest f;
    f.set_job_id(lease.job().id());
    f.set_lease_token(lease.lease_token());
    v1::FailResponse fresp;
    st = s.workers->Fail(Ctx(kBillingToken).get(), f, &fresp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
    // On a Connect stream of its own queues, the same completion is refused
    // in its ack.
    v1::ConnectRequest then;
    then.set_request_id(7);
    *then.mutable_complete() = c;
    v1::ConnectResponse ack;
    st = Connect(s, kBillingToken, {"billing-eu"}, &then, &ack);
    EXPECT_TRUE(st.ok()) << Show(st);
    EXPECT_EQ(ack.ack().request_id(), 7u);
    EXPECT_EQ(ack.ack().error_code(), static_cast<int>(grpc::StatusCode::PERMISSION_DENIED));
    // The job is still leased: nothing was completed.
    v1::GetJobRequest g;
    g.set_job_id(lease.job().id());
    v1::GetJobResponse gresp;
    ASSERT_TRUE(s.jobs->GetJob(Ctx(kAdminToken).get(), g, &gresp).ok());
    EXPECT_EQ(gresp.job().state(), v1::JOB_STATE_LEASED);
    // Its own queue works end to end.
    ASSERT_TRUE(
        s.workers->Lease(Ctx(kBillingToken).get(), LeaseReq({"billing-eu"}), &resp).ok());
    ASSERT_GE(resp.leases_size(), 1);
    c.set_job_id(resp.leases(0).job().id());
    c.set_lease_token(resp.leases(0).lease_token());
    st = s.workers->Complete(Ctx(kBillingToken).get(), c, &cresp);
    EXPECT_TRUE(st.ok()) << Show(st);
  }

  // Events: subscriptions must name allowed queues or topics.
  {
    auto subscribe = [&](v1::SubscribeRequest r, bool* got) {
      r.set_from_oldest(true);
      auto ctx = Ctx(kBillingToken, 3s);
      auto reader = s.events->Subscribe(ctx.get(), r);
      v1::SubscribeResponse resp;
      return ReadOneThenCancel(ctx.get(), reader, &resp, got);
    };
    bool got = false;
    st = subscribe(v1::SubscribeRequest(), &got);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
    EXPECT_NE(st.error_message().find("name them in queues"), std::string::npos);
    v1::SubscribeRequest r;
    r.add_queues("billing-eu");
    st = subscribe(r, &got);
    EXPECT_TRUE(got) << Show(st);
    EXPECT_FALSE(AuthError(st)) << Show(st);
    r.add_queues("emails");
    st = subscribe(r, &got);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
    v1::SubscribeRequest jobs_only;
    jobs_only.add_job_ids(other_job);
    st = subscribe(jobs_only, &got);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
    v1::SubscribeRequest topics;
    topics.add_topics("news");
    st = subscribe(topics, &got);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
    EXPECT_NE(st.error_message().find("topic \"news\""), std::string::npos);

    v1::PublishRequest p;
    v1::PublishResponse presp;
    p.set_topic("billing-news");
    EXPECT_TRUE(s.events->Publish(Ctx(kBillingToken).get(), p, &presp).ok());
    p.set_topic("news");
    st = s.events->Publish(Ctx(kBillingToken).get(), p, &presp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
  }

  // A restricted admin sees and operates only its queues.
  {
    v1::ListQueuesResponse lq;
    ASSERT_TRUE(
        s.admin->ListQueues(Ctx(kBillingAdminToken).get(), v1::ListQueuesRequest(), &lq).ok());
    ASSERT_GT(lq.queues_size(), 0);
    for (const auto& q : lq.queues()) EXPECT_EQ(q.queue().rfind("billing-", 0), 0u) << q.queue();
    ASSERT_TRUE(s.admin->ListQueues(Ctx(kAdminToken).get(), v1::ListQueuesRequest(), &lq).ok());
    bool saw_emails = false;
    for (const auto& q : lq.queues()) saw_emails |= q.queue() == "emails";
    EXPECT_TRUE(saw_emails);
    v1::PurgeQueueRequest pr;
    pr.set_queue("emails");
    v1::PurgeQueueResponse presp;
    st = s.admin->PurgeQueue(Ctx(kBillingAdminToken).get(), pr, &presp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
    pr.set_queue("billing-eu");
    EXPECT_TRUE(s.admin->PurgeQueue(Ctx(kBillingAdminToken).get(), pr, &presp).ok());
    v1::RedriveJobsRequest rr;
    rr.add_job_ids(other_job);
    v1::RedriveJobsResponse rresp;
    st = s.admin->RedriveJobs(Ctx(kBillingAdminToken).get(), rr, &rresp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << Show(st);
  }
}

// Waits (bounded) until `pred` holds.
bool Eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout = 10s) {
  auto until = Clock::now() + timeout;
  while (Clock::now() < until) {
    if (pred()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return pred();
}

TEST_F(TokenTest, SighupReloadsTheTokenFile) {
  Stubs& s = stubs();
  ASSERT_TRUE(Enqueue(s, kProducerToken, "q1").ok());
  ASSERT_TRUE(Enqueue(s, kAdminToken, "q1").ok());
  // Streams opened before the reload, working.
  auto pctx = Ctx(kProducerToken, 60s);
  auto producer_stream = s.jobs->EnqueueStream(pctx.get());
  v1::EnqueueStreamRequest ereq;
  ereq.set_request_id(1);
  *ereq.mutable_job() = NewJob("q1");
  ASSERT_TRUE(producer_stream->Write(ereq));
  v1::EnqueueStreamResponse eresp;
  ASSERT_TRUE(producer_stream->Read(&eresp));
  EXPECT_EQ(eresp.error_code(), 0) << eresp.error_message();
  auto wctx = Ctx(kWorkerToken, 60s);
  auto worker_stream = s.workers->Connect(wctx.get());
  v1::ConnectRequest creq;
  creq.mutable_hello()->add_queues("q-stream");
  ASSERT_TRUE(worker_stream->Write(creq));
  creq.Clear();
  creq.set_request_id(1);
  creq.mutable_extend()->set_job_id(kUnknownJob);
  creq.mutable_extend()->set_lease_token(1);
  ASSERT_TRUE(worker_stream->Write(creq));
  v1::ConnectResponse cresp;
  ASSERT_TRUE(worker_stream->Read(&cresp));
  EXPECT_EQ(cresp.ack().error_code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));

  // Remove the producer and the worker, add a new producer, and SIGHUP.
  const std::string fresh = "fresh-producer-token-0123456789";
  WriteFile(tokens_path_,
            "admin admin admin-token-0123456789\n"
            "fresh producer " + fresh + "\n");
  ASSERT_EQ(::kill(broker_->pid(), SIGHUP), 0);
  ASSERT_TRUE(Eventually([&] {
    return Enqueue(s, kProducerToken, "q1").error_code() == grpc::StatusCode::UNAUTHENTICATED;
  })) << "the removed token still works";
  EXPECT_TRUE(Enqueue(s, fresh, "q1").ok());
  EXPECT_TRUE(Enqueue(s, kAdminToken, "q1").ok());
  ASSERT_TRUE(Eventually([&] { return broker_->Log().find("SIGHUP: reloaded") != std::string::npos; }));
  // The open streams see the removal at their next message.
  ereq.set_request_id(2);
  ASSERT_TRUE(producer_stream->Write(ereq));
  ASSERT_TRUE(producer_stream->Read(&eresp));
  EXPECT_EQ(eresp.request_id(), 2u);
  EXPECT_EQ(eresp.error_code(), static_cast<int>(grpc::StatusCode::UNAUTHENTICATED));
  EXPECT_NE(eresp.error_message().find("token of \"producer\" was removed"), std::string::npos)
      << eresp.error_message();
  EXPECT_TRUE(eresp.result().job_id().empty());
  producer_stream->WritesDone();
  EXPECT_TRUE(producer_stream->Finish().ok());
  creq.set_request_id(2);
  worker_stream->Write(creq);
  while (worker_stream->Read(&cresp)) {
  }
  grpc::Status ws = worker_stream->Finish();
  EXPECT_EQ(ws.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Show(ws);

  // A bad file on SIGHUP keeps the current table and says why.
  WriteFile(tokens_path_, "admin admin admin-token-0123456789\nbroken\n");
  ASSERT_EQ(::kill(broker_->pid(), SIGHUP), 0);
  ASSERT_TRUE(Eventually([&] {
    return broker_->Log().find("keeping the current tokens") != std::string::npos;
  })) << broker_->Log();
  std::string log = broker_->Log();
  EXPECT_NE(log.find("tokens.conf:2: expected <name> <roles> <token>"), std::string::npos) << log;
  EXPECT_TRUE(Enqueue(s, fresh, "q1").ok());
  EXPECT_EQ(Enqueue(s, kProducerToken, "q1").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // A missing file too.
  ::unlink(tokens_path_.c_str());
  ASSERT_EQ(::kill(broker_->pid(), SIGHUP), 0);
  ASSERT_TRUE(Eventually([&] {
    return broker_->Log().find("cannot read token file") != std::string::npos;
  })) << broker_->Log();
  EXPECT_TRUE(Enqueue(s, fresh, "q1").ok());
  // The broker still serves and stops cleanly; no token ever reached the log.
  log = broker_->Log();
  for (const std::string& t : {std::string(kProducerToken), fresh, std::string(kAdminToken)}) {
    EXPECT_EQ(log.find(t), std::string::npos) << t;
  }
  EXPECT_EQ(broker_->Stop(), 0);
}

// ---------------------------------------------------------------------------
// Start-up rules.

TEST(SecurityStartTest, NonLoopbackListenIsRefusedWithoutTokensOrInsecure) {
  testing::TempDir dir;
  for (const char* listen : {"0.0.0.0:0", "[::]:0"}) {
    RunResult r = RunProgram({ERRAND_BROKER_PATH, std::string("--listen=") + listen,
                              "--data-dir=" + dir.path() + "/data"},
                             "", {}, 30s);
    EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
    std::string all = r.out + r.err;
    EXPECT_NE(all.find(std::string("refusing to listen on ") + listen + " without --token-file"),
              std::string::npos)
        << all;
    EXPECT_NE(all.find("--insecure"), std::string::npos) << all;
  }
  // It refused before touching the data directory.
  struct stat st;
  EXPECT_NE(::stat((dir.path() + "/data").c_str(), &st), 0);
}

TEST(SecurityStartTest, BadSecurityFilesStopTheStartNamingThem) {
  testing::TempDir dir;
  WriteFile(dir.path() + "/tokens.conf", "a producer short\n");
  RunResult r = RunProgram({ERRAND_BROKER_PATH, "--listen=127.0.0.1:0",
                            "--data-dir=" + dir.path() + "/data",
                            "--token-file=" + dir.path() + "/tokens.conf"},
                           "", {}, 30s);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE((r.out + r.err).find("tokens.conf:1: the token of \"a\" has 5 characters"),
            std::string::npos)
      << r.out << r.err;
  r = RunProgram({ERRAND_BROKER_PATH, "--listen=127.0.0.1:0", "--data-dir=" + dir.path() + "/d2",
                  "--tls-cert=" + dir.path() + "/missing.pem", "--tls-key=" + dir.path() + "/k"},
                 "", {}, 30s);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE((r.out + r.err).find("--tls-cert " + dir.path() + "/missing.pem"), std::string::npos)
      << r.out << r.err;
  r = RunProgram({ERRAND_BROKER_PATH, "--listen=127.0.0.1:0", "--data-dir=" + dir.path() + "/d3",
                  "--tls-client-ca=" + dir.path() + "/ca.pem"},
                 "", {}, 30s);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE((r.out + r.err).find("--tls-client-ca (mutual TLS) needs --tls-cert"),
            std::string::npos)
      << r.out << r.err;
}

// ---------------------------------------------------------------------------
// TLS.

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(certs_.Make(certs_dir_.path())); }

  // Starts a broker serving TLS (mutual when `client_ca`), plus `extra`.
  void StartBroker(bool client_ca, std::vector<std::string> extra = {}) {
    std::vector<std::string> flags = {"--tls-cert=" + certs_.server_cert,
                                      "--tls-key=" + certs_.server_key};
    if (client_ca) flags.push_back("--tls-client-ca=" + certs_.ca);
    flags.insert(flags.end(), extra.begin(), extra.end());
    broker_ = std::make_unique<testing::BrokerProcess>(data_.path(), flags);
    broker_->set_channel_credentials(client_ca
                                         ? Tls(certs_.ca, certs_.client_cert, certs_.client_key)
                                         : Tls(certs_.ca));
    std::string error;
    ASSERT_TRUE(broker_->Start(&error)) << error;
  }

  // An Enqueue over a channel with `creds` (short deadline: a failed
  // handshake shows as UNAVAILABLE).
  grpc::Status TryEnqueue(std::shared_ptr<grpc::ChannelCredentials> creds,
                          const std::string& token = "") {
    Stubs s(ChannelTo(broker_->address(), std::move(creds)));
    v1::EnqueueResponse resp;
    return s.jobs->Enqueue(Ctx(token, 3s).get(), NewJob("tls"), &resp);
  }

  void TearDown() override {
    if (HasFailure() && broker_) std::cerr << "---- broker log ----\n" << broker_->Log();
  }

  testing::TempDir certs_dir_, data_;
  Certs certs_;
  std::unique_ptr<testing::BrokerProcess> broker_;
};

TEST_F(TlsTest, ServerTlsAcceptsClientsThatTrustItsCa) {
  ASSERT_NO_FATAL_FAILURE(StartBroker(false));
  EXPECT_TRUE(TryEnqueue(Tls(certs_.ca)).ok());
  // A client certificate is not needed, but harmless.
  EXPECT_TRUE(TryEnqueue(Tls(certs_.ca, certs_.client_cert, certs_.client_key)).ok());
  // Plaintext clients and clients that trust another CA cannot talk to it.
  EXPECT_EQ(TryEnqueue(grpc::InsecureChannelCredentials()).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(TryEnqueue(Tls(certs_.rogue_ca)).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(broker_->Log().find("security: TLS, no bearer tokens"), std::string::npos)
      << broker_->Log();

  // The client library: trusted CA works; without it Connect says TLS.
  ClientOptions o;
  o.address = broker_->address();
  o.tls_ca_file = certs_.ca;
  auto c = errand::Client::Connect(o);
  ASSERT_TRUE(c.ok()) << c.status();
  v1::EnqueueRequest job = NewJob("tls-lib", "hello");
  auto id = (*c)->Enqueue(job);
  ASSERT_TRUE(id.ok()) << id.status();
  auto got = (*c)->Get(*id);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->payload(), "hello");
  // tls_server_name: the name checked against the certificate.
  o.tls_server_name = "localhost";
  auto named = errand::Client::Connect(o);
  ASSERT_TRUE(named.ok()) << named.status();
  EXPECT_TRUE((*named)->Enqueue(NewJob("tls-lib")).ok());
  o.tls_server_name = "not-this-broker.example";
  o.connect_timeout = 1s;
  EXPECT_EQ(errand::Client::Connect(o).status().code(), absl::StatusCode::kUnavailable);
  o.tls_server_name.clear();
  o.tls_ca_file = certs_.rogue_ca;
  auto bad = errand::Client::Connect(o);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(bad.status().message().find("over TLS"), std::string::npos) << bad.status();
  o.tls_ca_file = certs_dir_.path() + "/none.pem";
  bad = errand::Client::Connect(o);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("tls_ca_file: cannot read"), std::string::npos);
}

TEST_F(TlsTest, MutualTlsNeedsAClientCertificateFromTheClientCa) {
  ASSERT_NO_FATAL_FAILURE(StartBroker(true));
  EXPECT_TRUE(TryEnqueue(Tls(certs_.ca, certs_.client_cert, certs_.client_key)).ok());
  EXPECT_EQ(TryEnqueue(Tls(certs_.ca)).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(TryEnqueue(Tls(certs_.ca, certs_.rogue_cert, certs_.rogue_key)).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(TryEnqueue(grpc::InsecureChannelCredentials()).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(broker_->Log().find("with client certificates (mutual TLS)"), std::string::npos);

  ClientOptions o;
  o.address = broker_->address();
  o.tls_ca_file = certs_.ca;
  o.tls_cert_file = certs_.client_cert;
  o.tls_key_file = certs_.client_key;
  auto c = errand::Client::Connect(o);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE((*c)->Enqueue(NewJob("mtls-lib")).ok());
  o.tls_cert_file.clear();
  o.tls_key_file.clear();
  o.connect_timeout = 1s;
  EXPECT_EQ(errand::Client::Connect(o).status().code(), absl::StatusCode::kUnavailable);
  o.tls_cert_file = certs_.client_cert;
  EXPECT_EQ(errand::Client::Connect(o).status().code(), absl::StatusCode::kInvalidArgument);
}

// mTLS and tokens together, through errandctl (token from ERRAND_TOKEN) and
// errand-worker (token from --token-file; its job commands do not see it).
TEST_F(TlsTest, ToolsSpeakMutualTlsWithTokens) {
  std::string tokens = certs_dir_.path() + "/tokens.conf";
  WriteFile(tokens,
            "ops admin admin-token-0123456789\n"
            "w worker worker-token-0123456789 tools-*\n");
  ASSERT_NO_FATAL_FAILURE(StartBroker(true, {"--token-file=" + tokens}));
  std::string worker_token_file = certs_dir_.path() + "/worker.token";
  WriteFile(worker_token_file, "worker-token-0123456789\n");
  const std::vector<std::string> tls = {"--tls-ca", certs_.ca, "--tls-cert", certs_.client_cert,
                                        "--tls-key", certs_.client_key};
  auto ctl = [&](std::vector<std::string> args, std::vector<std::string> env) {
    std::vector<std::string> argv = {ERRANDCTL_PATH, "--addr", broker_->address()};
    argv.insert(argv.end(), tls.begin(), tls.end());
    argv.insert(argv.end(), args.begin(), args.end());
    return RunProgram(argv, "", env, 30s);
  };
  // Without a token: refused, and the message says why.
  RunResult r = ctl({"enqueue", "tools-a", "payload"}, {"ERRAND_TOKEN="});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("UNAUTHENTICATED: this broker requires a bearer token"), std::string::npos)
      << r.err;
  // With the worker's token: the wrong role.
  r = ctl({"enqueue", "tools-a", "payload"}, {"ERRAND_TOKEN=worker-token-0123456789"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("errand.v1.Jobs/EnqueueStream needs role producer"), std::string::npos)
      << r.err;
  r = ctl({"enqueue", "tools-a", "payload"}, {"ERRAND_TOKEN=admin-token-0123456789"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string id = r.out.substr(0, r.out.find('\n'));
  ASSERT_FALSE(id.empty());

  std::vector<std::string> argv = {ERRAND_WORKER_PATH, "--addr", broker_->address(), "--queue",
                                   "tools-a", "--token-file", worker_token_file};
  argv.insert(argv.end(), tls.begin(), tls.end());
  argv.insert(argv.end(), {"--", "/bin/sh", "-c", "cat; printf '[%s]' \"$ERRAND_TOKEN\""});
  BackgroundProgram worker(argv);
  r = ctl({"--json", "wait", id, "--timeout", "30s"}, {"ERRAND_TOKEN=admin-token-0123456789"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err << worker.Log();
  // The result is the payload and an empty token: the command saw none.
  r = ctl({"--json", "get", id}, {"ERRAND_TOKEN=admin-token-0123456789"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("JOB_STATE_SUCCEEDED"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"result\":\"cGF5bG9hZFtd\""), std::string::npos)  // "payload[]"
      << r.out;
  worker.Signal(SIGTERM);
  EXPECT_EQ(worker.Wait(30s), 0) << worker.Log();
}

}  // namespace
}  // namespace errand::e2e
