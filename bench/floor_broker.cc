// errand-floor-broker: the floor under errand-bench's figures.
//
// It answers the calls errand-bench makes (Jobs.EnqueueStream,
// Jobs.EnqueueBatch, Workers.Connect, Admin.GetServerInfo) from memory,
// under one mutex, through gRPC's callback API as errand-broker does, and
// does nothing else: no store, no fsync, no validation, no lease deadlines,
// no redelivery, no events. errand-bench against it therefore measures what
// the client library, gRPC's C++ stack and the loopback cost for the
// workload on this machine, with no broker work behind them:
//   - errand-broker's figures against these are the share of errand's own
//     work (its engine, store and commit pipeline);
//   - a peer's figure above this floor is out of reach for any broker that
//     serves this workload over gRPC with this client.
//
//   errand-bench --spawn-broker=build/bench/errand-floor-broker --mode=async
//
// It is a measuring instrument, not a broker: it acknowledges before any
// write and forgets everything at exit, so it refuses --commit=sync.
// A job delivered to a worker that goes away is dropped, and Fail drops its
// job too (no retry).
//
// Threads: gRPC's callback threads only. `mu_` guards the queues and the
// workers' credits; each stream's writes are serialized by its own mutex,
// and every StartWrite is made with no lock held.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <deque>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "errand/v1/admin.grpc.pb.h"
#include "errand/v1/jobs.grpc.pb.h"
#include "errand/v1/workers.grpc.pb.h"

namespace {

namespace v1 = errand::v1;

class WorkerConn;
struct Delivery;
void Deliver(std::vector<Delivery>& deliveries);

struct Job {
  std::string id;
  std::string payload;
};

// A delivery decided under Floor::mu_, written after it is released.
struct Delivery {
  std::shared_ptr<WorkerConn> to;
  v1::ConnectResponse msg;
};

class Floor {
 public:
  // Queues a job and hands it (or an older one) to a worker with credit.
  std::string Enqueue(const std::string& queue, std::string payload, std::vector<Delivery>* out);
  // A worker's credits grew by `n` (its hello, a credits message or a
  // complete's more_credits): deliveries for it, if its queues have jobs.
  // `queues`: the worker's hello names them (once, with its first credits).
  void AddCredits(const std::shared_ptr<WorkerConn>& w, uint32_t n, std::vector<Delivery>* out,
                  std::vector<std::string>* queues = nullptr);
  void Gone(WorkerConn* w);
  void CountWrite() { writes_.fetch_add(1, std::memory_order_relaxed); }
  uint64_t writes() const { return writes_.load(std::memory_order_relaxed); }
  uint64_t ready();

 private:
  // REQUIRES: mu_ held.
  void MatchLocked(const std::string& queue, std::vector<Delivery>* out);

  std::mutex mu_;
  std::unordered_map<std::string, std::deque<Job>> ready_;
  // Workers that had credit when they were put here, per queue; entries
  // without credit (or gone) are dropped as they are met.
  std::unordered_map<std::string, std::deque<std::shared_ptr<WorkerConn>>> idle_;
  uint64_t next_job_ = 0;
  uint64_t next_token_ = 0;
  std::atomic<uint64_t> writes_{0};
};

Floor* g_floor = nullptr;

// Workers.Connect: one worker's stream.
class WorkerConn final : public grpc::ServerBidiReactor<v1::ConnectRequest, v1::ConnectResponse>,
                         public std::enable_shared_from_this<WorkerConn> {
 public:
  static void Open(grpc::CallbackServerContext* /*ctx*/,
                   grpc::ServerBidiReactor<v1::ConnectRequest, v1::ConnectResponse>** out) {
    auto w = std::make_shared<WorkerConn>();
    w->self_ = w;
    *out = w.get();
    w->StartRead(&w->in_);
  }

  // Guarded by Floor::mu_.
  std::vector<std::string> queues;
  uint32_t credits = 0;
  bool gone = false;

  // Queues a message; with packed acks, the acks waiting go in front of it.
  void Send(v1::ConnectResponse msg) {
    {
      std::lock_guard<std::mutex> l(out_mu_);
      if (!acks_.empty()) {
        for (auto& a : acks_) *msg.add_acks() = std::move(a);
        acks_.clear();
      }
      outbox_.push_back(std::move(msg));
    }
    Kick();
  }

 private:
  void OnReadDone(bool ok) override {
    if (!ok) {
      Close();
      return;
    }
    std::vector<Delivery> deliveries;
    auto self = shared_from_this();
    bool flush_acks = false;
    if (in_.has_hello()) {
      packed_ = in_.hello().packed_acks();
      std::vector<std::string> qs(in_.hello().queues().begin(), in_.hello().queues().end());
      g_floor->AddCredits(self, in_.hello().credits(), &deliveries, &qs);
    } else if (in_.kind_case() == v1::ConnectRequest::kCredits) {
      g_floor->AddCredits(self, in_.credits(), &deliveries);
    } else if (in_.has_complete() || in_.has_fail() || in_.has_extend()) {
      if (!in_.has_extend()) g_floor->CountWrite();
      v1::ConnectAck ack;
      ack.set_request_id(in_.request_id());
      if (packed_) {
        std::lock_guard<std::mutex> l(out_mu_);
        acks_.push_back(std::move(ack));
        flush_acks = true;
      } else {
        v1::ConnectResponse r;
        *r.mutable_ack() = std::move(ack);
        Send(std::move(r));
      }
      if (in_.more_credits() > 0) g_floor->AddCredits(self, in_.more_credits(), &deliveries);
    }
    in_.Clear();
    StartRead(&in_);
    Deliver(deliveries);
    if (flush_acks) {
      // Acks no delivery took: a message of their own.
      bool left;
      {
        std::lock_guard<std::mutex> l(out_mu_);
        left = !acks_.empty();
      }
      if (left) Send(v1::ConnectResponse());
    }
  }

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard<std::mutex> l(out_mu_);
      writing_ = false;
      if (!ok) outbox_.clear();
    }
    Kick();
  }

  void OnDone() override {
    g_floor->Gone(this);
    self_.reset();  // may delete this
  }

  // Starts the next write, or Finish once closing and idle.
  void Kick() {
    bool finish = false;
    {
      std::lock_guard<std::mutex> l(out_mu_);
      if (writing_ || finished_) return;
      if (closing_) {
        finish = finished_ = true;
      } else {
        if (outbox_.empty()) return;
        out_ = std::move(outbox_.front());
        outbox_.pop_front();
        writing_ = true;
      }
    }
    if (finish) {
      Finish(grpc::Status::OK);
    } else {
      StartWrite(&out_);
    }
  }

  void Close() {
    {
      std::lock_guard<std::mutex> l(out_mu_);
      closing_ = true;
      outbox_.clear();
    }
    Kick();
  }

  std::shared_ptr<WorkerConn> self_;
  v1::ConnectRequest in_;
  bool packed_ = false;  // read thread only
  std::mutex out_mu_;
  std::vector<v1::ConnectAck> acks_;
  std::deque<v1::ConnectResponse> outbox_;
  v1::ConnectResponse out_;
  bool writing_ = false;
  bool closing_ = false;
  bool finished_ = false;
};

std::string Floor::Enqueue(const std::string& queue, std::string payload,
                           std::vector<Delivery>* out) {
  std::lock_guard<std::mutex> l(mu_);
  std::string id = "floor-" + std::to_string(++next_job_);
  ready_[queue].push_back(Job{id, std::move(payload)});
  MatchLocked(queue, out);
  writes_.fetch_add(1, std::memory_order_relaxed);
  return id;
}

void Floor::AddCredits(const std::shared_ptr<WorkerConn>& w, uint32_t n, std::vector<Delivery>* out,
                       std::vector<std::string>* queues) {
  std::lock_guard<std::mutex> l(mu_);
  if (queues != nullptr) w->queues = std::move(*queues);
  if (w->gone || n == 0) return;
  const bool was_empty = w->credits == 0;
  w->credits += n;
  for (const auto& q : w->queues) {
    if (was_empty) idle_[q].push_back(w);
    MatchLocked(q, out);
  }
}

void Floor::MatchLocked(const std::string& queue, std::vector<Delivery>* out) {
  auto r = ready_.find(queue);
  auto i = idle_.find(queue);
  if (r == ready_.end() || i == idle_.end()) return;
  while (!r->second.empty() && !i->second.empty()) {
    std::shared_ptr<WorkerConn> w = i->second.front();
    i->second.pop_front();
    if (w->gone || w->credits == 0) continue;
    Job job = std::move(r->second.front());
    r->second.pop_front();
    --w->credits;
    if (w->credits > 0) i->second.push_back(w);
    v1::ConnectResponse msg;
    v1::Lease* lease = msg.mutable_delivery();
    lease->set_lease_token(++next_token_);
    v1::Job* j = lease->mutable_job();
    j->set_id(std::move(job.id));
    j->set_queue(queue);
    j->set_state(v1::JOB_STATE_LEASED);
    j->set_payload(std::move(job.payload));
    j->set_attempts(1);
    out->push_back(Delivery{std::move(w), std::move(msg)});
  }
}

void Floor::Gone(WorkerConn* w) {
  std::lock_guard<std::mutex> l(mu_);
  w->gone = true;
  // Drop the references the idle lists hold, so the connection can go.
  for (const auto& q : w->queues) {
    auto i = idle_.find(q);
    if (i == idle_.end()) continue;
    auto& d = i->second;
    for (auto it = d.begin(); it != d.end();) it = it->get() == w ? d.erase(it) : it + 1;
  }
}

uint64_t Floor::ready() {
  std::lock_guard<std::mutex> l(mu_);
  uint64_t n = 0;
  for (const auto& [q, jobs] : ready_) n += jobs.size();
  return n;
}

void Deliver(std::vector<Delivery>& deliveries) {
  for (auto& d : deliveries) d.to->Send(std::move(d.msg));
}

// Jobs.EnqueueStream: every request of a message (and its `more`) answered
// in one message; answers made while a write is in flight go out together
// after it.
class EnqueueConn final
    : public grpc::ServerBidiReactor<v1::EnqueueStreamRequest, v1::EnqueueStreamResponse> {
 public:
  EnqueueConn() { StartRead(&in_); }

 private:
  // Adds `a` to `into`: its first answer at the top, the others in `more`.
  static void Add(v1::EnqueueStreamResponse a, v1::EnqueueStreamResponse* into) {
    if (into->request_id() == 0) {
      *into = std::move(a);
    } else {
      *into->add_more() = std::move(a);
    }
  }
  // Adds every answer `from` holds (its own and its `more`) to `into`.
  static void Append(v1::EnqueueStreamResponse from, v1::EnqueueStreamResponse* into) {
    auto more = std::move(*from.mutable_more());
    from.clear_more();
    Add(std::move(from), into);
    for (auto& m : more) Add(std::move(m), into);
  }

  void Answer(const v1::EnqueueStreamRequest& req, std::vector<Delivery>* deliveries,
              v1::EnqueueStreamResponse* into) {
    v1::EnqueueStreamResponse a;
    a.set_request_id(req.request_id());
    std::string id = g_floor->Enqueue(req.job().queue(), req.job().payload(), deliveries);
    v1::EnqueueResponse* res = a.mutable_result();
    res->set_job_id(std::move(id));
    res->set_durability(v1::DURABILITY_ASYNC);
    Add(std::move(a), into);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      std::lock_guard<std::mutex> l(mu_);
      closing_ = true;
      if (!writing_ && !finished_) {
        finished_ = true;
        Finish(grpc::Status::OK);
      }
      return;
    }
    std::vector<Delivery> deliveries;
    v1::EnqueueStreamResponse answers;
    Answer(in_, &deliveries, &answers);
    for (const auto& m : in_.more()) Answer(m, &deliveries, &answers);
    in_.Clear();
    StartRead(&in_);
    bool start = false;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (writing_) {
        Append(std::move(answers), &pending_);
      } else {
        out_ = std::move(answers);
        writing_ = start = true;
      }
    }
    if (start) StartWrite(&out_);
    Deliver(deliveries);
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> l(mu_);
    writing_ = false;
    if (ok && pending_.request_id() != 0) {
      out_ = std::move(pending_);
      pending_.Clear();
      writing_ = true;
      l.unlock();
      StartWrite(&out_);
      return;
    }
    if (closing_ && !finished_) {
      finished_ = true;
      l.unlock();
      Finish(grpc::Status::OK);
    }
  }

  void OnDone() override { delete this; }

  v1::EnqueueStreamRequest in_;
  std::mutex mu_;
  v1::EnqueueStreamResponse out_;
  v1::EnqueueStreamResponse pending_;
  bool writing_ = false;
  bool closing_ = false;
  bool finished_ = false;
};

class JobsService final : public v1::Jobs::CallbackService {
  grpc::ServerBidiReactor<v1::EnqueueStreamRequest, v1::EnqueueStreamResponse>* EnqueueStream(
      grpc::CallbackServerContext*) override {
    return new EnqueueConn();
  }
  grpc::ServerUnaryReactor* EnqueueBatch(grpc::CallbackServerContext* ctx,
                                         const v1::EnqueueBatchRequest* req,
                                         v1::EnqueueBatchResponse* resp) override {
    std::vector<Delivery> deliveries;
    for (const auto& job : req->jobs()) {
      v1::EnqueueResponse* r = resp->add_results();
      r->set_job_id(g_floor->Enqueue(job.queue(), job.payload(), &deliveries));
      r->set_durability(v1::DURABILITY_ASYNC);
    }
    resp->set_durability(v1::DURABILITY_ASYNC);
    Deliver(deliveries);
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

class WorkersService final : public v1::Workers::CallbackService {
  grpc::ServerBidiReactor<v1::ConnectRequest, v1::ConnectResponse>* Connect(
      grpc::CallbackServerContext* ctx) override {
    grpc::ServerBidiReactor<v1::ConnectRequest, v1::ConnectResponse>* r = nullptr;
    WorkerConn::Open(ctx, &r);
    return r;
  }
};

class AdminService final : public v1::Admin::CallbackService {
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* ctx,
                                          const v1::GetServerInfoRequest*,
                                          v1::GetServerInfoResponse* resp) override {
    resp->set_version("errand-floor-broker");
    resp->set_commit_mode("async");
    resp->set_jobs(g_floor->ready());
    resp->set_writes(g_floor->writes());
    resp->set_commits(g_floor->writes());
    resp->set_fsyncs(0);
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "errand-floor-broker: answers errand-bench's calls (Jobs.EnqueueStream, "
      "Jobs.EnqueueBatch, Workers.Connect, Admin.GetServerInfo) from memory with no broker "
      "work behind them, to measure the floor that gRPC, the client library and the "
      "loopback set for the workload. Not a broker: it acknowledges before any write, "
      "forgets everything at exit, never redelivers.\n"
      "  errand-bench --spawn-broker=PATH/errand-floor-broker --mode=async"};
  std::string listen = "127.0.0.1:0";
  std::string port_file;
  std::string commit = "async";
  std::string ignored;
  app.add_option("--listen", listen, "host:port to serve on (port 0: any free port)")
      ->capture_default_str();
  app.add_option("--port-file", port_file, "write the bound port to this file");
  app.add_option("--commit", commit, "only async: it never writes, so it cannot fsync")
      ->capture_default_str();
  app.add_option("--data-dir", ignored, "accepted and ignored (errand-bench passes it)");
  app.add_option("--http-listen", ignored, "accepted and ignored (errand-bench passes it)");
  CLI11_PARSE(app, argc, argv);
  if (commit != "async") {
    std::fprintf(stderr,
                 "errand-floor-broker: --commit=%s: it acknowledges before any write and "
                 "never fsyncs, so it serves --commit=async only (errand-bench --mode=async)\n",
                 commit.c_str());
    return 2;
  }

  // SIGTERM and SIGINT end it; blocked here so every thread inherits that.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  Floor floor;
  g_floor = &floor;
  JobsService jobs;
  WorkersService workers;
  AdminService admin;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&jobs);
  builder.RegisterService(&workers);
  builder.RegisterService(&admin);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "errand-floor-broker: cannot listen on %s\n", listen.c_str());
    return 1;
  }
  if (!port_file.empty()) {
    std::string tmp = port_file + ".tmp";
    {
      std::ofstream out(tmp);
      out << port << "\n";
    }
    std::rename(tmp.c_str(), port_file.c_str());
  }
  std::fprintf(stderr, "errand-floor-broker: serving on port %d (listen %s)\n", port,
               listen.c_str());
  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::fprintf(stderr, "errand-floor-broker: signal %d, stopping\n", sig);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}
