// errand-bench: the job round trip workload of issue 6 against one broker.
//
//   errand-bench [--addr=127.0.0.1:7600 | --spawn-broker=PATH] [--mode=sync|async]
//                [--n=20000] [--producers=4] [--workers=4] [--payload=256] [--rate=1000]
//                [--paced-n=5000] [--phases=enqueue,drain,roundtrip,paced] [--queue=bench]
//                [--phase-timeout=120] [--credits=ack|early]
//                [--benchmark_* flags of Google Benchmark]
//
// Producers: P threads sharing ONE errand::Client (so one EnqueueStream), each
// enqueueing one job at a time and waiting for its acknowledgement.
// Workers: W threads, each with its own Workers.Connect stream on the client's
// channel: hello(credits=1) -> delivery -> complete -> ack -> credits=1 -> ...
// (one job at a time per worker, as a beanstalkd reserve/delete loop). With
// --credits=early a worker grants its next credit right after sending the
// complete, so the next lease is written in the same commit group.
//
// Phases (each one Google Benchmark run with manual time, one iteration):
//   enqueue    N jobs, producers only; latency = one Enqueue call
//   drain      W workers empty a queue of N (the enqueue phase's queue, or one
//              prefilled with EnqueueBatch); latency = complete -> ack
//   roundtrip  producers and workers at once, N jobs; latency = enqueue start
//              -> completion ack at the worker
//   paced      --paced-n jobs offered at --rate jobs/s (open loop schedule);
//              latency = enqueue start -> completion ack at the worker
// Each phase prints one line starting with "system=errand", and a summary
// table follows at the end. Every phase gives up after --phase-timeout seconds
// and says so (status=timeout); the exit code is then 1.

#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "errand/client.h"
#include "errand/v1/admin.grpc.pb.h"
#include "errand/v1/workers.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;
using std::chrono::seconds;

int64_t NowNs() {
  return std::chrono::duration_cast<nanoseconds>(Clock::now().time_since_epoch()).count();
}

// ---------------------------------------------------------------------------
// Flags.

struct Flags {
  std::string addr = "127.0.0.1:7600";
  std::string spawn_broker;  // path of errand-broker; empty: use --addr
  std::string mode = "sync";
  int n = 20000;
  int producers = 4;
  int workers = 4;
  int payload = 256;
  double rate = 1000;
  int paced_n = 5000;
  std::vector<std::string> phases = {"enqueue", "drain", "roundtrip", "paced"};
  std::string queue = "bench";
  int phase_timeout_s = 120;
  // Workers: "ack" grants the next credit after the completion's ack (one job
  // at a time); "early" grants it right after sending the complete, so the
  // next lease rides the same commit group (a worker then holds up to 2).
  std::string credits = "ack";
};

Flags g_flags;

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep)) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

void Usage() {
  std::fprintf(stderr,
               "usage: errand-bench [--addr=HOST:PORT | --spawn-broker=PATH] [--mode=sync|async]\n"
               "  [--n=20000] [--producers=4] [--workers=4] [--payload=256] [--rate=1000]\n"
               "  [--paced-n=5000] [--phases=enqueue,drain,roundtrip,paced] [--queue=bench]\n"
               "  [--phase-timeout=120] [--credits=ack|early] [--benchmark_...]\n");
}

// Parses our flags out of argv; what is left (argv[0] and --benchmark_*) goes
// to Google Benchmark. Returns false on a bad flag.
bool ParseFlags(int* argc, char** argv) {
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--benchmark_", 0) == 0) {
      argv[out++] = argv[i];
      continue;
    }
    if (a == "--help" || a == "-h") {
      Usage();
      std::exit(0);
    }
    auto eq = a.find('=');
    std::string key = a.substr(0, eq);
    std::string val;
    if (eq != std::string::npos) {
      val = a.substr(eq + 1);
    } else if (i + 1 < *argc) {
      val = argv[++i];
    } else {
      std::fprintf(stderr, "errand-bench: %s needs a value\n", key.c_str());
      return false;
    }
    try {
      if (key == "--addr") g_flags.addr = val;
      else if (key == "--spawn-broker") g_flags.spawn_broker = val;
      else if (key == "--mode") g_flags.mode = val;
      else if (key == "--n") g_flags.n = std::stoi(val);
      else if (key == "--producers") g_flags.producers = std::stoi(val);
      else if (key == "--workers") g_flags.workers = std::stoi(val);
      else if (key == "--payload") g_flags.payload = std::stoi(val);
      else if (key == "--rate") g_flags.rate = std::stod(val);
      else if (key == "--paced-n") g_flags.paced_n = std::stoi(val);
      else if (key == "--phases") g_flags.phases = Split(val, ',');
      else if (key == "--queue") g_flags.queue = val;
      else if (key == "--phase-timeout") g_flags.phase_timeout_s = std::stoi(val);
      else if (key == "--credits") g_flags.credits = val;
      else {
        std::fprintf(stderr, "errand-bench: unknown flag %s\n", key.c_str());
        return false;
      }
    } catch (const std::exception&) {
      std::fprintf(stderr, "errand-bench: bad value for %s: %s\n", key.c_str(), val.c_str());
      return false;
    }
  }
  *argc = out;
  if (g_flags.mode != "sync" && g_flags.mode != "async") {
    std::fprintf(stderr, "errand-bench: --mode must be sync or async\n");
    return false;
  }
  if (g_flags.n < 1 || g_flags.producers < 1 || g_flags.workers < 1 || g_flags.rate <= 0 ||
      g_flags.paced_n < 1 || g_flags.payload < 0 || g_flags.phase_timeout_s < 1 ||
      g_flags.n > 100000000 || g_flags.producers > 4096 || g_flags.workers > 4096) {
    std::fprintf(stderr, "errand-bench: --n, --producers, --workers, --rate, --paced-n, "
                         "--phase-timeout must be positive (and sane)\n");
    return false;
  }
  if (g_flags.credits != "ack" && g_flags.credits != "early") {
    std::fprintf(stderr, "errand-bench: --credits must be ack or early\n");
    return false;
  }
  for (const auto& p : g_flags.phases) {
    if (p != "enqueue" && p != "drain" && p != "roundtrip" && p != "paced") {
      std::fprintf(stderr, "errand-bench: unknown phase %s\n", p.c_str());
      return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------
// A broker process of our own (--spawn-broker).

class SpawnedBroker {
 public:
  ~SpawnedBroker() { Stop(); }

  bool Start(const std::string& path, const std::string& mode, std::string* addr) {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/errand-bench-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) == nullptr) {
      std::perror("errand-bench: mkdtemp");
      return false;
    }
    dir_ = buf.data();
    const std::string port_file = dir_ + "/port";
    log_ = dir_ + "/broker.log";
    // HTTP endpoints on a free port too: the default (7601) may be taken.
    std::vector<std::string> args = {path, "--listen=127.0.0.1:0", "--data-dir=" + dir_ + "/data",
                                     "--port-file=" + port_file, "--commit=" + mode,
                                     "--http-listen=127.0.0.1:0"};
    const pid_t parent = ::getpid();
    pid_t pid = ::fork();
    if (pid < 0) {
      std::perror("errand-bench: fork");
      return false;
    }
    if (pid == 0) {
      // The broker dies with us, even when we crash.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        ::close(fd);
      }
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    pid_ = pid;
    auto deadline = Clock::now() + seconds(20);
    while (Clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        std::fprintf(stderr, "errand-bench: the broker exited during start:\n%s\n", Log().c_str());
        return false;
      }
      std::ifstream in(port_file);
      int port = 0;
      if (in >> port && port > 0) {
        *addr = "127.0.0.1:" + std::to_string(port);
        return true;
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
    std::fprintf(stderr, "errand-bench: the broker wrote no port file in 20 s:\n%s\n",
                 Log().c_str());
    Stop();
    return false;
  }

  // SIGTERM, up to 10 s for a clean exit, then SIGKILL; removes the temp dir.
  void Stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      auto deadline = Clock::now() + seconds(10);
      int status = 0;
      bool exited = false;
      while (Clock::now() < deadline) {
        if (::waitpid(pid_, &status, WNOHANG) == pid_) {
          exited = true;
          break;
        }
        std::this_thread::sleep_for(milliseconds(10));
      }
      if (!exited) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
      }
      pid_ = -1;
    }
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
      dir_.clear();
    }
  }

  pid_t pid() const { return pid_; }

  std::string Log() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  pid_t pid_ = -1;
  std::string dir_;
  std::string log_;
};

// ---------------------------------------------------------------------------
// Shared state of a run.

std::unique_ptr<errand::Client> g_client;
std::unique_ptr<errand::v1::Admin::Stub> g_admin;
std::unique_ptr<errand::v1::Workers::Stub> g_workers_stub;
std::string g_run_id;                 // makes queue names unique per run
std::string g_server_mode = "?";      // GetServerInfo.commit_mode
std::string g_enqueued_queue;         // filled by the enqueue phase, drained by drain
int g_enqueued_jobs = 0;
bool g_any_failed = false;

pid_t g_broker_pid = -1;             // spawned broker, for its CPU time

// utime + stime of a process in microseconds (/proc/PID/stat), -1 if unknown.
double CpuUs(pid_t pid) {
  std::ifstream in(pid > 0 ? "/proc/" + std::to_string(pid) + "/stat" : "/proc/self/stat");
  std::string line;
  if (!std::getline(in, line)) return -1;
  auto rp = line.rfind(')');
  if (rp == std::string::npos) return -1;
  std::istringstream ss(line.substr(rp + 2));
  std::string field;
  double utime = 0, stime = 0;
  // After "pid (comm) ": state is field 3; utime and stime are fields 14, 15.
  for (int f = 3; f <= 15 && ss >> field; ++f) {
    if (f == 14) utime = std::stod(field);
    if (f == 15) stime = std::stod(field);
  }
  return (utime + stime) * 1e6 / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

struct ServerCounters {
  bool ok = false;
  double broker_cpu_us = -1;
  double bench_cpu_us = -1;
  uint64_t fsyncs = 0;
  uint64_t writes = 0;
  uint64_t commits = 0;
};

ServerCounters GetCounters() {
  ServerCounters c;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
  errand::v1::GetServerInfoResponse info;
  grpc::Status s = g_admin->GetServerInfo(&ctx, errand::v1::GetServerInfoRequest(), &info);
  if (!s.ok()) {
    std::fprintf(stderr, "errand-bench: GetServerInfo: %s\n", s.error_message().c_str());
    return c;
  }
  c.ok = true;
  c.fsyncs = info.fsyncs();
  c.writes = info.writes();
  c.commits = info.commits();
  c.broker_cpu_us = g_broker_pid > 0 ? CpuUs(g_broker_pid) : -1;
  c.bench_cpu_us = CpuUs(0);
  g_server_mode = info.commit_mode();
  return c;
}

errand::v1::Durability RequestedDurability() {
  return g_flags.mode == "sync" ? errand::v1::DURABILITY_SYNC : errand::v1::DURABILITY_ASYNC;
}

// A payload of --payload bytes whose first 8 bytes carry the enqueue start
// (steady clock, ns; producers and workers share this process's clock).
std::string MakePayload(int64_t start_ns) {
  std::string p(std::max<size_t>(8, static_cast<size_t>(g_flags.payload)), 'x');
  std::memcpy(p.data(), &start_ns, sizeof(start_ns));
  return p;
}

int64_t PayloadStart(const std::string& p) {
  int64_t v = 0;
  if (p.size() >= sizeof(v)) std::memcpy(&v, p.data(), sizeof(v));
  return v;
}

// What one phase measured.
struct PhaseResult {
  std::string phase;
  uint64_t jobs = 0;     // completed units of the phase (enqueues or completions)
  uint64_t target = 0;
  double secs = 0;
  std::vector<int64_t> lat_ns;
  std::vector<int64_t> take_ns;
  ServerCounters before, after;
  std::map<std::string, uint64_t> acked;  // durability reached by enqueues
  uint64_t errors = 0;
  std::string first_error;
  bool timed_out = false;
  int64_t max_lag_ns = 0;  // paced: how late an enqueue started behind its schedule
  std::string note;

  double rate() const { return secs > 0 ? jobs / secs : 0; }
  bool ok() const { return !timed_out && errors == 0 && jobs == target; }
};

std::vector<PhaseResult> g_results;

// Collects errors and latencies from many threads.
struct Sink {
  std::mutex mu;
  std::vector<int64_t> lat_ns;
  std::vector<int64_t> take_ns;  // workers: credit granted -> delivery
  std::map<std::string, uint64_t> acked;
  std::atomic<uint64_t> errors{0};
  std::string first_error;

  void Merge(std::vector<int64_t>& lat, std::map<std::string, uint64_t>& ack,
             const std::vector<int64_t>& take = {}) {
    std::lock_guard<std::mutex> l(mu);
    lat_ns.insert(lat_ns.end(), lat.begin(), lat.end());
    take_ns.insert(take_ns.end(), take.begin(), take.end());
    for (auto& [k, v] : ack) acked[k] += v;
  }
  void Error(const std::string& what) {
    std::lock_guard<std::mutex> l(mu);
    if (errors++ == 0) first_error = what;
  }
};

std::string DurabilityName(errand::v1::Durability d) {
  switch (d) {
    case errand::v1::DURABILITY_SYNC: return "sync";
    case errand::v1::DURABILITY_ASYNC: return "async";
    default: return "unspecified";
  }
}

// Waits until `done()` or the deadline; looks every 2 ms.
template <typename F>
bool WaitUntil(F done, Clock::time_point deadline) {
  while (!done()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(2));
  }
  return true;
}

// ---------------------------------------------------------------------------
// Producers: P threads, one shared Client, one job at a time each.

class Producers {
 public:
  // Enqueues `total` jobs into `queue`. With rate > 0, job i starts no
  // earlier than t0 + i/rate (open loop schedule); otherwise back to back.
  Producers(std::string queue, uint64_t total, double rate, Sink* sink,
            bool record_enqueue_latency)
      : queue_(std::move(queue)), total_(total), rate_(rate), sink_(sink),
        record_(record_enqueue_latency) {}

  void Start(Clock::time_point deadline) {
    deadline_ = deadline;
    t0_ = Clock::now();
    for (int i = 0; i < g_flags.producers; ++i) threads_.emplace_back([this] { Run(); });
  }
  void Stop() { stop_ = true; }
  void Join() {
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  uint64_t done() const { return done_.load(); }
  int64_t max_lag_ns() const { return max_lag_ns_.load(); }

 private:
  void Run() {
    std::vector<int64_t> lat;
    std::map<std::string, uint64_t> acked;
    errand::v1::EnqueueRequest job;
    job.set_queue(queue_);
    job.set_durability(RequestedDurability());
    errand::EnqueueOptions opts;
    opts.timeout = milliseconds(30000);
    while (!stop_ && Clock::now() < deadline_) {
      uint64_t i = next_.fetch_add(1);
      if (i >= total_) break;
      if (rate_ > 0) {
        auto when = t0_ + nanoseconds(static_cast<int64_t>(i * 1e9 / rate_));
        if (when > deadline_) break;
        std::this_thread::sleep_until(when);
        int64_t lag = (Clock::now() - when).count();
        int64_t prev = max_lag_ns_.load();
        while (lag > prev && !max_lag_ns_.compare_exchange_weak(prev, lag)) {
        }
      }
      int64_t start = NowNs();
      job.set_payload(MakePayload(start));
      // Client::Enqueue is EnqueueFuture(...).get(): the same blocking call on
      // the shared stream, plus the durability the broker acknowledged.
      absl::StatusOr<errand::v1::EnqueueResponse> r = g_client->EnqueueFuture(job, opts).get();
      if (!r.ok()) {
        sink_->Error("enqueue: " + r.status().ToString());
        continue;
      }
      if (record_) lat.push_back(NowNs() - start);
      acked[DurabilityName(r->durability())]++;
      done_.fetch_add(1);
    }
    sink_->Merge(lat, acked);
  }

  std::string queue_;
  uint64_t total_;
  double rate_;
  Sink* sink_;
  bool record_;
  Clock::time_point t0_, deadline_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> next_{0};
  std::atomic<uint64_t> done_{0};
  std::atomic<int64_t> max_lag_ns_{0};
  std::vector<std::thread> threads_;
};

// ---------------------------------------------------------------------------
// Workers: W threads, each with its own Workers.Connect stream.

class Workers {
 public:
  // Completes `total` jobs of `queue` in all. `latency_from_enqueue`: record
  // completion ack time minus the enqueue start carried in the payload;
  // otherwise the complete -> ack time.
  Workers(std::string queue, uint64_t total, Sink* sink, bool latency_from_enqueue)
      : queue_(std::move(queue)), total_(total), sink_(sink), from_enqueue_(latency_from_enqueue) {}

  void Start() {
    ctxs_.resize(g_flags.workers);
    for (int i = 0; i < g_flags.workers; ++i) threads_.emplace_back([this, i] { Run(i); });
  }
  // Cancels every stream (a worker waiting for a delivery is in Read).
  void Stop() {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
    for (auto* c : ctxs_) {
      if (c) c->TryCancel();
    }
  }
  void Join() {
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  uint64_t done() const { return done_.load(); }

 private:
  void Run(int idx) {
    grpc::ClientContext ctx;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stop_) return;
      ctxs_[idx] = &ctx;
    }
    std::vector<int64_t> lat, take;
    std::map<std::string, uint64_t> none;
    const bool early = g_flags.credits == "early";
    auto stream = g_workers_stub->Connect(&ctx);
    errand::v1::ConnectRequest req;
    auto* hello = req.mutable_hello();
    hello->add_queues(queue_);
    hello->set_worker_id("errand-bench-" + std::to_string(::getpid()) + "-" + std::to_string(idx));
    hello->set_credits(1);
    int64_t credit_ns = NowNs();
    bool ok = stream->Write(req);
    uint64_t rid = 0;
    uint64_t pending_rid = 0;  // the complete in flight (0: none)
    int64_t pending_start = 0;
    std::vector<errand::v1::Lease> queued;  // early credits: a delivery during a complete
    auto complete = [&](const errand::v1::Lease& lease) {
      req.Clear();
      req.set_request_id(++rid);
      auto* c = req.mutable_complete();
      c->set_job_id(lease.job().id());
      c->set_lease_token(lease.lease_token());
      pending_rid = rid;
      pending_start = from_enqueue_ ? PayloadStart(lease.job().payload()) : NowNs();
      bool w = stream->Write(req);
      if (w && early) {
        req.Clear();
        req.set_credits(1);
        credit_ns = NowNs();
        w = stream->Write(req);
      }
      return w;
    };
    errand::v1::ConnectResponse msg;
    while (ok && !stop_.load() && done_.load() < total_ && stream->Read(&msg)) {
      if (msg.has_delivery()) {
        take.push_back(NowNs() - credit_ns);
        if (pending_rid != 0) {
          if (!early) sink_->Error("worker: a delivery arrived while a completion was in flight");
          queued.push_back(std::move(*msg.mutable_delivery()));
          continue;
        }
        ok = complete(msg.delivery());
      } else if (msg.has_ack()) {
        const auto& ack = msg.ack();
        if (ack.request_id() != pending_rid) {
          sink_->Error("worker: ack for an unknown request " + std::to_string(ack.request_id()));
          continue;
        }
        pending_rid = 0;
        if (ack.error_code() != 0) {
          sink_->Error("worker: complete failed: code " + std::to_string(ack.error_code()) + " " +
                       ack.error_message());
        } else {
          lat.push_back(NowNs() - pending_start);
          done_.fetch_add(1);
        }
        if (done_.load() >= total_) break;
        if (!queued.empty()) {
          errand::v1::Lease next = std::move(queued.front());
          queued.erase(queued.begin());
          ok = complete(next);
        } else if (!early) {
          req.Clear();
          req.set_credits(1);
          credit_ns = NowNs();
          ok = stream->Write(req);
        }
      }
      // cancel_job_id: nobody cancels bench jobs; ignore.
    }
    sink_->Merge(lat, none, take);
    {
      std::lock_guard<std::mutex> l(mu_);
      ctx.TryCancel();  // ends the stream at once, whatever state it is in
      ctxs_[idx] = nullptr;
    }
    grpc::Status s = stream->Finish();
    (void)s;  // CANCELLED by us; a broker-side error shows up as missing jobs
  }

  std::string queue_;
  uint64_t total_;
  Sink* sink_;
  bool from_enqueue_;
  std::mutex mu_;
  std::atomic<bool> stop_{false};
  std::vector<grpc::ClientContext*> ctxs_;
  std::atomic<uint64_t> done_{0};
  std::vector<std::thread> threads_;
};

// ---------------------------------------------------------------------------
// Phases.

std::string QueueName(const std::string& phase) {
  return g_flags.queue + "-" + g_run_id + "-" + phase;
}

// Puts n jobs into `queue` with EnqueueBatch (not measured).
bool Prefill(const std::string& queue, uint64_t n, Clock::time_point deadline) {
  std::vector<errand::v1::EnqueueRequest> batch;
  uint64_t left = n;
  while (left > 0) {
    if (Clock::now() > deadline) return false;
    batch.clear();
    for (uint64_t i = 0; i < std::min<uint64_t>(left, 500); ++i) {
      errand::v1::EnqueueRequest j;
      j.set_queue(queue);
      j.set_payload(MakePayload(NowNs()));
      batch.push_back(std::move(j));
    }
    auto r = g_client->EnqueueBatch(batch);
    if (!r.ok()) {
      std::fprintf(stderr, "errand-bench: prefill: %s\n", r.status().ToString().c_str());
      return false;
    }
    left -= batch.size();
  }
  return true;
}

PhaseResult RunPhase(const std::string& phase) {
  PhaseResult res;
  res.phase = phase;
  const auto timeout = seconds(g_flags.phase_timeout_s);
  Sink sink;
  std::string queue = QueueName(phase);

  if (phase == "drain") {
    if (!g_enqueued_queue.empty() && g_enqueued_jobs == g_flags.n) {
      queue = g_enqueued_queue;  // the jobs the enqueue phase left behind
      res.note = "queue from the enqueue phase";
    } else if (!Prefill(queue, g_flags.n, Clock::now() + timeout)) {
      res.target = g_flags.n;
      res.errors = 1;
      res.first_error = "prefill failed";
      return res;
    } else {
      res.note = "queue prefilled with EnqueueBatch";
    }
  }

  res.before = GetCounters();
  const auto start = Clock::now();
  const auto deadline = start + timeout;

  if (phase == "enqueue") {
    res.target = g_flags.n;
    Producers prod(queue, res.target, 0, &sink, true);
    prod.Start(deadline);
    res.timed_out = !WaitUntil([&] { return prod.done() + sink.errors >= res.target; }, deadline);
    prod.Stop();
    prod.Join();
    res.secs = std::chrono::duration<double>(Clock::now() - start).count();
    res.jobs = prod.done();
    g_enqueued_queue = queue;
    g_enqueued_jobs = static_cast<int>(res.jobs);
  } else if (phase == "drain") {
    res.target = g_flags.n;
    Workers w(queue, res.target, &sink, false);
    w.Start();
    res.timed_out = !WaitUntil([&] { return w.done() >= res.target || sink.errors > 0; }, deadline);
    res.secs = std::chrono::duration<double>(Clock::now() - start).count();
    w.Stop();
    w.Join();
    res.jobs = w.done();
  } else {  // roundtrip, paced
    const bool paced = phase == "paced";
    res.target = paced ? g_flags.paced_n : g_flags.n;
    Workers w(queue, res.target, &sink, true);
    Producers prod(queue, res.target, paced ? g_flags.rate : 0, &sink, false);
    w.Start();
    prod.Start(deadline);
    res.timed_out = !WaitUntil([&] { return w.done() >= res.target || sink.errors > 0; }, deadline);
    res.secs = std::chrono::duration<double>(Clock::now() - start).count();
    prod.Stop();
    w.Stop();
    prod.Join();
    w.Join();
    res.jobs = w.done();
    res.max_lag_ns = prod.max_lag_ns();
    if (paced) {
      char buf[128];
      std::snprintf(buf, sizeof(buf), "offered %.0f jobs/s; latest enqueue start %.0f us behind schedule",
                    g_flags.rate, prod.max_lag_ns() / 1e3);
      res.note = buf;
    }
  }
  res.after = GetCounters();
  res.lat_ns = std::move(sink.lat_ns);
  res.take_ns = std::move(sink.take_ns);
  res.acked = std::move(sink.acked);
  res.errors = sink.errors.load();
  res.first_error = sink.first_error;
  return res;
}

double Percentile(const std::vector<int64_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t i = static_cast<size_t>(q * (sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)] / 1e3;
}

std::string AckedString(const std::map<std::string, uint64_t>& acked) {
  if (acked.empty()) return "-";
  if (acked.size() == 1) return acked.begin()->first;
  std::string s;
  for (auto& [k, v] : acked) s += (s.empty() ? "" : ",") + k + ":" + std::to_string(v);
  return s;
}

struct Summary {
  double p50 = 0, p99 = 0, max = 0, take_p50 = 0, take_p99 = 0, fsyncs_per_job = -1, writes_per_fsync = -1;
  uint64_t fsyncs = 0, writes = 0;
  double broker_cpu_us_per_job = -1, bench_cpu_us_per_job = -1;
};

Summary Summarize(PhaseResult& r) {
  Summary s;
  std::sort(r.lat_ns.begin(), r.lat_ns.end());
  s.p50 = Percentile(r.lat_ns, 0.50);
  s.p99 = Percentile(r.lat_ns, 0.99);
  s.max = r.lat_ns.empty() ? 0 : r.lat_ns.back() / 1e3;
  std::sort(r.take_ns.begin(), r.take_ns.end());
  s.take_p50 = Percentile(r.take_ns, 0.50);
  s.take_p99 = Percentile(r.take_ns, 0.99);
  if (r.before.ok && r.after.ok) {
    s.fsyncs = r.after.fsyncs - r.before.fsyncs;
    s.writes = r.after.writes - r.before.writes;
    if (r.jobs > 0) s.fsyncs_per_job = static_cast<double>(s.fsyncs) / r.jobs;
    if (s.fsyncs > 0) s.writes_per_fsync = static_cast<double>(s.writes) / s.fsyncs;
    if (r.jobs > 0 && r.before.broker_cpu_us >= 0 && r.after.broker_cpu_us >= 0) {
      s.broker_cpu_us_per_job = (r.after.broker_cpu_us - r.before.broker_cpu_us) / r.jobs;
    }
    if (r.jobs > 0 && r.before.bench_cpu_us >= 0 && r.after.bench_cpu_us >= 0) {
      s.bench_cpu_us_per_job = (r.after.bench_cpu_us - r.before.bench_cpu_us) / r.jobs;
    }
  }
  return s;
}

void PrintLine(PhaseResult& r) {
  Summary s = Summarize(r);
  std::string status = r.timed_out ? "timeout" : (r.ok() ? "ok" : "error");
  std::printf(
      "system=errand mode=%s phase=%s jobs=%llu secs=%.3f rate=%.0f p50_us=%.0f p99_us=%.0f "
      "max_us=%.0f fsyncs_per_job=%.3f writes=%llu fsyncs=%llu writes_per_fsync=%.2f "
      "take_p50_us=%.0f take_p99_us=%.0f broker_cpu_us_per_job=%.1f bench_cpu_us_per_job=%.1f "
      "producers=%d workers=%d credits=%s payload=%d "
      "server_commit=%s acked=%s status=%s\n",
      g_flags.mode.c_str(), r.phase.c_str(), static_cast<unsigned long long>(r.jobs), r.secs,
      r.rate(), s.p50, s.p99, s.max, s.fsyncs_per_job, static_cast<unsigned long long>(s.writes),
      static_cast<unsigned long long>(s.fsyncs), s.writes_per_fsync, s.take_p50, s.take_p99,
      s.broker_cpu_us_per_job, s.bench_cpu_us_per_job, g_flags.producers, g_flags.workers, g_flags.credits.c_str(), g_flags.payload, g_server_mode.c_str(), AckedString(r.acked).c_str(),
      status.c_str());
  if (!r.ok()) {
    std::printf("#   %s: %llu of %llu jobs, %llu errors%s%s\n", r.phase.c_str(),
                static_cast<unsigned long long>(r.jobs), static_cast<unsigned long long>(r.target),
                static_cast<unsigned long long>(r.errors),
                r.first_error.empty() ? "" : "; first: ", r.first_error.c_str());
  }
  std::fflush(stdout);
}

void BM_Phase(benchmark::State& state, std::string phase) {
  for (auto _ : state) {
    PhaseResult r = RunPhase(phase);
    state.SetIterationTime(std::max(r.secs, 1e-9));
    PrintLine(r);
    Summary s = Summarize(r);
    state.counters["jobs"] = static_cast<double>(r.jobs);
    state.counters["jobs_per_s"] = r.rate();
    state.counters["p50_us"] = s.p50;
    state.counters["p99_us"] = s.p99;
    state.counters["max_us"] = s.max;
    state.counters["fsyncs_per_job"] = s.fsyncs_per_job;
    if (!r.ok()) {
      g_any_failed = true;
      state.SkipWithError(r.timed_out ? "phase timed out" : "phase had errors");
    }
    g_results.push_back(std::move(r));
  }
}

void PrintSummary() {
  std::printf("\nerrand-bench summary: broker %s, mode requested %s, broker commit mode %s, "
              "%d producers (one shared Client), %d workers (Workers.Connect), %d-byte payloads\n",
              g_flags.spawn_broker.empty() ? g_flags.addr.c_str() : "spawned",
              g_flags.mode.c_str(), g_server_mode.c_str(), g_flags.producers, g_flags.workers,
              g_flags.payload);
  std::printf("  %-10s %8s %10s %9s %9s %9s %10s %12s  %s\n", "phase", "jobs", "jobs/s", "p50 us",
              "p99 us", "max us", "fsync/job", "broker cpu/job", "");
  for (auto& r : g_results) {
    Summary s = Summarize(r);
    std::string extra = r.note;
    if (!r.ok()) extra = std::string(r.timed_out ? "TIMED OUT " : "ERRORS ") + extra;
    std::printf("  %-10s %8llu %10.0f %9.0f %9.0f %9.0f %10.3f %11.0fus  %s\n", r.phase.c_str(),
                static_cast<unsigned long long>(r.jobs), r.rate(), s.p50, s.p99, s.max,
                s.fsyncs_per_job, s.broker_cpu_us_per_job, extra.c_str());
  }
  std::printf("  latency: enqueue = one Enqueue call; drain = complete->ack; roundtrip/paced = "
              "enqueue start->completion ack\n");
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  if (!ParseFlags(&argc, argv)) {
    Usage();
    return 2;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;

  SpawnedBroker broker;
  std::string addr = g_flags.addr;
  if (!g_flags.spawn_broker.empty()) {
    if (!broker.Start(g_flags.spawn_broker, g_flags.mode, &addr)) return 1;
    g_broker_pid = broker.pid();
    std::fprintf(stderr, "errand-bench: spawned broker pid %d on %s (--commit=%s)\n", broker.pid(),
                 addr.c_str(), g_flags.mode.c_str());
  }
  {
    errand::ClientOptions opts;
    opts.address = addr;
    opts.connect_timeout = milliseconds(10000);
    opts.enqueue_timeout = milliseconds(30000);
    auto c = errand::Client::Connect(opts);
    if (!c.ok()) {
      std::fprintf(stderr, "errand-bench: %s\n", c.status().ToString().c_str());
      return 1;
    }
    g_client = std::move(*c);
  }
  g_admin = errand::v1::Admin::NewStub(g_client->channel());
  g_workers_stub = errand::v1::Workers::NewStub(g_client->channel());
  if (!GetCounters().ok) return 1;
  g_run_id = std::to_string(::getpid()) + "-" +
             std::to_string(std::chrono::duration_cast<milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count());

  for (const auto& phase : g_flags.phases) {
    benchmark::RegisterBenchmark(("errand/" + g_flags.mode + "/" + phase).c_str(), BM_Phase, phase)
        ->UseManualTime()
        ->Iterations(1)
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  PrintSummary();

  g_workers_stub.reset();
  g_admin.reset();
  g_client.reset();
  broker.Stop();
  return g_any_failed ? 1 : 0;
}
