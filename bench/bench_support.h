#pragma once

// What the phases of errand-bench share: the flags, the result of a phase and
// the sink its threads report into, a broker's counters and memory, payloads
// that carry their start time, and the EnqueueBatch producers.

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "errand/v1/admin.grpc.pb.h"
#include "errand/v1/jobs.grpc.pb.h"

namespace errand_bench {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;
using std::chrono::seconds;

// Steady clock, ns; every thread of the process shares it.
int64_t NowNs();

// ---------------------------------------------------------------------------
// Flags: set by main before any phase runs, read-only afterwards.

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
  std::vector<std::string> phases = {"enqueue", "drain", "roundtrip", "paced", "batch"};
  std::string queue = "bench";
  int phase_timeout_s = 120;
  // Workers: "with-complete" (the default, what the library's Worker does)
  // sends the next credit in the complete itself (ConnectRequest.more_credits);
  // "ack" grants it in a message of its own after the completion's ack;
  // "early" grants it in a message of its own right after sending the
  // complete. With "early" and "with-complete" the next lease rides the
  // complete's commit group.
  std::string credits = "with-complete";
  // Workers set hello.packed_acks (as the library's Worker does): an ack and
  // the delivery after it may come in one message. --packed-acks=false: one
  // message each, as a client that knows only the oneof gets them.
  bool packed_acks = true;
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

extern Flags g_flags;

// Phases that start a broker of their own ("scale-...").
bool IsScalePhase(const std::string& p);
// Phases that run once per entry of --producers.
bool IsSweepPhase(const std::string& p);

// ---------------------------------------------------------------------------
// The shared broker (every phase but the scale ones), set up by main.

extern std::unique_ptr<errand::v1::Admin::Stub> g_admin;
extern std::string g_run_id;       // makes queue names unique per run
extern std::string g_server_mode;  // its GetServerInfo.commit_mode
// "errand", or "grpc-floor" when the shared broker is errand-floor-broker
// (its GetServerInfo.version says so): the `system=` of every line.
extern std::string g_system;
extern pid_t g_broker_pid;         // spawned broker, for its CPU time; -1: none

// This run's queue for `phase`.
std::string QueueName(const std::string& phase);

// ---------------------------------------------------------------------------
// A broker's counters and memory.

// utime + stime of a process in microseconds (/proc/PID/stat; pid 0: this
// process), -1 if unknown.
double CpuUs(pid_t pid);
// Context switches (voluntary and not) of a process's threads (pid 0: this
// process), -1 if unknown.
double ContextSwitches(pid_t pid);

struct ServerCounters {
  bool ok = false;
  double broker_cpu_us = -1;
  double bench_cpu_us = -1;
  double broker_csw = -1;
  double bench_csw = -1;
  uint64_t fsyncs = 0;
  uint64_t writes = 0;
  uint64_t commits = 0;
  std::string commit_mode = "?";
};

// A field of /proc/PID/status in kB ("VmRSS", "VmHWM"), -1 if unknown.
long ProcStatusKb(pid_t pid, const std::string& field);

// Counters of the shared broker, or of `admin`'s broker (process `pid`).
// `info_out`: the whole answer, when wanted.
ServerCounters GetCounters(errand::v1::Admin::Stub* admin = nullptr, pid_t pid = -2,
                           errand::v1::GetServerInfoResponse* info_out = nullptr);

// ---------------------------------------------------------------------------
// Jobs and what a phase measured.

// The durability --mode asks for, and durability names for the lines.
errand::v1::Durability RequestedDurability();
std::string DurabilityName(errand::v1::Durability d);

// A payload of --payload bytes whose first 8 bytes carry the enqueue start
// (NowNs()), and that start read back.
std::string MakePayload(int64_t start_ns);
int64_t PayloadStart(const std::string& p);

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

// Waits until `done()` or the deadline; looks every 2 ms.
template <typename F>
bool WaitUntil(F done, Clock::time_point deadline) {
  while (!done()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(2));
  }
  return true;
}

// gRPC deadlines are system_clock times.
std::chrono::system_clock::time_point SystemDeadline(Clock::time_point deadline);
std::string StatusText(const grpc::Status& s);

// ---------------------------------------------------------------------------
// Batch producers: threads calling the unary Jobs.EnqueueBatch, one call at a
// time each.

struct BatchRun {
  uint64_t jobs = 0;  // jobs acknowledged
  bool timed_out = false;
};

// `threads` threads put `total` jobs into `queue` with Jobs.EnqueueBatch calls
// of up to `batch_size` jobs on `stub`, one call at a time each, at the
// requested --mode durability. Records each call's latency and the
// durability acknowledged per job in `sink`; with `ids`, collects the new
// job ids (in no particular order). Stops at the first error or `deadline`.
BatchRun EnqueueBatches(errand::v1::Jobs::Stub* stub, const std::string& queue, uint64_t total,
                        int batch_size, int threads, Clock::time_point deadline, Sink* sink,
                        std::vector<std::string>* ids = nullptr);

}  // namespace errand_bench
