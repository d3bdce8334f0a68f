// errand-bench: the job round trip workload of issue 6 against one broker.
//
//   errand-bench [--addr=127.0.0.1:7600 | --spawn-broker=PATH] [--mode=sync|async]
//                [--n=20000] [--producers=4 | --producers=1,4,16,64] [--workers=4]
//                [--payload=256] [--rate=1000] [--paced-n=5000]
//                [--batch-size=100] [--batch-n=100000]
//                [--phases=enqueue,drain,roundtrip,paced] [--queue=bench]
//                [--phase-timeout=120] [--credits=ack|early]
//                [--scale-n=1000000] [--restart-signal=kill|term]
//                [--subscribers=1000] [--fanout-jobs=200] [--fanout-rate=50]
//                [--waiters=10000] [--scale-channels=4]
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
//   batch      --batch-n jobs, P producer threads each calling the unary
//              Jobs.EnqueueBatch with --batch-size jobs, one call at a time;
//              latency = one EnqueueBatch call
// With a list of producer counts (--producers=1,4,16,64) enqueue, roundtrip
// and batch run once per count; drain and paced run once, with the first.
//
// Opt-in scale phases (never in the default set). Each starts a broker of its
// own on 127.0.0.1 with a temp data dir (so they need --spawn-broker):
//   scale-ready    --scale-n READY jobs by EnqueueBatch; the broker's VmRSS and
//                  VmHWM; then --restart-signal and a restart on the same data
//                  dir; time from exec to the first lease served (unary Lease)
//   scale-fanout   --subscribers Events.Subscribe streams over --scale-channels
//                  connections while one worker completes --fanout-jobs jobs at
//                  --fanout-rate/s; latency = completion ack -> event received
//   scale-waiters  --waiters concurrent WaitJob long polls (callback API);
//                  broker RSS growth while they wait, and every one answers
//                  once its job completes; latency = completion ack -> answer
// Each phase prints one line starting with "system=errand" (phase-specific
// fields are appended at its end), and a summary table follows at the end.
// Every phase gives up after --phase-timeout seconds and says so
// (status=timeout); the exit code is then 1.

#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/client_callback.h>
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
#include <set>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "errand/client.h"
#include "errand/v1/admin.grpc.pb.h"
#include "errand/v1/events.grpc.pb.h"
#include "errand/v1/jobs.grpc.pb.h"
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
  // --producers: one count or a list; enqueue, roundtrip and batch run once
  // per entry, the other phases with the first.
  std::vector<int> producers = {4};
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
  // batch phase: jobs per Jobs.EnqueueBatch call, and jobs in all.
  int batch_size = 100;
  int batch_n = 100000;
  // scale-ready: READY jobs to hold, and how the broker is stopped before the
  // restart ("kill": SIGKILL, a crash; "term": SIGTERM, a clean stop).
  int scale_n = 1000000;
  std::string restart_signal = "kill";
  // scale-fanout: subscribers, and the jobs completed (at fanout_rate/s)
  // while they listen.
  int subscribers = 1000;
  int fanout_jobs = 200;
  double fanout_rate = 50;
  // scale-waiters: concurrent WaitJob calls.
  int waiters = 10000;
  // scale-fanout and scale-waiters: connections the streams/calls spread over.
  int scale_channels = 4;
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
               "  [--n=20000] [--producers=4 | --producers=1,4,16,64] [--workers=4]\n"
               "  [--payload=256] [--rate=1000] [--paced-n=5000] [--batch-size=100]\n"
               "  [--batch-n=100000] [--phases=enqueue,drain,roundtrip,paced] [--queue=bench]\n"
               "  [--phase-timeout=120] [--credits=ack|early] [--benchmark_...]\n"
               "phases: enqueue drain roundtrip paced batch (default: the first four), and the\n"
               "opt-in scale phases, which need --spawn-broker (each starts its own broker):\n"
               "  scale-ready    [--scale-n=1000000] [--restart-signal=kill|term]\n"
               "  scale-fanout   [--subscribers=1000] [--fanout-jobs=200] [--fanout-rate=50]\n"
               "  scale-waiters  [--waiters=10000]\n"
               "  (fanout and waiters spread over [--scale-channels=4] connections)\n");
}

bool IsScalePhase(const std::string& p) { return p.rfind("scale-", 0) == 0; }

// Phases that run once per entry of --producers.
bool IsSweepPhase(const std::string& p) {
  return p == "enqueue" || p == "roundtrip" || p == "batch";
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
      else if (key == "--producers") {
        g_flags.producers.clear();
        for (const auto& v : Split(val, ',')) g_flags.producers.push_back(std::stoi(v));
      }
      else if (key == "--workers") g_flags.workers = std::stoi(val);
      else if (key == "--payload") g_flags.payload = std::stoi(val);
      else if (key == "--rate") g_flags.rate = std::stod(val);
      else if (key == "--paced-n") g_flags.paced_n = std::stoi(val);
      else if (key == "--phases") g_flags.phases = Split(val, ',');
      else if (key == "--queue") g_flags.queue = val;
      else if (key == "--phase-timeout") g_flags.phase_timeout_s = std::stoi(val);
      else if (key == "--credits") g_flags.credits = val;
      else if (key == "--batch-size") g_flags.batch_size = std::stoi(val);
      else if (key == "--batch-n") g_flags.batch_n = std::stoi(val);
      else if (key == "--scale-n") g_flags.scale_n = std::stoi(val);
      else if (key == "--restart-signal") g_flags.restart_signal = val;
      else if (key == "--subscribers") g_flags.subscribers = std::stoi(val);
      else if (key == "--fanout-jobs") g_flags.fanout_jobs = std::stoi(val);
      else if (key == "--fanout-rate") g_flags.fanout_rate = std::stod(val);
      else if (key == "--waiters") g_flags.waiters = std::stoi(val);
      else if (key == "--scale-channels") g_flags.scale_channels = std::stoi(val);
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
  if (g_flags.n < 1 || g_flags.workers < 1 || g_flags.rate <= 0 ||
      g_flags.paced_n < 1 || g_flags.payload < 0 || g_flags.phase_timeout_s < 1 ||
      g_flags.n > 100000000 || g_flags.workers > 4096) {
    std::fprintf(stderr, "errand-bench: --n, --workers, --rate, --paced-n, "
                         "--phase-timeout must be positive (and sane)\n");
    return false;
  }
  if (g_flags.producers.empty()) {
    std::fprintf(stderr, "errand-bench: --producers needs at least one count\n");
    return false;
  }
  for (int p : g_flags.producers) {
    if (p < 1 || p > 4096) {
      std::fprintf(stderr, "errand-bench: --producers: %d is not a count in 1..4096\n", p);
      return false;
    }
  }
  if (g_flags.batch_size < 1 || g_flags.batch_size > 100000 || g_flags.batch_n < 1 ||
      g_flags.batch_n > 100000000) {
    std::fprintf(stderr, "errand-bench: --batch-size must be 1..100000 (the broker's --max-batch "
                         "bounds it too, default 1000) and --batch-n 1..100000000\n");
    return false;
  }
  if (g_flags.scale_n < 1 || g_flags.scale_n > 100000000 || g_flags.subscribers < 1 ||
      g_flags.subscribers > 100000 || g_flags.fanout_jobs < 1 || g_flags.fanout_jobs > 1000000 ||
      g_flags.fanout_rate <= 0 || g_flags.waiters < 1 || g_flags.waiters > 1000000 ||
      g_flags.scale_channels < 1 || g_flags.scale_channels > 64) {
    std::fprintf(stderr, "errand-bench: --scale-n, --subscribers, --fanout-jobs, --fanout-rate, "
                         "--waiters must be positive (and sane); --scale-channels 1..64\n");
    return false;
  }
  if (g_flags.restart_signal != "kill" && g_flags.restart_signal != "term") {
    std::fprintf(stderr, "errand-bench: --restart-signal must be kill or term\n");
    return false;
  }
  if (g_flags.credits != "ack" && g_flags.credits != "early") {
    std::fprintf(stderr, "errand-bench: --credits must be ack or early\n");
    return false;
  }
  for (const auto& p : g_flags.phases) {
    if (p != "enqueue" && p != "drain" && p != "roundtrip" && p != "paced" && p != "batch" &&
        p != "scale-ready" && p != "scale-fanout" && p != "scale-waiters") {
      std::fprintf(stderr, "errand-bench: unknown phase %s\n", p.c_str());
      return false;
    }
    if (IsScalePhase(p) && g_flags.spawn_broker.empty()) {
      std::fprintf(stderr, "errand-bench: phase %s starts a broker of its own: it needs "
                           "--spawn-broker=PATH\n", p.c_str());
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

  // Makes a temp dir and starts `path` there with `extra` flags added;
  // returns once the broker wrote its port file (within `ready_within`).
  bool Start(const std::string& path, const std::string& mode, std::string* addr,
             const std::vector<std::string>& extra = {},
             Clock::duration ready_within = seconds(20)) {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/errand-bench-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) == nullptr) {
      std::perror("errand-bench: mkdtemp");
      return false;
    }
    dir_ = buf.data();
    port_file_ = dir_ + "/port";
    log_ = dir_ + "/broker.log";
    args_ = {path, "--listen=127.0.0.1:0", "--data-dir=" + dir_ + "/data",
             "--port-file=" + port_file_, "--commit=" + mode};
    args_.insert(args_.end(), extra.begin(), extra.end());
    return Launch(addr, ready_within);
  }

  // Stops the running broker with `sig` (SIGKILL: a crash; SIGTERM: a clean
  // stop, SIGKILL after 60 s) and starts it again on the same data dir.
  // `stopped_s`: signal -> exit. `exec_at`: when the new process was forked
  // (it execs at once). Returns once the new broker wrote its port file.
  bool Restart(int sig, std::string* addr, double* stopped_s, Clock::time_point* exec_at,
               Clock::duration ready_within) {
    if (pid_ <= 0) return false;
    const auto t0 = Clock::now();
    ::kill(pid_, sig);
    if (!WaitExit(seconds(60))) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
    pid_ = -1;
    *stopped_s = std::chrono::duration<double>(Clock::now() - t0).count();
    std::error_code ec;
    std::filesystem::remove(port_file_, ec);  // the new broker writes its own
    *exec_at = Clock::now();
    return Launch(addr, ready_within);
  }

  // SIGTERM, up to 10 s for a clean exit, then SIGKILL; removes the temp dir.
  void Stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      if (!WaitExit(seconds(10))) {
        ::kill(pid_, SIGKILL);
        int status = 0;
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
  bool Launch(std::string* addr, Clock::duration ready_within) {
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
      for (auto& a : args_) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    pid_ = pid;
    auto deadline = Clock::now() + ready_within;
    while (Clock::now() < deadline) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        std::fprintf(stderr, "errand-bench: the broker exited during start:\n%s\n", Log().c_str());
        return false;
      }
      std::ifstream in(port_file_);
      int port = 0;
      if (in >> port && port > 0) {
        *addr = "127.0.0.1:" + std::to_string(port);
        return true;
      }
      std::this_thread::sleep_for(milliseconds(2));
    }
    std::fprintf(stderr, "errand-bench: the broker wrote no port file in %.0f s:\n%s\n",
                 std::chrono::duration<double>(ready_within).count(), Log().c_str());
    Stop();
    return false;
  }

  // Waits up to `limit` for the broker to exit (reaping it).
  bool WaitExit(Clock::duration limit) {
    auto deadline = Clock::now() + limit;
    int status = 0;
    while (Clock::now() < deadline) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) return true;
      std::this_thread::sleep_for(milliseconds(2));
    }
    return false;
  }

  pid_t pid_ = -1;
  std::string dir_;
  std::string port_file_;
  std::string log_;
  std::vector<std::string> args_;
};

// ---------------------------------------------------------------------------
// Shared state of a run.

std::unique_ptr<errand::Client> g_client;
std::unique_ptr<errand::v1::Admin::Stub> g_admin;
std::unique_ptr<errand::v1::Workers::Stub> g_workers_stub;
std::unique_ptr<errand::v1::Jobs::Stub> g_jobs_stub;
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
  std::string commit_mode = "?";
};

// A field of /proc/PID/status in kB ("VmRSS", "VmHWM"), -1 if unknown.
long ProcStatusKb(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      try {
        return std::stol(line.substr(field.size() + 1));
      } catch (const std::exception&) {
        return -1;
      }
    }
  }
  return -1;
}

// Counters of the shared broker, or of `admin`'s broker (process `pid`).
// `info_out`: the whole answer, when wanted.
ServerCounters GetCounters(errand::v1::Admin::Stub* admin = nullptr, pid_t pid = -2,
                           errand::v1::GetServerInfoResponse* info_out = nullptr) {
  if (admin == nullptr) admin = g_admin.get();
  if (pid == -2) pid = g_broker_pid;
  ServerCounters c;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
  errand::v1::GetServerInfoResponse info;
  grpc::Status s = admin->GetServerInfo(&ctx, errand::v1::GetServerInfoRequest(), &info);
  if (!s.ok()) {
    std::fprintf(stderr, "errand-bench: GetServerInfo: %s\n", s.error_message().c_str());
    return c;
  }
  c.ok = true;
  c.fsyncs = info.fsyncs();
  c.writes = info.writes();
  c.commits = info.commits();
  c.broker_cpu_us = pid > 0 ? CpuUs(pid) : -1;
  c.bench_cpu_us = CpuUs(0);
  c.commit_mode = info.commit_mode();
  if (admin == g_admin.get()) g_server_mode = info.commit_mode();
  if (info_out != nullptr) *info_out = std::move(info);
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
  int producers = 0;        // producer threads of this run
  std::string extra;        // " key=value" fields appended to the phase's line

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
  // `producers` threads enqueue `total` jobs into `queue`. With rate > 0, job
  // i starts no earlier than t0 + i/rate (open loop schedule); otherwise back
  // to back.
  Producers(std::string queue, uint64_t total, double rate, int producers, Sink* sink,
            bool record_enqueue_latency)
      : queue_(std::move(queue)), total_(total), rate_(rate), producers_(producers), sink_(sink),
        record_(record_enqueue_latency) {}

  void Start(Clock::time_point deadline) {
    deadline_ = deadline;
    t0_ = Clock::now();
    for (int i = 0; i < producers_; ++i) threads_.emplace_back([this] { Run(); });
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
  int producers_;
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
// Batch producers: threads calling the unary Jobs.EnqueueBatch, one call at a
// time each.

struct BatchRun {
  uint64_t jobs = 0;  // jobs acknowledged
  bool timed_out = false;
};

// gRPC deadlines are system_clock times.
std::chrono::system_clock::time_point SystemDeadline(Clock::time_point deadline) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(deadline - Clock::now());
}

std::string StatusText(const grpc::Status& s) {
  return "code " + std::to_string(s.error_code()) + ": " + s.error_message();
}

// `threads` threads put `total` jobs into `queue` with Jobs.EnqueueBatch calls
// of up to `batch_size` jobs on `stub`, one call at a time each, at the
// requested --mode durability. Records each call's latency and the
// durability acknowledged per job in `sink`; with `ids`, collects the new
// job ids (in no particular order). Stops at the first error or `deadline`.
BatchRun EnqueueBatches(errand::v1::Jobs::Stub* stub, const std::string& queue, uint64_t total,
                        int batch_size, int threads, Clock::time_point deadline, Sink* sink,
                        std::vector<std::string>* ids = nullptr) {
  std::atomic<uint64_t> next{0};
  std::atomic<uint64_t> done{0};
  std::mutex ids_mu;
  auto run = [&] {
    std::vector<int64_t> lat;
    std::map<std::string, uint64_t> acked;
    errand::v1::EnqueueBatchRequest req;
    req.set_durability(RequestedDurability());
    while (Clock::now() < deadline && sink->errors.load() == 0) {
      const uint64_t first = next.fetch_add(batch_size);
      if (first >= total) break;
      const uint64_t count = std::min<uint64_t>(batch_size, total - first);
      const int64_t start = NowNs();
      req.clear_jobs();
      for (uint64_t i = 0; i < count; ++i) {
        auto* job = req.add_jobs();
        job->set_queue(queue);
        job->set_payload(MakePayload(start));
      }
      grpc::ClientContext ctx;
      ctx.set_deadline(SystemDeadline(std::min(deadline, Clock::now() + seconds(60))));
      errand::v1::EnqueueBatchResponse resp;
      grpc::Status st = stub->EnqueueBatch(&ctx, req, &resp);
      if (!st.ok()) {
        if (st.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED || Clock::now() < deadline) {
          sink->Error("EnqueueBatch: " + StatusText(st));
        }
        break;
      }
      lat.push_back(NowNs() - start);
      acked[DurabilityName(resp.durability())] += count;
      if (ids != nullptr) {
        std::lock_guard<std::mutex> l(ids_mu);
        for (const auto& r : resp.results()) ids->push_back(r.job_id());
      }
      done.fetch_add(count);
    }
    sink->Merge(lat, acked);
  };
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i) pool.emplace_back(run);
  for (auto& t : pool) t.join();
  BatchRun r;
  r.jobs = done.load();
  r.timed_out = r.jobs < total && sink->errors.load() == 0;
  return r;
}

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

// A phase against the shared broker, with `producers` producer threads.
PhaseResult RunPhase(const std::string& phase, int producers) {
  PhaseResult res;
  res.phase = phase;
  res.producers = producers;
  const auto timeout = seconds(g_flags.phase_timeout_s);
  Sink sink;
  std::string queue =
      IsSweepPhase(phase) ? QueueName(phase + "-p" + std::to_string(producers)) : QueueName(phase);

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
    Producers prod(queue, res.target, 0, producers, &sink, true);
    prod.Start(deadline);
    res.timed_out = !WaitUntil([&] { return prod.done() + sink.errors >= res.target; }, deadline);
    prod.Stop();
    prod.Join();
    res.secs = std::chrono::duration<double>(Clock::now() - start).count();
    res.jobs = prod.done();
    g_enqueued_queue = queue;
    g_enqueued_jobs = static_cast<int>(res.jobs);
  } else if (phase == "batch") {
    res.target = g_flags.batch_n;
    BatchRun b = EnqueueBatches(g_jobs_stub.get(), queue, res.target, g_flags.batch_size,
                                producers, deadline, &sink);
    res.secs = std::chrono::duration<double>(Clock::now() - start).count();
    res.jobs = b.jobs;
    res.timed_out = b.timed_out;
    res.extra = " batch_size=" + std::to_string(g_flags.batch_size);
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
    Producers prod(queue, res.target, paced ? g_flags.rate : 0, producers, &sink, false);
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

// ---------------------------------------------------------------------------
// Scale phases: each runs against a broker of its own (--spawn-broker).

// A channel on a connection of its own: a local subchannel pool (and a
// distinct argument) keep channels from sharing one TCP connection.
std::shared_ptr<grpc::Channel> NewChannel(const std::string& addr, int index) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt("errand-bench.channel", index);
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(addr, grpc::InsecureChannelCredentials(), args);
}

// A spawned broker and the stubs on its first channel.
struct ScaleBroker {
  SpawnedBroker proc;
  std::string addr;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<errand::v1::Admin::Stub> admin;
  std::unique_ptr<errand::v1::Jobs::Stub> jobs;
  std::unique_ptr<errand::v1::Workers::Stub> workers;

  bool Start(std::string* error) {
    // No per-queue depth limit (default 1,000,000): it is not what is measured.
    if (!proc.Start(g_flags.spawn_broker, g_flags.mode, &addr, {"--max-queue-depth=0"})) {
      *error = "the broker did not start";
      return false;
    }
    std::fprintf(stderr, "errand-bench: spawned broker pid %d on %s for a scale phase\n",
                 proc.pid(), addr.c_str());
    return Connect(error);
  }

  // (Re)connects to `addr`.
  bool Connect(std::string* error) {
    channel = NewChannel(addr, 0);
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + seconds(20))) {
      *error = "cannot connect to the spawned broker at " + addr;
      return false;
    }
    admin = errand::v1::Admin::NewStub(channel);
    jobs = errand::v1::Jobs::NewStub(channel);
    workers = errand::v1::Workers::NewStub(channel);
    return true;
  }

  ServerCounters Counters(errand::v1::GetServerInfoResponse* info = nullptr) {
    return GetCounters(admin.get(), proc.pid(), info);
  }
  long Kb(const char* field) const { return ProcStatusKb(proc.pid(), field); }
};

// Leases and completes `total` jobs of `queue` with the unary Workers.Lease
// (up to `lease_batch` jobs per call) and Workers.Complete (callback API, at
// most `in_flight` at once; with `rate` > 0, complete i is sent no earlier
// than t0 + i/rate). Calls on_ack(job id, steady ns) for each acknowledged
// complete, from a gRPC thread. Returns once every complete sent was
// answered; the count acknowledged.
uint64_t LeaseAndComplete(errand::v1::Workers::Stub* stub, const std::string& queue,
                          uint64_t total, uint32_t lease_batch, int in_flight, double rate,
                          Clock::time_point deadline, Sink* sink,
                          const std::function<void(const std::string&, int64_t)>& on_ack) {
  struct Call {
    grpc::ClientContext ctx;
    errand::v1::CompleteRequest req;
    errand::v1::CompleteResponse resp;
  };
  std::mutex mu;
  std::condition_variable cv;
  int outstanding = 0;
  std::atomic<uint64_t> acked{0};
  uint64_t issued = 0;
  const auto t0 = Clock::now();
  bool stop = false;
  while (!stop && issued < total && Clock::now() < deadline && sink->errors.load() == 0) {
    errand::v1::LeaseRequest lreq;
    lreq.add_queues(queue);
    lreq.set_max_jobs(static_cast<uint32_t>(std::min<uint64_t>(lease_batch, total - issued)));
    lreq.mutable_wait()->set_seconds(5);
    lreq.mutable_lease_duration()->set_seconds(600);
    lreq.set_worker_id("errand-bench-scale");
    errand::v1::LeaseResponse lresp;
    grpc::ClientContext lctx;
    lctx.set_deadline(std::chrono::system_clock::now() + seconds(30));
    grpc::Status st = stub->Lease(&lctx, lreq, &lresp);
    if (!st.ok()) {
      sink->Error("Lease: " + StatusText(st));
      break;
    }
    for (const auto& lease : lresp.leases()) {
      if (rate > 0) {
        auto when = t0 + nanoseconds(static_cast<int64_t>(issued * 1e9 / rate));
        if (when > deadline) {
          stop = true;
          break;
        }
        std::this_thread::sleep_until(when);
      }
      {
        std::unique_lock<std::mutex> l(mu);
        if (!cv.wait_until(l, deadline, [&] { return outstanding < in_flight; })) {
          stop = true;
          break;
        }
        ++outstanding;
      }
      auto* call = new Call;
      call->req.set_job_id(lease.job().id());
      call->req.set_lease_token(lease.lease_token());
      call->ctx.set_deadline(std::chrono::system_clock::now() + seconds(30));
      stub->async()->Complete(&call->ctx, &call->req, &call->resp,
                              [&, call](grpc::Status cst) {
                                const int64_t now = NowNs();
                                if (cst.ok()) {
                                  on_ack(call->req.job_id(), now);
                                  acked.fetch_add(1);
                                } else {
                                  sink->Error("Complete: " + StatusText(cst));
                                }
                                delete call;
                                std::lock_guard<std::mutex> l(mu);
                                --outstanding;
                                cv.notify_all();
                              });
      ++issued;
    }
  }
  // Every call has a 30 s deadline, so this wait is bounded.
  std::unique_lock<std::mutex> l(mu);
  cv.wait(l, [&] { return outstanding == 0; });
  return acked.load();
}

// Pending (or finished) phase state that outlives the phase when a stream or
// call fails to end in time (its reactor then still points here).
struct FanoutState {
  std::atomic<int> live{0};        // subscribers that received an event
  std::atomic<int> ended{0};       // subscribers whose stream ended (OnDone)
  std::atomic<uint64_t> measured{0};  // events of measured jobs received
};

// One Events.Subscribe stream; records when each event of `measured_queue`
// arrived. Reactions of one stream never run concurrently.
class FanoutSubscriber : public grpc::ClientReadReactor<errand::v1::SubscribeResponse> {
 public:
  struct Receipt {
    std::string job_id;
    int64_t at_ns;
  };

  FanoutSubscriber(std::string measured_queue, std::shared_ptr<FanoutState> state)
      : measured_queue_(std::move(measured_queue)), state_(std::move(state)) {}

  void Start(errand::v1::Events::Stub* stub, const errand::v1::SubscribeRequest& req) {
    req_ = req;
    stub->async()->Subscribe(&ctx_, &req_, this);
    StartRead(&resp_);
    StartCall();
  }
  void Cancel() { ctx_.TryCancel(); }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // OnDone follows
    const int64_t now = NowNs();
    if (!got_any_) {
      got_any_ = true;
      state_->live.fetch_add(1);
    }
    if (resp_.event().queue() == measured_queue_) {
      receipts_.push_back({resp_.event().job_id(), now});
      state_->measured.fetch_add(1);
    }
    StartRead(&resp_);
  }
  void OnDone(const grpc::Status& s) override {
    status_ = s;
    done_.store(true);
    state_->ended.fetch_add(1);
  }

  // Valid once done().
  bool done() const { return done_.load(); }
  const grpc::Status& status() const { return status_; }
  const std::vector<Receipt>& receipts() const { return receipts_; }

 private:
  const std::string measured_queue_;
  std::shared_ptr<FanoutState> state_;
  grpc::ClientContext ctx_;
  errand::v1::SubscribeRequest req_;
  errand::v1::SubscribeResponse resp_;
  bool got_any_ = false;
  std::vector<Receipt> receipts_;
  grpc::Status status_;
  std::atomic<bool> done_{false};
};

std::string Kv(const std::string& k, long long v) { return " " + k + "=" + std::to_string(v); }
std::string KvF(const std::string& k, double v, int decimals = 0) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), " %s=%.*f", k.c_str(), decimals, v);
  return buf;
}

// scale-ready: --scale-n READY jobs, the broker's memory, then a restart on
// the same data dir and the time from exec to the first lease served.
PhaseResult RunScaleReady() {
  PhaseResult res;
  res.phase = "scale-ready";
  constexpr int kThreads = 4;
  constexpr int kBatch = 1000;  // the broker's default --max-batch
  res.producers = kThreads;
  res.target = g_flags.scale_n;
  const auto timeout = seconds(g_flags.phase_timeout_s);
  Sink sink;
  ScaleBroker b;
  std::string err;
  if (!b.Start(&err)) {
    res.errors = 1;
    res.first_error = err;
    return res;
  }
  const std::string queue = QueueName("scale-ready");
  const long rss_start = b.Kb("VmRSS");
  res.before = b.Counters();
  const auto start = Clock::now();
  BatchRun run =
      EnqueueBatches(b.jobs.get(), queue, res.target, kBatch, kThreads, start + timeout, &sink);
  res.secs = std::chrono::duration<double>(Clock::now() - start).count();
  res.jobs = run.jobs;
  res.timed_out = run.timed_out;
  res.after = b.Counters();
  const long rss = b.Kb("VmRSS");
  const long hwm = b.Kb("VmHWM");
  res.extra = Kv("batch_size", kBatch) + Kv("rss_start_kb", rss_start) + Kv("rss_kb", rss) +
              Kv("hwm_kb", hwm) + " restart_signal=" + g_flags.restart_signal;
  res.note = "RSS " + std::to_string(rss / 1024) + " MB, HWM " + std::to_string(hwm / 1024) +
             " MB with " + std::to_string(res.jobs) + " READY jobs";

  if (!res.timed_out && sink.errors.load() == 0 && res.jobs == res.target) {
    // Restart on the same data dir: exec -> port file -> first lease served.
    const int sig = g_flags.restart_signal == "kill" ? SIGKILL : SIGTERM;
    double stopped_s = 0;
    Clock::time_point exec_at;
    const auto restart_deadline = Clock::now() + timeout;
    if (!b.proc.Restart(sig, &b.addr, &stopped_s, &exec_at, timeout)) {
      sink.Error("the broker did not come back after the restart");
    } else {
      const double ready_s = std::chrono::duration<double>(Clock::now() - exec_at).count();
      double lease_s = -1;
      if (!b.Connect(&err)) {
        sink.Error("after the restart: " + err);
      } else {
        while (Clock::now() < restart_deadline) {
          errand::v1::LeaseRequest lreq;
          lreq.add_queues(queue);
          lreq.set_max_jobs(1);
          lreq.mutable_wait()->set_seconds(10);
          errand::v1::LeaseResponse lresp;
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + seconds(30));
          grpc::Status st = b.workers->Lease(&ctx, lreq, &lresp);
          if (st.error_code() == grpc::StatusCode::UNAVAILABLE) {
            std::this_thread::sleep_for(milliseconds(1));
            continue;
          }
          if (!st.ok()) {
            sink.Error("Lease after the restart: " + StatusText(st));
          } else if (lresp.leases_size() != 1) {
            sink.Error("Lease after the restart returned no job");
          } else {
            lease_s = std::chrono::duration<double>(Clock::now() - exec_at).count();
          }
          break;
        }
        if (lease_s < 0 && sink.errors.load() == 0) {
          sink.Error("no lease served within --phase-timeout after the restart");
        }
      }
      errand::v1::GetServerInfoResponse info;
      const bool info_ok = b.channel && b.Counters(&info).ok;
      if (info_ok && info.jobs() < res.target) {
        sink.Error("after the restart the broker holds " + std::to_string(info.jobs()) +
                   " jobs, expected " + std::to_string(res.target));
      }
      res.extra += KvF("stop_ms", stopped_s * 1e3) + KvF("ready_ms", ready_s * 1e3) +
                   KvF("first_lease_ms", lease_s * 1e3) +
                   Kv("restart_rss_kb", b.Kb("VmRSS")) + Kv("restart_hwm_kb", b.Kb("VmHWM")) +
                   Kv("recovered_jobs", info_ok ? static_cast<long long>(info.jobs()) : -1LL);
      char buf[96];
      std::snprintf(buf, sizeof(buf), "; restart (%s): first lease %.0f ms after exec",
                    g_flags.restart_signal.c_str(), lease_s * 1e3);
      res.note += buf;
    }
  }
  res.lat_ns = std::move(sink.lat_ns);
  res.acked = std::move(sink.acked);
  res.errors = sink.errors.load();
  res.first_error = sink.first_error;
  return res;
}

// scale-fanout: --subscribers streams; latency from each completion's ack to
// each subscriber receiving its SUCCEEDED event.
PhaseResult RunScaleFanout() {
  PhaseResult res;
  res.phase = "scale-fanout";
  res.producers = 1;
  res.target = g_flags.fanout_jobs;
  const auto timeout = seconds(g_flags.phase_timeout_s);
  const auto deadline = Clock::now() + timeout;
  Sink sink;
  ScaleBroker b;
  std::string err;
  if (!b.Start(&err)) {
    res.errors = 1;
    res.first_error = err;
    return res;
  }
  const std::string queue = QueueName("scale-fanout");
  const std::string warm = queue + "-warmup";
  const int subs_n = g_flags.subscribers;
  const int chans_n = g_flags.scale_channels;
  std::vector<std::shared_ptr<grpc::Channel>> chans;
  std::vector<std::unique_ptr<errand::v1::Events::Stub>> stubs;
  for (int i = 0; i < chans_n; ++i) {
    chans.push_back(NewChannel(b.addr, i + 1));
    stubs.push_back(errand::v1::Events::NewStub(chans.back()));
  }
  auto state = std::make_shared<FanoutState>();
  errand::v1::SubscribeRequest sreq;
  sreq.add_queues(queue);
  sreq.add_queues(warm);
  sreq.add_types(errand::v1::EVENT_TYPE_SUCCEEDED);
  std::vector<FanoutSubscriber*> subs;
  for (int i = 0; i < subs_n; ++i) {
    subs.push_back(new FanoutSubscriber(queue, state));
    subs.back()->Start(stubs[i % chans_n].get(), sreq);
  }
  const long rss_idle = b.Kb("VmRSS");

  // Warm-up: complete one job at a time in the warm-up queue until every
  // subscriber received an event, so every stream is live before the
  // measured completions.
  int warm_rounds = 0;
  auto no_op = [](const std::string&, int64_t) {};
  while (state->live.load() < subs_n && state->ended.load() == 0 && sink.errors.load() == 0 &&
         Clock::now() < deadline) {
    ++warm_rounds;
    if (EnqueueBatches(b.jobs.get(), warm, 1, 1, 1, deadline, &sink).jobs != 1) break;
    if (LeaseAndComplete(b.workers.get(), warm, 1, 1, 1, 0, deadline, &sink, no_op) != 1) break;
    WaitUntil([&] { return state->live.load() >= subs_n || state->ended.load() > 0; },
              std::min(deadline, Clock::now() + seconds(1)));
  }
  if (state->ended.load() > 0) {
    for (auto* s : subs) {
      if (s->done()) {
        sink.Error("a subscription ended early: " + StatusText(s->status()));
        break;
      }
    }
  } else if (state->live.load() < subs_n && sink.errors.load() == 0) {
    sink.Error(std::to_string(subs_n - state->live.load()) +
               " subscribers never received a warm-up event");
  }

  // Measured: the jobs exist first (their ENQUEUED events are filtered out),
  // then one worker completes them at --fanout-rate.
  std::mutex ack_mu;
  std::map<std::string, int64_t> ack_ns;
  Clock::time_point start = Clock::now(), last_ack = start;
  long rss_busy = -1;
  if (sink.errors.load() == 0 &&
      EnqueueBatches(b.jobs.get(), queue, res.target, 1000, 1, deadline, &sink).jobs ==
          res.target) {
    res.before = b.Counters();
    start = Clock::now();
    res.jobs = LeaseAndComplete(b.workers.get(), queue, res.target, 1, 1, g_flags.fanout_rate,
                                deadline, &sink, [&](const std::string& id, int64_t at) {
                                  std::lock_guard<std::mutex> l(ack_mu);
                                  ack_ns[id] = at;
                                });
    last_ack = Clock::now();
    res.secs = std::chrono::duration<double>(last_ack - start).count();
    const uint64_t expected = res.jobs * static_cast<uint64_t>(subs_n);
    // Stragglers: up to 10 s after the last completion.
    WaitUntil([&] { return state->measured.load() >= expected; },
              std::min(deadline + seconds(10), last_ack + seconds(10)));
    rss_busy = b.Kb("VmRSS");
    res.after = b.Counters();
  }
  res.timed_out = sink.errors.load() == 0 && res.jobs < res.target;

  for (auto* s : subs) s->Cancel();
  const bool all_ended =
      WaitUntil([&] { return state->ended.load() >= subs_n; }, Clock::now() + seconds(10));
  uint64_t received = 0, before_ack = 0, unknown = 0;
  if (all_ended) {
    for (auto* s : subs) {
      for (const auto& r : s->receipts()) {
        auto it = ack_ns.find(r.job_id);
        if (it == ack_ns.end()) {
          ++unknown;  // its complete was never acknowledged (an error is recorded then)
          continue;
        }
        ++received;
        const int64_t lat = r.at_ns - it->second;
        if (lat < 0) ++before_ack;
        res.lat_ns.push_back(lat);
      }
      delete s;
    }
  } else {
    sink.Error("subscriptions did not end within 10 s of their cancel");  // reactors leak
  }
  const uint64_t expected = res.jobs * static_cast<uint64_t>(subs_n);
  if (all_ended && received < expected && sink.errors.load() == 0 && !res.timed_out) {
    sink.Error(std::to_string(expected - received) + " of " + std::to_string(expected) +
               " events never reached their subscriber");
  }
  res.extra = Kv("subscribers", subs_n) + Kv("channels", chans_n) +
              Kv("events", static_cast<long long>(received)) +
              Kv("missing", static_cast<long long>(expected > received ? expected - received : 0)) +
              Kv("before_ack", static_cast<long long>(before_ack)) +
              Kv("warmup_rounds", warm_rounds) + Kv("rss_idle_kb", rss_idle) +
              Kv("rss_kb", rss_busy) + Kv("hwm_kb", b.Kb("VmHWM"));
  res.note = std::to_string(subs_n) + " subscribers, " + std::to_string(received) +
             " events; latency = completion ack -> event";
  res.acked = std::move(sink.acked);
  res.errors = sink.errors.load();
  res.first_error = sink.first_error;
  return res;
}

// scale-waiters: --waiters WaitJob long polls at once; the broker's RSS growth
// while they wait; each must answer done once its job completes.
PhaseResult RunScaleWaiters() {
  struct WaitCall {
    grpc::ClientContext ctx;
    errand::v1::WaitJobRequest req;
    errand::v1::WaitJobResponse resp;
    grpc::Status status;
    int64_t answered_ns = 0;
  };
  struct WaitState {
    std::atomic<int> answered{0};
  };
  PhaseResult res;
  res.phase = "scale-waiters";
  res.producers = 1;
  res.target = g_flags.waiters;
  const auto timeout = seconds(g_flags.phase_timeout_s);
  const auto deadline = Clock::now() + timeout;
  Sink sink;
  ScaleBroker b;
  std::string err;
  if (!b.Start(&err)) {
    res.errors = 1;
    res.first_error = err;
    return res;
  }
  const std::string queue = QueueName("scale-waiters");
  const int n = g_flags.waiters;
  const int chans_n = g_flags.scale_channels;
  std::vector<std::string> ids;
  if (EnqueueBatches(b.jobs.get(), queue, n, 1000, 1, deadline, &sink, &ids).jobs !=
      static_cast<uint64_t>(n)) {
    res.errors = std::max<uint64_t>(1, sink.errors.load());
    res.first_error = sink.first_error.empty() ? "enqueue timed out" : sink.first_error;
    return res;
  }
  std::map<std::string, int> index;
  for (int i = 0; i < n; ++i) index[ids[i]] = i;
  std::vector<std::shared_ptr<grpc::Channel>> chans;
  std::vector<std::unique_ptr<errand::v1::Jobs::Stub>> stubs;
  for (int i = 0; i < chans_n; ++i) {
    chans.push_back(NewChannel(b.addr, i + 1));
    stubs.push_back(errand::v1::Jobs::NewStub(chans.back()));
    chans.back()->WaitForConnected(std::chrono::system_clock::now() + seconds(10));
  }
  std::this_thread::sleep_for(milliseconds(500));
  const long rss_before = b.Kb("VmRSS");

  // The long polls: as long as the phase may last (at most the API's 5 min).
  const int64_t wait_s = std::min<int64_t>(g_flags.phase_timeout_s, 300);
  auto state = std::make_shared<WaitState>();
  std::vector<WaitCall*> calls;
  for (int i = 0; i < n; ++i) {
    auto* c = new WaitCall;
    c->req.set_job_id(ids[i]);
    c->req.mutable_timeout()->set_seconds(wait_s);
    c->ctx.set_deadline(std::chrono::system_clock::now() + seconds(wait_s + 10));
    calls.push_back(c);
    stubs[i % chans_n]->async()->WaitJob(&c->ctx, &c->req, &c->resp,
                                         [c, state](grpc::Status s) {
                                           c->answered_ns = NowNs();
                                           c->status = std::move(s);
                                           state->answered.fetch_add(1);
                                         });
  }
  // Settle: every call reached the broker once its RSS stops moving (1 s at
  // least, 10 s at most).
  std::this_thread::sleep_for(seconds(1));
  long rss_waiting = b.Kb("VmRSS");
  for (auto until = Clock::now() + seconds(9); Clock::now() < until;) {
    std::this_thread::sleep_for(milliseconds(250));
    const long now_kb = b.Kb("VmRSS");
    const bool still = std::labs(now_kb - rss_waiting) < 512;
    rss_waiting = now_kb;
    if (still) break;
  }
  const int early = state->answered.load();
  if (early > 0) {
    sink.Error(std::to_string(early) + " WaitJob calls answered before their jobs completed");
  }

  std::vector<int64_t> ack_ns(n, 0);
  res.before = b.Counters();
  const auto start = Clock::now();
  if (sink.errors.load() == 0) {
    LeaseAndComplete(b.workers.get(), queue, n, 1000, 64, 0, deadline, &sink,
                     [&](const std::string& id, int64_t at) { ack_ns[index.at(id)] = at; });
  }
  WaitUntil([&] { return state->answered.load() >= n || sink.errors.load() > 0; }, deadline);
  res.secs = std::chrono::duration<double>(Clock::now() - start).count();
  res.after = b.Counters();
  const long rss_after = b.Kb("VmRSS");
  for (auto* c : calls) c->ctx.TryCancel();
  const bool all_answered =
      WaitUntil([&] { return state->answered.load() >= n; }, Clock::now() + seconds(10));
  uint64_t not_done = 0;
  if (all_answered) {
    for (int i = 0; i < n; ++i) {
      WaitCall* c = calls[i];
      if (c->status.ok() && c->resp.done() &&
          c->resp.job().state() == errand::v1::JOB_STATE_SUCCEEDED && ack_ns[i] != 0) {
        ++res.jobs;
        res.lat_ns.push_back(c->answered_ns - ack_ns[i]);
      } else {
        ++not_done;
        if (sink.errors.load() == 0) {
          const std::string what =
              c->status.ok() ? std::string("answered done=") + (c->resp.done() ? "true" : "false")
                             : StatusText(c->status);
          sink.Error("WaitJob for job " + ids[i] + ": " + what);
        }
      }
      delete c;
    }
  } else {
    sink.Error("WaitJob calls did not end within 10 s of their cancel");  // calls leak
  }
  res.timed_out = sink.errors.load() == 0 && res.jobs < res.target;
  res.extra = Kv("waiters", n) + Kv("channels", chans_n) + Kv("rss_before_kb", rss_before) +
              Kv("rss_waiting_kb", rss_waiting) + Kv("rss_growth_kb", rss_waiting - rss_before) +
              Kv("rss_after_kb", rss_after) + Kv("hwm_kb", b.Kb("VmHWM")) +
              Kv("answered", static_cast<long long>(res.jobs)) +
              Kv("not_done", static_cast<long long>(not_done));
  res.note = std::to_string(n) + " waiters: RSS +" +
             std::to_string((rss_waiting - rss_before) / 1024) +
             " MB; latency = completion ack -> WaitJob answer";
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

// The broker's commit mode during the phase (scale phases have their own).
std::string ServerMode(const PhaseResult& r) {
  if (r.after.ok) return r.after.commit_mode;
  if (r.before.ok) return r.before.commit_mode;
  return IsScalePhase(r.phase) ? "?" : g_server_mode;
}

void PrintLine(PhaseResult& r) {
  Summary s = Summarize(r);
  std::string status = r.timed_out ? "timeout" : (r.ok() ? "ok" : "error");
  std::printf(
      "system=errand mode=%s phase=%s jobs=%llu secs=%.3f rate=%.0f p50_us=%.0f p99_us=%.0f "
      "max_us=%.0f fsyncs_per_job=%.3f writes=%llu fsyncs=%llu writes_per_fsync=%.2f "
      "take_p50_us=%.0f take_p99_us=%.0f broker_cpu_us_per_job=%.1f bench_cpu_us_per_job=%.1f "
      "producers=%d workers=%d credits=%s payload=%d "
      "server_commit=%s acked=%s status=%s%s\n",
      g_flags.mode.c_str(), r.phase.c_str(), static_cast<unsigned long long>(r.jobs), r.secs,
      r.rate(), s.p50, s.p99, s.max, s.fsyncs_per_job, static_cast<unsigned long long>(s.writes),
      static_cast<unsigned long long>(s.fsyncs), s.writes_per_fsync, s.take_p50, s.take_p99,
      s.broker_cpu_us_per_job, s.bench_cpu_us_per_job, r.producers, g_flags.workers, g_flags.credits.c_str(), g_flags.payload, ServerMode(r).c_str(), AckedString(r.acked).c_str(),
      status.c_str(), r.extra.c_str());
  if (!r.ok()) {
    std::printf("#   %s: %llu of %llu jobs, %llu errors%s%s\n", r.phase.c_str(),
                static_cast<unsigned long long>(r.jobs), static_cast<unsigned long long>(r.target),
                static_cast<unsigned long long>(r.errors),
                r.first_error.empty() ? "" : "; first: ", r.first_error.c_str());
  }
  std::fflush(stdout);
}

void BM_Phase(benchmark::State& state, std::string phase, int producers) {
  for (auto _ : state) {
    PhaseResult r = phase == "scale-ready"     ? RunScaleReady()
                    : phase == "scale-fanout"  ? RunScaleFanout()
                    : phase == "scale-waiters" ? RunScaleWaiters()
                                               : RunPhase(phase, producers);
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
  std::string plist;
  for (int p : g_flags.producers) plist += (plist.empty() ? "" : ",") + std::to_string(p);
  std::printf("\nerrand-bench summary: broker %s, mode requested %s, broker commit mode %s, "
              "%s producers (one shared Client), %d workers (Workers.Connect), %d-byte payloads\n",
              g_flags.spawn_broker.empty() ? g_flags.addr.c_str() : "spawned",
              g_flags.mode.c_str(), g_server_mode.c_str(), plist.c_str(), g_flags.workers,
              g_flags.payload);
  std::printf("  %-13s %4s %8s %10s %9s %9s %9s %10s %12s  %s\n", "phase", "P", "jobs", "jobs/s",
              "p50 us", "p99 us", "max us", "fsync/job", "broker cpu/job", "");
  for (auto& r : g_results) {
    Summary s = Summarize(r);
    std::string extra = r.note;
    if (!r.ok()) extra = std::string(r.timed_out ? "TIMED OUT " : "ERRORS ") + extra;
    std::printf("  %-13s %4d %8llu %10.0f %9.0f %9.0f %9.0f %10.3f %11.0fus  %s\n",
                r.phase.c_str(), r.producers, static_cast<unsigned long long>(r.jobs), r.rate(),
                s.p50, s.p99, s.max, s.fsyncs_per_job, s.broker_cpu_us_per_job, extra.c_str());
  }
  std::printf("  latency: enqueue = one Enqueue call; drain = complete->ack; roundtrip/paced = "
              "enqueue start->completion ack; batch, scale-ready = one EnqueueBatch call; "
              "scale-fanout, scale-waiters = completion ack->event or answer\n");
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

  g_run_id = std::to_string(::getpid()) + "-" +
             std::to_string(std::chrono::duration_cast<milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count());
  // The shared broker serves every phase but the scale ones.
  const bool shared = std::any_of(g_flags.phases.begin(), g_flags.phases.end(),
                                  [](const std::string& p) { return !IsScalePhase(p); });
  SpawnedBroker broker;
  std::string addr = g_flags.addr;
  if (shared && !g_flags.spawn_broker.empty()) {
    if (!broker.Start(g_flags.spawn_broker, g_flags.mode, &addr)) return 1;
    g_broker_pid = broker.pid();
    std::fprintf(stderr, "errand-bench: spawned broker pid %d on %s (--commit=%s)\n", broker.pid(),
                 addr.c_str(), g_flags.mode.c_str());
  }
  if (shared) {
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
    g_admin = errand::v1::Admin::NewStub(g_client->channel());
    g_workers_stub = errand::v1::Workers::NewStub(g_client->channel());
    g_jobs_stub = errand::v1::Jobs::NewStub(g_client->channel());
    if (!GetCounters().ok) return 1;
  }

  for (const auto& phase : g_flags.phases) {
    // Sweep phases run once per producer count; the others with the first.
    std::vector<int> counts = {g_flags.producers.front()};
    if (IsSweepPhase(phase)) counts = g_flags.producers;
    for (int p : counts) {
      std::string name = "errand/" + g_flags.mode + "/" + phase;
      if (!IsScalePhase(phase)) name += "/P=" + std::to_string(p);
      benchmark::RegisterBenchmark(name.c_str(), BM_Phase, phase, p)
          ->UseManualTime()
          ->Iterations(1)
          ->Unit(benchmark::kMillisecond);
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  PrintSummary();

  g_jobs_stub.reset();
  g_workers_stub.reset();
  g_admin.reset();
  g_client.reset();
  broker.Stop();
  return g_any_failed ? 1 : 0;
}
