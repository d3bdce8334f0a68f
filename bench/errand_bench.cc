// errand-bench: the job round trip workload of issue 6 against one broker.
//
//   errand-bench [--addr=127.0.0.1:7600 | --spawn-broker=PATH] [--mode=sync|async]
//                [--n=20000] [--producers=4 | --producers=1,4,16,64] [--workers=4]
//                [--payload=256] [--rate=1000] [--paced-n=5000]
//                [--batch-size=100] [--batch-n=100000]
//                [--phases=enqueue,drain,roundtrip,paced,batch] [--queue=bench]
//                [--phase-timeout=120] [--credits=with-complete|ack|early]
//                [--packed-acks=true|false]
//                [--scale-n=1000000] [--restart-signal=kill|term]
//                [--subscribers=1000] [--fanout-jobs=200] [--fanout-rate=50]
//                [--waiters=10000] [--scale-channels=4]
//                [--benchmark_* flags of Google Benchmark]
//
// Producers: P threads sharing ONE errand::Client (so one EnqueueStream), each
// enqueueing one job at a time and waiting for its acknowledgement.
// Workers: W threads, each with its own Workers.Connect stream on the client's
// channel: hello(credits=1) -> delivery -> complete(more_credits=1) -> ack ->
// ... (--credits=with-complete, the default: what the library's Worker does;
// the next lease joins the complete's commit group). --credits=ack grants the
// next credit in a message of its own after the ack: credit, delivery,
// complete, ack, one commit cycle for the lease and one for the complete.
// --credits=early sends that credit message right after the complete (a
// worker then holds up to two leases). Every way, a worker completes its next
// job only after the previous complete's ack (as a beanstalkd reserve/delete
// loop does). Workers set hello.packed_acks, as the library's Worker does, so
// an ack and the next delivery may share a message (--packed-acks=false: not).
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
// The default phases are these five.
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
// Against errand-floor-broker (bench/floor_broker.cc: the floor that gRPC and
// the client library set, no broker work behind them) the lines say
// "system=grpc-floor".
// Every phase gives up after --phase-timeout seconds and says so
// (status=timeout); the exit code is then 1.
//
// Files: bench_support.* (flags, results, counters, EnqueueBatch producers),
// spawned_broker.* (a broker process of our own), scale_phases.* (the scale
// phases); this file parses the flags and runs the other phases.

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

#include "bench_support.h"
#include "errand/client.h"
#include "errand/v1/admin.grpc.pb.h"
#include "errand/v1/events.grpc.pb.h"
#include "errand/v1/jobs.grpc.pb.h"
#include "errand/v1/workers.grpc.pb.h"
#include "scale_phases.h"
#include "spawned_broker.h"

namespace errand_bench {
namespace {

// ---------------------------------------------------------------------------
// Flags (the struct is in bench_support.h).

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
               "  [--batch-n=100000] [--phases=enqueue,drain,roundtrip,paced,batch]\n"
               "  [--queue=bench] [--phase-timeout=120] [--credits=with-complete|ack|early]\n"
               "  [--packed-acks=true|false] [--benchmark_...]\n"
               "phases: enqueue drain roundtrip paced batch (the default: all five), and the\n"
               "opt-in scale phases, which need --spawn-broker (each starts its own broker):\n"
               "  scale-ready    [--scale-n=1000000] [--restart-signal=kill|term]\n"
               "  scale-fanout   [--subscribers=1000] [--fanout-jobs=200] [--fanout-rate=50]\n"
               "  scale-waiters  [--waiters=10000]\n"
               "  (fanout and waiters spread over [--scale-channels=4] connections)\n"
               "--spawn-broker=PATH/errand-floor-broker measures the gRPC floor: the same\n"
               "calls answered from memory, no broker work (--mode=sync: plus an fsynced\n"
               "log; lines say system=grpc-floor); see docs/performance.md, \"The gRPC floor\".\n");
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
      else if (key == "--packed-acks") {
        if (val != "true" && val != "false") {
          std::fprintf(stderr, "errand-bench: --packed-acks must be true or false\n");
          return false;
        }
        g_flags.packed_acks = val == "true";
      }
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
  if (g_flags.credits != "ack" && g_flags.credits != "early" &&
      g_flags.credits != "with-complete") {
    std::fprintf(stderr, "errand-bench: --credits must be with-complete, ack or early\n");
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
// Shared state of a run (with g_admin, g_run_id, g_server_mode and
// g_broker_pid of bench_support.h).

std::unique_ptr<errand::Client> g_client;
std::unique_ptr<errand::v1::Workers::Stub> g_workers_stub;
std::unique_ptr<errand::v1::Jobs::Stub> g_jobs_stub;
std::string g_enqueued_queue;  // filled by the enqueue phase, drained by drain
int g_enqueued_jobs = 0;
bool g_any_failed = false;
std::vector<PhaseResult> g_results;

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
    const bool with_complete = g_flags.credits == "with-complete";
    const bool ahead = early || with_complete;  // the next credit goes before the ack
    auto stream = g_workers_stub->Connect(&ctx);
    errand::v1::ConnectRequest req;
    auto* hello = req.mutable_hello();
    hello->add_queues(queue_);
    hello->set_worker_id("errand-bench-" + std::to_string(::getpid()) + "-" + std::to_string(idx));
    hello->set_credits(1);
    hello->set_packed_acks(g_flags.packed_acks);
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
      if (with_complete) {
        req.set_more_credits(1);
        credit_ns = NowNs();
      }
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
    // False when the worker is done.
    auto on_ack = [&](const errand::v1::ConnectAck& ack) {
      if (ack.request_id() != pending_rid) {
        sink_->Error("worker: ack for an unknown request " + std::to_string(ack.request_id()));
        return true;
      }
      pending_rid = 0;
      if (ack.error_code() != 0) {
        sink_->Error("worker: complete failed: code " + std::to_string(ack.error_code()) + " " +
                     ack.error_message());
      } else {
        lat.push_back(NowNs() - pending_start);
        done_.fetch_add(1);
      }
      if (done_.load() >= total_) return false;
      if (!queued.empty()) {
        errand::v1::Lease next = std::move(queued.front());
        queued.erase(queued.begin());
        ok = complete(next);
      } else if (!ahead) {
        req.Clear();
        req.set_credits(1);
        credit_ns = NowNs();
        ok = stream->Write(req);
      }
      return true;
    };
    errand::v1::ConnectResponse msg;
    bool going = true;
    while (going && ok && !stop_.load() && done_.load() < total_ && stream->Read(&msg)) {
      // hello.packed_acks: acks ride in front of the message's kind.
      for (const auto& ack : msg.acks()) {
        if (!(going = on_ack(ack))) break;
      }
      if (!going || !ok) break;
      if (msg.has_delivery()) {
        take.push_back(NowNs() - credit_ns);
        if (pending_rid != 0) {
          if (!ahead) sink_->Error("worker: a delivery arrived while a completion was in flight");
          queued.push_back(std::move(*msg.mutable_delivery()));
          continue;
        }
        ok = complete(msg.delivery());
      } else if (msg.has_ack()) {
        going = on_ack(msg.ack());
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
  double broker_csw_per_job = -1, bench_csw_per_job = -1;
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
    if (r.jobs > 0 && r.before.broker_csw >= 0 && r.after.broker_csw >= 0) {
      s.broker_csw_per_job = (r.after.broker_csw - r.before.broker_csw) / r.jobs;
    }
    if (r.jobs > 0 && r.before.bench_csw >= 0 && r.after.bench_csw >= 0) {
      s.bench_csw_per_job = (r.after.bench_csw - r.before.bench_csw) / r.jobs;
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
      "system=%s mode=%s phase=%s jobs=%llu secs=%.3f rate=%.0f p50_us=%.0f p99_us=%.0f "
      "max_us=%.0f fsyncs_per_job=%.3f writes=%llu fsyncs=%llu writes_per_fsync=%.2f "
      "take_p50_us=%.0f take_p99_us=%.0f broker_cpu_us_per_job=%.1f bench_cpu_us_per_job=%.1f "
      "broker_csw_per_job=%.1f bench_csw_per_job=%.1f producers=%d workers=%d credits=%s "
      "packed_acks=%d payload=%d server_commit=%s acked=%s status=%s%s\n",
      g_system.c_str(), g_flags.mode.c_str(), r.phase.c_str(),
      static_cast<unsigned long long>(r.jobs), r.secs,
      r.rate(), s.p50, s.p99, s.max, s.fsyncs_per_job, static_cast<unsigned long long>(s.writes),
      static_cast<unsigned long long>(s.fsyncs), s.writes_per_fsync, s.take_p50, s.take_p99,
      s.broker_cpu_us_per_job, s.bench_cpu_us_per_job, s.broker_csw_per_job,
      s.bench_csw_per_job, r.producers, g_flags.workers, g_flags.credits.c_str(),
      g_flags.packed_acks ? 1 : 0, g_flags.payload, ServerMode(r).c_str(), AckedString(r.acked).c_str(),
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
  const bool shared = std::any_of(g_flags.phases.begin(), g_flags.phases.end(),
                                  [](const std::string& p) { return !IsScalePhase(p); });
  std::printf("\nerrand-bench summary: %s%s, mode requested %s, broker commit mode %s, "
              "%s producers (one shared Client), %d workers (Workers.Connect), %d-byte payloads\n",
              g_system == "grpc-floor" ? "errand-floor-broker (the gRPC floor, no broker work) "
                                       : "broker ",
              !shared ? "of its own per scale phase"
              : g_flags.spawn_broker.empty() ? g_flags.addr.c_str() : "spawned",
              g_flags.mode.c_str(), shared ? g_server_mode.c_str() : g_flags.mode.c_str(),
              plist.c_str(), g_flags.workers, g_flags.payload);
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

int Main(int argc, char** argv) {
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
      std::string name = g_system + "/" + g_flags.mode + "/" + phase;
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

}  // namespace errand_bench

int main(int argc, char** argv) { return errand_bench::Main(argc, argv); }
