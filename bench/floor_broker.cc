// errand-floor-broker: the floor under errand-bench's figures.
//
// It answers the calls errand-bench makes (Jobs.EnqueueStream,
// Jobs.EnqueueBatch, Workers.Connect, Admin.GetServerInfo) from memory,
// under one mutex, through gRPC's callback API as errand-broker does, and
// does nothing else: no store, no validation, no lease deadlines, no
// redelivery, no events. errand-bench against it therefore measures what
// the client library, gRPC's C++ stack and the loopback cost for the
// workload on this machine, with no broker work behind them:
//   - errand-broker's figures against these are the share of errand's own
//     work (its engine, store and commit pipeline);
//   - a peer's figure above this floor is out of reach for any broker that
//     serves this workload over gRPC with this client.
//
//   errand-bench --spawn-broker=build/bench/errand-floor-broker --mode=async
//
// --commit=sync adds the disk and nothing else: every enqueue message,
// EnqueueBatch call, complete and fail appends a record of its payload's
// size to a log file under --data-dir, and is answered (an enqueued job
// becomes leasable) once an fdatasync covered it. One thread fsyncs
// everything appended since its last fsync (group commit, as errand's
// commit pipeline does); a delivery, like errand's lease, waits for no
// fsync of its own.
//
// It is a measuring instrument, not a broker: it never reads its log back
// and forgets everything at exit. A job delivered to a worker that goes away
// is dropped, and Fail drops its job too (no retry).
//
// Threads: gRPC's callback threads, and in sync mode the fsync thread, which
// runs what waited for each fsync. `mu_` guards the queues and the workers'
// credits; each stream's writes are serialized by its own mutex, and every
// StartWrite is made with no lock held.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "errand/v1/admin.grpc.pb.h"
#include "errand/v1/jobs.grpc.pb.h"
#include "errand/v1/workers.grpc.pb.h"
#include "service/connect_acks.h"
#include "service/stream_writer.h"

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

// Sync mode's disk: an append-only file and a thread that fsyncs it.
class Log {
 public:
  ~Log() { Stop(); }

  // Opens (creates) `dir`/floor.log; false with a message on failure.
  bool Open(const std::string& dir, std::string* error) {
    ::mkdir(dir.c_str(), 0700);
    const std::string path = dir + "/floor.log";
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd_ < 0) {
      *error = "cannot open " + path + ": " + std::strerror(errno);
      return false;
    }
    syncer_ = std::thread([this] { Run(); });
    return true;
  }

  // Appends a record of `bytes` (at least 16) and runs `durable` on the
  // fsync thread once an fdatasync covered it.
  void Commit(size_t bytes, std::function<void()> durable) {
    std::string record(std::max<size_t>(bytes, 16), 'r');
    std::lock_guard<std::mutex> l(mu_);
    for (size_t off = 0; off < record.size();) {
      ssize_t n = ::write(fd_, record.data() + off, record.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        std::fprintf(stderr, "errand-floor-broker: write: %s\n", std::strerror(errno));
        std::abort();  // an instrument: a failing disk ends the measurement
      }
      off += static_cast<size_t>(n);
    }
    waiting_.push_back(std::move(durable));
    cv_.notify_one();
  }

  uint64_t fsyncs() const { return fsyncs_.load(std::memory_order_relaxed); }

  void Stop() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
      cv_.notify_one();
    }
    if (syncer_.joinable()) syncer_.join();
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  void Run() {
    std::vector<std::function<void()>> batch;
    for (;;) {
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [this] { return stop_ || !waiting_.empty(); });
        if (waiting_.empty()) return;  // stopping, nothing left
        batch.swap(waiting_);
      }
      // Everything in `batch` was written before it was taken.
      if (::fdatasync(fd_) != 0) {
        std::fprintf(stderr, "errand-floor-broker: fdatasync: %s\n", std::strerror(errno));
        std::abort();
      }
      fsyncs_.fetch_add(1, std::memory_order_relaxed);
      for (auto& fn : batch) fn();
      batch.clear();
    }
  }

  int fd_ = -1;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::function<void()>> waiting_;
  bool stop_ = false;
  std::thread syncer_;
  std::atomic<uint64_t> fsyncs_{0};
};

// Null in async mode: what would wait for an fsync runs at once.
Log* g_log = nullptr;

// Runs `then` once a record of `bytes` is durable (sync mode), or now.
void Commit(size_t bytes, std::function<void()> then) {
  if (g_log == nullptr) {
    then();
  } else {
    g_log->Commit(bytes, std::move(then));
  }
}

v1::Durability Reached() { return g_log ? v1::DURABILITY_SYNC : v1::DURABILITY_ASYNC; }

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

  // Queues a message; with packed acks, the acks held before it go with it.
  void Send(v1::ConnectResponse msg) { writer_.Send(std::move(msg)); }

 private:
  using Writer = errand::service::StreamWriter<WorkerConn, v1::ConnectResponse>;

  void OnReadDone(bool ok) override {
    if (!ok) {
      writer_.Finish(grpc::Status::OK);
      return;
    }
    std::vector<Delivery> deliveries;
    auto self = shared_from_this();
    if (in_.has_hello()) {
      packed_ = in_.hello().packed_acks();
      std::vector<std::string> qs(in_.hello().queues().begin(), in_.hello().queues().end());
      g_floor->AddCredits(self, in_.hello().credits(), &deliveries, &qs);
    } else if (in_.kind_case() == v1::ConnectRequest::kCredits) {
      g_floor->AddCredits(self, in_.credits(), &deliveries);
    } else if (in_.has_complete() || in_.has_fail() || in_.has_extend()) {
      const uint64_t rid = in_.request_id();
      if (in_.has_extend() || g_log == nullptr) {
        // Answered now (an extend writes nothing that needs an fsync, as
        // errand's leases do not), held so that with packed acks it goes
        // in front of the delivery the credit below brings.
        if (!in_.has_extend()) g_floor->CountWrite();
        writer_.Hold(Ack(rid));
      } else {
        // Sync mode: the outcome's record first; the next job's delivery
        // does not wait for it (errand leases it in the same commit group).
        g_floor->CountWrite();
        const size_t bytes = in_.has_complete() ? in_.complete().result().size() + 64 : 64;
        Commit(bytes, [self, rid] { self->Send(Ack(rid)); });
      }
      if (in_.more_credits() > 0) g_floor->AddCredits(self, in_.more_credits(), &deliveries);
    }
    in_.Clear();
    StartRead(&in_);
    Deliver(deliveries);
    writer_.Flush();  // what was held and no delivery took
  }

  static v1::ConnectResponse Ack(uint64_t rid) {
    v1::ConnectResponse r;
    r.mutable_ack()->set_request_id(rid);
    return r;
  }

  void OnWriteDone(bool ok) override { writer_.OnWriteDone(ok); }

  void OnDone() override {
    g_floor->Gone(this);
    self_.reset();  // may delete this
  }

  std::shared_ptr<WorkerConn> self_;
  v1::ConnectRequest in_;
  std::atomic<bool> packed_{false};  // set by the hello, before any ack
  // As errand-broker's worker stream writes: one message at a time, the
  // acks queued in front of a message packed into it when the hello asked.
  Writer writer_{this,
                 [this](std::deque<v1::ConnectResponse>& q, v1::ConnectResponse* out) {
                   if (packed_) {
                     errand::service::PackConnectAcks(q, out);
                   } else {
                     Writer::PackOne(q, out);
                   }
                 },
                 [this] { writer_.Finish(grpc::Status::OK); }};
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
// in one message (in sync mode once its record is durable); answers made
// while a write is in flight go out together after it, as errand-broker's
// writer packs them.
class EnqueueConn final
    : public grpc::ServerBidiReactor<v1::EnqueueStreamRequest, v1::EnqueueStreamResponse>,
      public std::enable_shared_from_this<EnqueueConn> {
 public:
  static grpc::ServerBidiReactor<v1::EnqueueStreamRequest, v1::EnqueueStreamResponse>* Open() {
    auto c = std::make_shared<EnqueueConn>();
    c->self_ = c;
    c->StartRead(&c->in_);
    return c.get();
  }

 private:
  using Writer = errand::service::StreamWriter<EnqueueConn, v1::EnqueueStreamResponse>;

  void OnReadDone(bool ok) override {
    if (!ok) {
      bool done;
      {
        std::lock_guard<std::mutex> l(mu_);
        closing_ = true;
        done = unanswered_ == 0;
      }
      if (done) writer_.Finish(grpc::Status::OK);
      return;
    }
    auto reqs = std::make_shared<std::vector<v1::EnqueueStreamRequest>>();
    auto more = std::move(*in_.mutable_more());
    in_.clear_more();
    size_t bytes = in_.job().payload().size() + 64;
    reqs->push_back(std::move(in_));
    for (auto& m : more) {
      bytes += m.job().payload().size() + 64;
      reqs->push_back(std::move(m));
    }
    in_.Clear();
    {
      std::lock_guard<std::mutex> l(mu_);
      ++unanswered_;
    }
    StartRead(&in_);
    Commit(bytes, [self = shared_from_this(), reqs] { self->Answer(*reqs); });
  }

  // The requests of one message are in (durable in sync mode): enqueue the
  // jobs, answer them in one message, deliver.
  void Answer(std::vector<v1::EnqueueStreamRequest>& reqs) {
    std::vector<Delivery> deliveries;
    for (auto& req : reqs) {
      v1::EnqueueStreamResponse a;
      a.set_request_id(req.request_id());
      v1::EnqueueResponse* res = a.mutable_result();
      res->set_job_id(g_floor->Enqueue(
          req.job().queue(), std::move(*req.mutable_job()->mutable_payload()), &deliveries));
      res->set_durability(Reached());
      writer_.Hold(std::move(a));
    }
    writer_.Flush();
    bool done;
    {
      std::lock_guard<std::mutex> l(mu_);
      --unanswered_;
      done = closing_ && unanswered_ == 0;
    }
    if (done) writer_.Finish(grpc::Status::OK);
    Deliver(deliveries);
  }

  void OnWriteDone(bool ok) override { writer_.OnWriteDone(ok); }

  void OnDone() override { self_.reset(); }  // may delete this

  std::shared_ptr<EnqueueConn> self_;
  v1::EnqueueStreamRequest in_;
  std::mutex mu_;
  int unanswered_ = 0;  // messages read, not answered yet
  bool closing_ = false;
  // A failed write: the client is gone, its reads end too (closing_).
  Writer writer_{this, Writer::PackIntoMore, nullptr};
};

class JobsService final : public v1::Jobs::CallbackService {
  grpc::ServerBidiReactor<v1::EnqueueStreamRequest, v1::EnqueueStreamResponse>* EnqueueStream(
      grpc::CallbackServerContext*) override {
    return EnqueueConn::Open();
  }
  grpc::ServerUnaryReactor* EnqueueBatch(grpc::CallbackServerContext* ctx,
                                         const v1::EnqueueBatchRequest* req,
                                         v1::EnqueueBatchResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    size_t bytes = 0;
    for (const auto& job : req->jobs()) bytes += job.payload().size() + 64;
    Commit(bytes, [req, resp, reactor] {
      std::vector<Delivery> deliveries;
      for (const auto& job : req->jobs()) {
        v1::EnqueueResponse* r = resp->add_results();
        r->set_job_id(g_floor->Enqueue(job.queue(), job.payload(), &deliveries));
        r->set_durability(Reached());
      }
      resp->set_durability(Reached());
      Deliver(deliveries);
      reactor->Finish(grpc::Status::OK);
    });
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
    resp->set_commit_mode(g_log ? "sync" : "async");
    resp->set_jobs(g_floor->ready());
    resp->set_writes(g_floor->writes());
    resp->set_commits(g_floor->writes());
    resp->set_fsyncs(g_log ? g_log->fsyncs() : 0);
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
      "loopback set for the workload; --commit=sync adds a log file fsynced by group commit "
      "and nothing else. Not a broker: it never reads its log back, forgets everything at "
      "exit, never redelivers.\n"
      "  errand-bench --spawn-broker=PATH/errand-floor-broker --mode=async|sync"};
  std::string listen = "127.0.0.1:0";
  std::string port_file;
  std::string commit = "async";
  std::string data_dir;
  std::string ignored;
  app.add_option("--listen", listen, "host:port to serve on (port 0: any free port)")
      ->capture_default_str();
  app.add_option("--port-file", port_file, "write the bound port to this file");
  app.add_option("--commit", commit,
                 "async: answer at once; sync: answer once the record is fdatasynced")
      ->capture_default_str()
      ->check(CLI::IsMember({"async", "sync"}));
  app.add_option("--data-dir", data_dir, "where --commit=sync keeps its log (floor.log)");
  app.add_option("--http-listen", ignored, "accepted and ignored (errand-bench passes it)");
  CLI11_PARSE(app, argc, argv);
  Log log;
  if (commit == "sync") {
    if (data_dir.empty()) {
      std::fprintf(stderr, "errand-floor-broker: --commit=sync needs --data-dir for its log\n");
      return 2;
    }
    std::string error;
    if (!log.Open(data_dir, &error)) {
      std::fprintf(stderr, "errand-floor-broker: %s\n", error.c_str());
      return 1;
    }
    g_log = &log;
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
  std::fprintf(stderr, "errand-floor-broker: serving on port %d (listen %s, commit %s)\n", port,
               listen.c_str(), commit.c_str());
  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::fprintf(stderr, "errand-floor-broker: signal %d, stopping\n", sig);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  // What waits for an fsync gets it; then nothing runs on the fsync thread.
  log.Stop();
  server->Wait();
  return 0;
}
