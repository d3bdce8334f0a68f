// End to end: what grpcurl users see. Server reflection lists and fully
// describes every service (grpc.health.v1.Health included), and the health
// service answers.

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/descriptor_database.h>

#include <map>
#include <set>
#include <tuple>

#include "e2e/e2e_support.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"

namespace errand::e2e {
namespace {

namespace refl = grpc::reflection::v1alpha;
namespace pb = google::protobuf;

const char* const kServices[] = {"errand.v1.Jobs", "errand.v1.Workers", "errand.v1.Events",
                                 "errand.v1.Admin", "grpc.health.v1.Health"};

// One ServerReflectionInfo stream: a request, its answer.
class ReflectionStream {
 public:
  explicit ReflectionStream(const std::shared_ptr<grpc::Channel>& channel)
      : stub_(refl::ServerReflection::NewStub(channel)) {
    ctx_.set_deadline(testing::In(10s));
    stream_ = stub_->ServerReflectionInfo(&ctx_);
  }

  ~ReflectionStream() {
    stream_->WritesDone();
    grpc::Status s = stream_->Finish();
    EXPECT_TRUE(s.ok()) << "ServerReflectionInfo: " << Show(s);
  }

  refl::ServerReflectionResponse Ask(const refl::ServerReflectionRequest& req) {
    refl::ServerReflectionResponse resp;
    EXPECT_TRUE(stream_->Write(req)) << "reflection stream closed";
    EXPECT_TRUE(stream_->Read(&resp)) << "no reflection answer";
    return resp;
  }

  refl::ServerReflectionResponse FileContainingSymbol(const std::string& symbol) {
    refl::ServerReflectionRequest req;
    req.set_file_containing_symbol(symbol);
    return Ask(req);
  }

 private:
  std::unique_ptr<refl::ServerReflection::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<refl::ServerReflectionRequest,
                                           refl::ServerReflectionResponse>>
      stream_;
};

// The descriptors a reflection answer carried, as grpcurl assembles them:
// the file that defines the symbol and every file it imports.
class ServedDescriptors {
 public:
  // Adds the files of a file_descriptor_response; fails the test otherwise.
  bool Add(const refl::ServerReflectionResponse& resp, const std::string& what) {
    if (resp.has_error_response()) {
      ADD_FAILURE() << what << ": reflection error " << resp.error_response().error_code() << " "
                    << resp.error_response().error_message();
      return false;
    }
    if (!resp.has_file_descriptor_response() ||
        resp.file_descriptor_response().file_descriptor_proto_size() == 0) {
      ADD_FAILURE() << what << ": no file descriptors in the answer";
      return false;
    }
    for (const std::string& bytes : resp.file_descriptor_response().file_descriptor_proto()) {
      pb::FileDescriptorProto file;
      if (!file.ParseFromString(bytes)) {
        ADD_FAILURE() << what << ": unparsable FileDescriptorProto";
        return false;
      }
      if (names_.insert(file.name()).second) db_.Add(file);
    }
    return true;
  }

  const pb::DescriptorPool& pool() const { return pool_; }

 private:
  std::set<std::string> names_;  // files added so far
  pb::SimpleDescriptorDatabase db_;
  pb::DescriptorPool pool_{&db_};
};

class ReflectionE2E : public BrokerTest {
 protected:
  std::set<std::string> ListServices() {
    ReflectionStream stream(client().channel);
    refl::ServerReflectionRequest req;
    req.set_list_services("*");
    refl::ServerReflectionResponse resp = stream.Ask(req);
    EXPECT_TRUE(resp.has_list_services_response()) << resp.ShortDebugString();
    std::set<std::string> names;
    for (const auto& s : resp.list_services_response().service()) names.insert(s.name());
    return names;
  }
};

TEST_F(ReflectionE2E, ListsEveryErrandServiceAndHealth) {
  std::set<std::string> names = ListServices();
  for (const char* service : kServices) {
    EXPECT_EQ(names.count(service), 1u) << service << " is not listed";
  }
  EXPECT_EQ(names.count("grpc.reflection.v1alpha.ServerReflection"), 1u);
}

TEST_F(ReflectionE2E, EveryListedServiceIsFullyDescribable) {
  // Health included: libgrpc++ serves it without descriptors unless the
  // broker links them (the trap in notes/toolchain.md).
  std::set<std::string> names = ListServices();
  for (const char* s : kServices) names.insert(s);
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    // A fresh stream and pool per service: each answer must be complete on
    // its own (the file and everything it imports).
    ReflectionStream stream(client().channel);
    ServedDescriptors served;
    if (!served.Add(stream.FileContainingSymbol(name), name)) continue;
    const pb::ServiceDescriptor* service = served.pool().FindServiceByName(name);
    ASSERT_NE(service, nullptr) << name << " cannot be built from the served files";
    EXPECT_GT(service->method_count(), 0);
    for (int i = 0; i < service->method_count(); ++i) {
      EXPECT_NE(service->method(i)->input_type(), nullptr);
      EXPECT_NE(service->method(i)->output_type(), nullptr);
    }
  }
}

TEST_F(ReflectionE2E, HealthCheckIsDescribedWithItsMessages) {
  ReflectionStream stream(client().channel);
  ServedDescriptors served;
  ASSERT_TRUE(served.Add(stream.FileContainingSymbol("grpc.health.v1.Health"), "Health"));
  const pb::ServiceDescriptor* health = served.pool().FindServiceByName("grpc.health.v1.Health");
  ASSERT_NE(health, nullptr);
  const pb::MethodDescriptor* check = health->FindMethodByName("Check");
  ASSERT_NE(check, nullptr);
  EXPECT_EQ(check->input_type()->full_name(), "grpc.health.v1.HealthCheckRequest");
  EXPECT_NE(check->input_type()->FindFieldByName("service"), nullptr);
  const pb::FieldDescriptor* status = check->output_type()->FindFieldByName("status");
  ASSERT_NE(status, nullptr);
  EXPECT_EQ(status->number(), 1);
  ASSERT_NE(status->enum_type(), nullptr);
  ASSERT_NE(status->enum_type()->FindValueByName("SERVING"), nullptr);
  EXPECT_EQ(status->enum_type()->FindValueByName("SERVING")->number(), 1);
  EXPECT_NE(health->FindMethodByName("Watch"), nullptr);
}

TEST_F(ReflectionE2E, MethodAndMessageSymbolsResolve) {
  for (const char* symbol :
       {"errand.v1.Jobs.Enqueue", "errand.v1.Workers.Lease", "errand.v1.Job",
        "errand.v1.JobState", "errand.v1.EnqueueRequest", "grpc.health.v1.HealthCheckResponse"}) {
    SCOPED_TRACE(symbol);
    ReflectionStream stream(client().channel);
    ServedDescriptors served;
    served.Add(stream.FileContainingSymbol(symbol), symbol);
  }
  ReflectionStream stream(client().channel);
  refl::ServerReflectionRequest req;
  req.set_file_by_filename("errand/v1/jobs.proto");
  ServedDescriptors served;
  ASSERT_TRUE(served.Add(stream.Ask(req), "errand/v1/jobs.proto"));
  EXPECT_NE(served.pool().FindFileByName("errand/v1/jobs.proto"), nullptr);
}

TEST_F(ReflectionE2E, UnknownSymbolIsNotFound) {
  ReflectionStream stream(client().channel);
  refl::ServerReflectionResponse resp = stream.FileContainingSymbol("errand.v1.NoSuchThing");
  ASSERT_TRUE(resp.has_error_response()) << resp.ShortDebugString();
  EXPECT_EQ(resp.error_response().error_code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
}

// The names DESIGN.md promises to docs, scripts and grpcurl users, as the
// broker serves them.
TEST_F(ReflectionE2E, ServedMessagesKeepTheDocumentedFieldNames) {
  const std::map<std::string, std::vector<std::string>> promised = {
      {"errand.v1.EnqueueRequest",
       {"queue", "payload", "headers", "priority", "run_at", "delay", "max_attempts",
        "lease_duration", "idempotency_key", "concurrency_key", "durability"}},
      {"errand.v1.EnqueueResponse", {"job_id", "durability", "commit_seq", "duplicate", "job"}},
      {"errand.v1.EnqueueBatchRequest", {"jobs"}},
      {"errand.v1.GetJobRequest", {"job_id"}},
      {"errand.v1.WaitJobRequest", {"job_id", "timeout"}},
      {"errand.v1.CancelJobRequest", {"job_id"}},
      {"errand.v1.Job",
       {"id", "queue", "state", "payload", "priority", "attempts", "max_attempts", "result",
        "error", "progress", "history", "created_at", "updated_at"}},
      {"errand.v1.LeaseRequest", {"queues", "max_jobs", "wait", "lease_duration", "worker_id"}},
      {"errand.v1.LeaseResponse", {"leases"}},
      {"errand.v1.Lease", {"job", "lease_token", "deadline"}},
      {"errand.v1.CompleteRequest", {"job_id", "lease_token", "result"}},
      {"errand.v1.FailRequest", {"job_id", "lease_token", "error", "retry_after", "non_retryable"}},
      {"errand.v1.ExtendRequest", {"job_id", "lease_token", "extend_by", "progress"}},
      {"errand.v1.ExtendResponse", {"deadline", "cancel_requested"}},
      {"errand.v1.SubscribeRequest",
       {"queues", "job_ids", "topics", "types", "after_seq", "from_oldest"}},
      {"errand.v1.Event",
       {"seq", "type", "time", "job_id", "queue", "topic", "job", "payload"}},
      {"errand.v1.PublishRequest", {"topic", "payload", "headers"}},
  };
  ServedDescriptors served;
  {
    ReflectionStream stream(client().channel);
    for (const char* s : {"errand.v1.Jobs", "errand.v1.Workers", "errand.v1.Events"}) {
      ASSERT_TRUE(served.Add(stream.FileContainingSymbol(s), s));
    }
  }
  for (const auto& [message, fields] : promised) {
    const pb::Descriptor* d = served.pool().FindMessageTypeByName(message);
    ASSERT_NE(d, nullptr) << message;
    for (const std::string& f : fields) {
      EXPECT_NE(d->FindFieldByName(f), nullptr) << message << "." << f;
    }
  }
  // Methods registered raw (bytes in, bytes out, for speed) are still
  // described with their proto types.
  const std::vector<std::tuple<std::string, std::string, std::string, bool, bool>> methods = {
      {"errand.v1.Events.Subscribe", "errand.v1.SubscribeRequest", "errand.v1.SubscribeResponse",
       false, true},
      {"errand.v1.Jobs.EnqueueAndWatch", "errand.v1.EnqueueRequest", "errand.v1.WatchJobResponse",
       false, true},
      {"errand.v1.Jobs.EnqueueStream", "errand.v1.EnqueueStreamRequest",
       "errand.v1.EnqueueStreamResponse", true, true},
      {"errand.v1.Jobs.EnqueueBatch", "errand.v1.EnqueueBatchRequest",
       "errand.v1.EnqueueBatchResponse", false, false},
  };
  for (const auto& [name, in, out, client_streaming, server_streaming] : methods) {
    const pb::MethodDescriptor* m = served.pool().FindMethodByName(name);
    ASSERT_NE(m, nullptr) << name;
    EXPECT_EQ(m->input_type()->full_name(), in) << name;
    EXPECT_EQ(m->output_type()->full_name(), out) << name;
    EXPECT_EQ(m->client_streaming(), client_streaming) << name;
    EXPECT_EQ(m->server_streaming(), server_streaming) << name;
  }
  const pb::EnumDescriptor* states = served.pool().FindEnumTypeByName("errand.v1.JobState");
  ASSERT_NE(states, nullptr);
  for (const char* v : {"JOB_STATE_SCHEDULED", "JOB_STATE_READY", "JOB_STATE_LEASED",
                        "JOB_STATE_SUCCEEDED", "JOB_STATE_DEAD", "JOB_STATE_CANCELLED"}) {
    EXPECT_NE(states->FindValueByName(v), nullptr) << v;
  }
  const pb::EnumDescriptor* dur = served.pool().FindEnumTypeByName("errand.v1.Durability");
  ASSERT_NE(dur, nullptr);
  EXPECT_NE(dur->FindValueByName("DURABILITY_SYNC"), nullptr);
  EXPECT_NE(dur->FindValueByName("DURABILITY_ASYNC"), nullptr);
}

// ---------------------------------------------------------------------------

class HealthE2E : public BrokerTest {};

TEST_F(HealthE2E, HealthCheckReportsServingForServerAndEachService) {
  int status = -1;
  grpc::Status s = testing::HealthCheck(client().channel, "", &status);
  ASSERT_TRUE(s.ok()) << Show(s);
  EXPECT_EQ(status, 1) << "expected SERVING";
  for (const char* service : kServices) {
    if (std::string(service) == "grpc.health.v1.Health") continue;
    SCOPED_TRACE(service);
    status = -1;
    s = testing::HealthCheck(client().channel, service, &status);
    ASSERT_TRUE(s.ok()) << Show(s);
    EXPECT_EQ(status, 1) << "expected SERVING";
  }
  s = testing::HealthCheck(client().channel, "no.such.Service", &status);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << Show(s);
}

}  // namespace
}  // namespace errand::e2e
