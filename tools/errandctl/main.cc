// errandctl: the errand broker from a terminal. See `errandctl --help`.

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/time_util.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <future>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "duration.h"
#include "security_flags.h"
#include "errand/client.h"
#include "errand/subscription.h"
#include "errand/v1/admin.grpc.pb.h"

namespace {

using google::protobuf::util::TimeUtil;
using std::chrono::milliseconds;

// Exit codes (also in --help).
enum Exit : int {
  kOk = 0,
  kError = 1,             // usage error or any other error
  kNotFound = 2,          // no such job
  kPrecondition = 3,      // e.g. job already finished, job not DEAD
  kUnavailable = 4,       // broker unreachable or shutting down
  kTimedOut = 5,          // wait: the job did not finish in time
  kInvalid = 6,           // the broker rejected the input
  kJobFailed = 7,         // wait / enqueue --wait: the job ended DEAD or CANCELLED
};

const char* kExitHelp =
    "Exit codes: 0 ok, 1 usage or other error, 2 not found, 3 failed precondition\n"
    "(e.g. the job already finished), 4 broker unavailable, 5 wait timed out,\n"
    "6 invalid argument (rejected by the broker), 7 the job ended DEAD or CANCELLED\n"
    "(wait, enqueue --wait).\n"
    "Environment: ERRAND_ADDR sets the default for --addr; ERRAND_TOKEN (or\n"
    "ERRAND_TOKEN_FILE), ERRAND_TLS, ERRAND_TLS_CA, ERRAND_TLS_CERT, ERRAND_TLS_KEY and\n"
    "ERRAND_TLS_SERVER_NAME those of the security flags.";

int ExitFor(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk:
      return kOk;
    case absl::StatusCode::kNotFound:
      return kNotFound;
    case absl::StatusCode::kFailedPrecondition:
      return kPrecondition;
    case absl::StatusCode::kUnavailable:
      return kUnavailable;
    case absl::StatusCode::kDeadlineExceeded:
      return kTimedOut;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return kInvalid;
    default:
      return kError;
  }
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "errandctl: %s: %s\n", absl::StatusCodeToString(s.code()).c_str(),
               std::string(s.message()).c_str());
  return ExitFor(s);
}

int Fail(const grpc::Status& s) {
  return Fail(absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message()));
}

struct Global {
  std::string addr = "127.0.0.1:7600";
  bool json = false;
  std::string rpc_timeout = "10s";
};

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

std::string Time(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  return TimeUtil::ToString(t);
}

std::string Age(const google::protobuf::Duration& d) {
  int64_t ms = TimeUtil::DurationToMilliseconds(d);
  char buf[64];
  if (ms < 1000) {
    std::snprintf(buf, sizeof buf, "%lldms", static_cast<long long>(ms));
  } else {
    std::snprintf(buf, sizeof buf, "%.1fs", static_cast<double>(ms) / 1000);
  }
  return buf;
}

std::string State(errand::v1::JobState s) {
  std::string n = errand::v1::JobState_Name(s);
  return n.rfind("JOB_STATE_", 0) == 0 ? n.substr(10) : n;
}

std::string Printable(const std::string& bytes, size_t max = 200) {
  std::string out;
  for (char c : bytes.substr(0, max)) {
    out += (c >= 32 && c < 127) || c == '\n' || c == '\t' ? c : '.';
  }
  if (bytes.size() > max) out += "...";
  return out;
}

void PrintJob(const errand::v1::Job& j) {
  std::printf("id:           %s\n", j.id().c_str());
  std::printf("queue:        %s\n", j.queue().c_str());
  std::printf("state:        %s%s\n", State(j.state()).c_str(),
              j.cancel_requested() ? " (cancel requested)" : "");
  std::printf("priority:     %d\n", j.priority());
  std::printf("attempts:     %u/%u\n", j.attempts(), j.max_attempts());
  std::printf("created:      %s\n", Time(j.created_at()).c_str());
  std::printf("updated:      %s\n", Time(j.updated_at()).c_str());
  if (j.has_run_at()) std::printf("run_at:       %s\n", Time(j.run_at()).c_str());
  if (j.has_finished_at()) std::printf("finished:     %s\n", Time(j.finished_at()).c_str());
  if (!j.idempotency_key().empty()) std::printf("key:          %s\n", j.idempotency_key().c_str());
  std::printf("payload:      %s\n", Printable(j.payload()).c_str());
  if (j.has_progress()) {
    std::printf("progress:     %.0f%% %s\n", j.progress().fraction() * 100,
                j.progress().message().c_str());
  }
  if (!j.result().empty()) std::printf("result:       %s\n", Printable(j.result()).c_str());
  if (!j.error().empty()) std::printf("error:        %s\n", Printable(j.error()).c_str());
  for (const auto& a : j.history()) {
    std::printf("attempt %u:    worker=%s started=%s outcome=%s%s%s\n", a.number(),
                a.worker_id().c_str(), Time(a.started_at()).c_str(),
                errand::v1::AttemptOutcome_Name(a.outcome()).c_str(), a.error().empty() ? "" : " ",
                Printable(a.error(), 120).c_str());
  }
}

// PAYLOAD: literal text, @file, or "-" (stdin). Missing: stdin unless a tty.
bool ReadPayload(const std::string& arg, bool given, std::string* out) {
  auto slurp = [out](std::istream& in) {
    std::stringstream ss;
    ss << in.rdbuf();
    *out = ss.str();
  };
  if (!given) {
    if (::isatty(0)) return true;
    slurp(std::cin);
    return true;
  }
  if (arg == "-") {
    slurp(std::cin);
    return true;
  }
  if (!arg.empty() && arg[0] == '@') {
    std::ifstream in(arg.substr(1), std::ios::binary);
    if (!in) return false;
    slurp(in);
    return true;
  }
  *out = arg;
  return true;
}

int JobOutcome(const errand::v1::Job& j) {
  return j.state() == errand::v1::JOB_STATE_SUCCEEDED ? kOk : kJobFailed;
}

// grpc.health.v1.Health/Check for the whole server; returns the status field
// (1 SERVING, 2 NOT_SERVING).
grpc::Status HealthCheck(const std::shared_ptr<grpc::Channel>& ch, milliseconds timeout,
                         int* status) {
  grpc::GenericStub stub(ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  grpc::ByteBuffer req, resp;
  grpc::Slice empty("");
  req = grpc::ByteBuffer(&empty, 1);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &req, &resp,
                 [&](grpc::Status s) { done.set_value(s); });
  grpc::Status s = done.get_future().get();
  if (!s.ok()) return s;
  std::vector<grpc::Slice> slices;
  std::string wire;
  if (resp.Dump(&slices).ok()) {
    for (auto& sl : slices) wire.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  }
  *status = wire.size() >= 2 && wire[0] == 0x08 ? wire[1] : 0;
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"errandctl: enqueue, inspect and operate an errand broker."};
  app.footer(kExitHelp);
  app.require_subcommand(1);
  Global g;
  app.add_option("--addr", g.addr, "broker address HOST:PORT")
      ->envname("ERRAND_ADDR")
      ->capture_default_str();
  app.add_flag("--json", g.json, "machine-readable output (protobuf JSON, snake_case names)");
  app.add_option("--rpc-timeout", g.rpc_timeout, "deadline of each call")->capture_default_str();
  errand::tools::SecurityFlags security;
  errand::tools::AddSecurityFlags(app, &security);

  // enqueue
  auto* enq = app.add_subcommand("enqueue", "enqueue a job; prints its id");
  enq->footer(kExitHelp);
  std::string e_queue, e_payload, e_delay, e_lease, e_key, e_durability, e_wait_timeout = "0";
  int e_priority = 0;
  unsigned e_max_attempts = 0;
  std::vector<std::string> e_headers;
  bool e_wait = false;
  enq->add_option("queue", e_queue, "queue name")->required();
  auto* payload_opt =
      enq->add_option("payload", e_payload, "payload: text, @file, or - for stdin (default: stdin "
                                            "when it is not a terminal, else empty)");
  enq->add_option("--priority", e_priority, "higher is delivered first");
  enq->add_option("--delay", e_delay, "deliver no sooner than this (e.g. 30s, 5m)");
  enq->add_option("--max-attempts", e_max_attempts, "attempts before DEAD (0: broker default)");
  enq->add_option("--lease", e_lease, "lease duration per delivery");
  enq->add_option("--key", e_key, "idempotency key");
  enq->add_option("--header", e_headers, "header K=V (repeatable)");
  enq->add_option("--durability", e_durability, "sync or async (default: the broker's)")
      ->check(CLI::IsMember({"sync", "async"}));
  enq->add_flag("--wait", e_wait, "wait for the job to finish and print it");
  enq->add_option("--timeout", e_wait_timeout, "with --wait: give up after this (0: no limit)");

  // get / wait / cancel
  auto* get = app.add_subcommand("get", "show a job");
  get->footer(kExitHelp);
  std::string job_id;
  get->add_option("id", job_id, "job id")->required();
  auto* wait = app.add_subcommand("wait", "wait until a job finishes (SUCCEEDED, DEAD, CANCELLED)");
  wait->footer(kExitHelp);
  std::string w_timeout = "30s";
  wait->add_option("id", job_id, "job id")->required();
  wait->add_option("--timeout", w_timeout, "give up after this; exit 5")->capture_default_str();
  auto* cancel = app.add_subcommand("cancel", "cancel a job");
  cancel->footer(kExitHelp);
  std::string c_reason;
  cancel->add_option("id", job_id, "job id")->required();
  cancel->add_option("--reason", c_reason, "stored as the job's error");

  // watch
  auto* watch = app.add_subcommand(
      "watch", "stream events live (resumes after disconnects without gaps); Ctrl-C stops");
  watch->footer(kExitHelp);
  std::vector<std::string> w_queues, w_jobs, w_topics, w_types;
  bool w_oldest = false;
  uint64_t w_after = 0;
  int w_count = 0;
  watch->add_option("--queue", w_queues, "only events of this queue (repeatable)");
  watch->add_option("--job", w_jobs, "only events of this job (repeatable)");
  watch->add_option("--topic", w_topics, "messages of this topic (repeatable)");
  watch->add_option("--type", w_types, "only this event type, e.g. SUCCEEDED (repeatable)");
  auto* oldest_opt = watch->add_flag("--from-oldest", w_oldest, "start at the oldest retained event");
  watch->add_option("--after", w_after, "start after this sequence number")->excludes(oldest_opt);
  watch->add_option("--count", w_count, "exit after this many events (0: never)");

  // admin
  auto* queues = app.add_subcommand("queues", "list queues with their counts");
  queues->footer(kExitHelp);
  std::string a_queue;
  auto* stats = app.add_subcommand("stats", "counts per state of one queue");
  stats->add_option("queue", a_queue, "queue name")->required();
  stats->footer(kExitHelp);
  auto* pause = app.add_subcommand("pause", "stop leasing jobs of a queue (it still accepts jobs)");
  pause->add_option("queue", a_queue, "queue name")->required();
  pause->footer(kExitHelp);
  auto* resume = app.add_subcommand("resume", "resume a paused queue");
  resume->add_option("queue", a_queue, "queue name")->required();
  resume->footer(kExitHelp);
  auto* purge = app.add_subcommand("purge", "delete the READY and SCHEDULED jobs of a queue");
  purge->add_option("queue", a_queue, "queue name")->required();
  purge->footer(kExitHelp);
  auto* dead = app.add_subcommand("dead", "list the DEAD jobs of a queue");
  unsigned d_limit = 100;
  std::string d_token;
  dead->add_option("queue", a_queue, "queue name")->required();
  dead->add_option("--limit", d_limit, "page size")->capture_default_str();
  dead->add_option("--page-token", d_token, "from a previous page");
  dead->footer(kExitHelp);
  auto* redrive = app.add_subcommand("redrive", "make DEAD jobs READY again");
  std::vector<std::string> r_ids;
  std::string r_payload;
  redrive->add_option("queue", a_queue, "queue name")->required();
  redrive->add_option("ids", r_ids, "only these jobs (default: every DEAD job of the queue)");
  auto* r_payload_opt = redrive->add_option("--payload", r_payload, "replace the payload (text or @file)");
  redrive->footer(kExitHelp);
  auto* health = app.add_subcommand("health", "is the broker serving? (also prints server info)");
  health->footer(kExitHelp);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kOk : kError;
  }
  auto rpc_timeout = errand::tools::ParseDuration(g.rpc_timeout);
  if (!rpc_timeout) {
    std::fprintf(stderr, "errandctl: bad --rpc-timeout\n");
    return kError;
  }

  errand::ClientOptions co;
  co.address = g.addr;
  co.rpc_timeout = *rpc_timeout;
  co.connect_timeout = std::min(*rpc_timeout, milliseconds(5000));
  co.retry.max_attempts = 3;
  if (auto s = errand::tools::ApplySecurityFlags(security, &co); !s.ok()) return Fail(s);
  auto client_or = errand::Client::Connect(co);
  if (!client_or.ok()) return Fail(client_or.status());
  errand::Client& client = **client_or;
  auto admin = errand::v1::Admin::NewStub(client.channel());
  auto ctx = [&]() {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + *rpc_timeout);
    return c;
  };

  if (*enq) {
    errand::v1::EnqueueRequest job;
    job.set_queue(e_queue);
    std::string payload;
    if (!ReadPayload(e_payload, payload_opt->count() > 0, &payload)) {
      std::fprintf(stderr, "errandctl: cannot read %s\n", e_payload.c_str());
      return kError;
    }
    job.set_payload(payload);
    job.set_priority(e_priority);
    job.set_max_attempts(e_max_attempts);
    if (!e_key.empty()) job.set_idempotency_key(e_key);
    for (const auto& h : e_headers) {
      auto eq = h.find('=');
      if (eq == std::string::npos) {
        std::fprintf(stderr, "errandctl: --header wants K=V, got %s\n", h.c_str());
        return kError;
      }
      (*job.mutable_headers())[h.substr(0, eq)] = h.substr(eq + 1);
    }
    for (auto [text, field] : {std::pair{&e_delay, job.mutable_delay()},
                               std::pair{&e_lease, job.mutable_lease_duration()}}) {
      if (text->empty()) continue;
      auto d = errand::tools::ParseDuration(*text);
      if (!d) {
        std::fprintf(stderr, "errandctl: bad duration %s\n", text->c_str());
        return kError;
      }
      *field = TimeUtil::MillisecondsToDuration(d->count());
    }
    if (e_delay.empty()) job.clear_delay();
    if (e_lease.empty()) job.clear_lease_duration();
    if (e_durability == "sync") job.set_durability(errand::v1::DURABILITY_SYNC);
    if (e_durability == "async") job.set_durability(errand::v1::DURABILITY_ASYNC);
    auto r = client.EnqueueFuture(job).get();
    if (!r.ok()) return Fail(r.status());
    if (!e_wait) {
      if (g.json) {
        std::printf("%s\n", Json(*r).c_str());
      } else {
        std::printf("%s%s\n", r->job_id().c_str(), r->duplicate() ? " (duplicate)" : "");
      }
      return kOk;
    }
    auto t = errand::tools::ParseDuration(e_wait_timeout);
    if (!t) return kError;
    auto done = client.Wait(r->job_id(), t->count() > 0 ? *t : std::chrono::hours(24 * 365));
    if (!done.ok()) return Fail(done.status());
    if (g.json) {
      std::printf("%s\n", Json(*done).c_str());
    } else {
      PrintJob(*done);
    }
    return JobOutcome(*done);
  }

  if (*get || *wait || *cancel) {
    absl::StatusOr<errand::v1::Job> job;
    if (*get) job = client.Get(job_id);
    if (*cancel) job = client.Cancel(job_id, c_reason);
    if (*wait) {
      auto t = errand::tools::ParseDuration(w_timeout);
      if (!t) {
        std::fprintf(stderr, "errandctl: bad --timeout\n");
        return kError;
      }
      job = client.Wait(job_id, *t);
    }
    if (!job.ok()) return Fail(job.status());
    if (g.json) {
      std::printf("%s\n", Json(*job).c_str());
    } else {
      PrintJob(*job);
    }
    return *wait ? JobOutcome(*job) : kOk;
  }

  if (*watch) {
    errand::SubscriptionOptions so;
    so.queues = w_queues;
    so.job_ids = w_jobs;
    so.topics = w_topics;
    for (auto t : w_types) {
      for (auto& c : t) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      if (t.rfind("EVENT_TYPE_", 0) != 0) t = "EVENT_TYPE_" + t;
      errand::v1::EventType type;
      if (!errand::v1::EventType_Parse(t, &type)) {
        std::fprintf(stderr, "errandctl: unknown event type %s\n", t.c_str());
        return kError;
      }
      so.types.push_back(type);
    }
    if (w_oldest) so.start = errand::SubscriptionOptions::Start::kOldest;
    if (w_after > 0) {
      so.start = errand::SubscriptionOptions::Start::kAfterSeq;
      so.after_seq = w_after;
    }
    std::mutex mu;
    std::condition_variable cv;
    int seen = 0;
    absl::Status error;
    bool failed = false;
    auto sub = errand::Subscription::Start(
        client, so,
        [&](const errand::v1::Event& e) {
          if (g.json) {
            std::printf("%s\n", Json(e).c_str());
          } else {
            std::string type = errand::v1::EventType_Name(e.type()).substr(11);
            std::printf("%-8llu %s %-16s %-20s %-16s %s\n", static_cast<unsigned long long>(e.seq()),
                        Time(e.time()).c_str(), type.c_str(),
                        (e.topic().empty() ? e.queue() : e.topic()).c_str(), e.job_id().c_str(),
                        e.has_job() ? State(e.job().state()).c_str()
                                    : Printable(e.payload(), 60).c_str());
          }
          std::fflush(stdout);
          std::lock_guard<std::mutex> l(mu);
          ++seen;
          cv.notify_all();
        },
        [&](const absl::Status& s) {
          std::lock_guard<std::mutex> l(mu);
          error = s;
          failed = true;
          cv.notify_all();
        });
    if (!sub.ok()) return Fail(sub.status());
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return failed || (w_count > 0 && seen >= w_count); });
    l.unlock();
    sub->reset();
    return failed ? Fail(error) : kOk;
  }

  if (*queues) {
    errand::v1::ListQueuesResponse resp;
    auto c = ctx();
    grpc::Status s = admin->ListQueues(c.get(), errand::v1::ListQueuesRequest(), &resp);
    if (!s.ok()) return Fail(s);
    if (g.json) {
      std::printf("%s\n", Json(resp).c_str());
      return kOk;
    }
    std::printf("%-24s %6s %9s %7s %7s %9s %6s %9s %10s\n", "QUEUE", "PAUSED", "SCHEDULED",
                "READY", "LEASED", "SUCCEEDED", "DEAD", "CANCELLED", "OLDEST");
    for (const auto& q : resp.queues()) {
      std::printf("%-24s %6s %9llu %7llu %7llu %9llu %6llu %9llu %10s\n", q.queue().c_str(),
                  q.paused() ? "yes" : "no", (unsigned long long)q.scheduled(),
                  (unsigned long long)q.ready(), (unsigned long long)q.leased(),
                  (unsigned long long)q.succeeded(), (unsigned long long)q.dead(),
                  (unsigned long long)q.cancelled(), Age(q.oldest_ready_age()).c_str());
    }
    return kOk;
  }

  if (*stats) {
    errand::v1::GetQueueStatsRequest req;
    req.set_queue(a_queue);
    errand::v1::GetQueueStatsResponse resp;
    auto c = ctx();
    grpc::Status s = admin->GetQueueStats(c.get(), req, &resp);
    if (!s.ok()) return Fail(s);
    if (g.json) {
      std::printf("%s\n", Json(resp.stats()).c_str());
      return kOk;
    }
    const auto& q = resp.stats();
    std::printf("queue:            %s%s\n", q.queue().c_str(), q.paused() ? " (paused)" : "");
    std::printf("scheduled:        %llu\nready:            %llu\nleased:           %llu\n",
                (unsigned long long)q.scheduled(), (unsigned long long)q.ready(),
                (unsigned long long)q.leased());
    std::printf("succeeded:        %llu\ndead:             %llu\ncancelled:        %llu\n",
                (unsigned long long)q.succeeded(), (unsigned long long)q.dead(),
                (unsigned long long)q.cancelled());
    std::printf("oldest ready age: %s\n", Age(q.oldest_ready_age()).c_str());
    std::printf("since start:      %llu enqueued, %llu succeeded, %llu failed, %llu dead\n",
                (unsigned long long)q.total_enqueued(), (unsigned long long)q.total_succeeded(),
                (unsigned long long)q.total_failed(), (unsigned long long)q.total_dead());
    return kOk;
  }

  if (*pause || *resume) {
    auto c = ctx();
    grpc::Status s;
    if (*pause) {
      errand::v1::PauseQueueRequest req;
      req.set_queue(a_queue);
      errand::v1::PauseQueueResponse resp;
      s = admin->PauseQueue(c.get(), req, &resp);
    } else {
      errand::v1::ResumeQueueRequest req;
      req.set_queue(a_queue);
      errand::v1::ResumeQueueResponse resp;
      s = admin->ResumeQueue(c.get(), req, &resp);
    }
    if (!s.ok()) return Fail(s);
    if (g.json) {
      std::printf("{}\n");
    } else {
      std::printf("%s %s\n", a_queue.c_str(), *pause ? "paused" : "resumed");
    }
    return kOk;
  }

  if (*purge) {
    errand::v1::PurgeQueueRequest req;
    req.set_queue(a_queue);
    errand::v1::PurgeQueueResponse resp;
    auto c = ctx();
    grpc::Status s = admin->PurgeQueue(c.get(), req, &resp);
    if (!s.ok()) return Fail(s);
    if (g.json) {
      std::printf("%s\n", Json(resp).c_str());
    } else {
      std::printf("purged %llu jobs from %s\n", (unsigned long long)resp.purged(), a_queue.c_str());
    }
    return kOk;
  }

  if (*dead) {
    errand::v1::ListDeadJobsRequest req;
    req.set_queue(a_queue);
    req.set_page_size(d_limit);
    req.set_page_token(d_token);
    errand::v1::ListDeadJobsResponse resp;
    auto c = ctx();
    grpc::Status s = admin->ListDeadJobs(c.get(), req, &resp);
    if (!s.ok()) return Fail(s);
    if (g.json) {
      std::printf("%s\n", Json(resp).c_str());
      return kOk;
    }
    std::printf("%-16s %-8s %-27s %s\n", "ID", "ATTEMPTS", "FINISHED", "ERROR");
    for (const auto& j : resp.jobs()) {
      std::printf("%-16s %-8u %-27s %s\n", j.id().c_str(), j.attempts(),
                  Time(j.finished_at()).c_str(), Printable(j.error(), 80).c_str());
    }
    if (!resp.next_page_token().empty()) {
      std::printf("more: --page-token %s\n", resp.next_page_token().c_str());
    }
    return kOk;
  }

  if (*redrive) {
    errand::v1::RedriveJobsRequest req;
    req.set_queue(a_queue);
    for (const auto& id : r_ids) req.add_job_ids(id);
    if (r_payload_opt->count() > 0) {
      std::string p;
      if (!ReadPayload(r_payload, true, &p)) return kError;
      req.set_payload(p);
      req.set_replace_payload(true);
    }
    errand::v1::RedriveJobsResponse resp;
    auto c = ctx();
    grpc::Status s = admin->RedriveJobs(c.get(), req, &resp);
    if (!s.ok()) return Fail(s);
    if (g.json) {
      std::printf("%s\n", Json(resp).c_str());
    } else {
      std::printf("redriven %llu jobs\n", (unsigned long long)resp.redriven());
    }
    return kOk;
  }

  if (*health) {
    int status = 0;
    grpc::Status s = HealthCheck(client.channel(), *rpc_timeout, &status);
    if (!s.ok()) return Fail(s);
    errand::v1::GetServerInfoResponse info;
    auto c = ctx();
    grpc::Status is = admin->GetServerInfo(c.get(), errand::v1::GetServerInfoRequest(), &info);
    const char* name = status == 1 ? "SERVING" : status == 2 ? "NOT_SERVING" : "UNKNOWN";
    if (g.json) {
      std::printf("{\"status\":\"%s\",\"server\":%s}\n", name,
                  is.ok() ? Json(info).c_str() : "null");
    } else {
      std::printf("%s", name);
      if (is.ok()) {
        std::printf(" version=%s commit=%s started=%s jobs=%llu\n", info.version().c_str(),
                    info.commit_mode().c_str(), Time(info.started_at()).c_str(),
                    (unsigned long long)info.jobs());
      } else {
        std::printf("\n");
      }
    }
    return status == 1 ? kOk : kUnavailable;
  }
  return kError;
}
