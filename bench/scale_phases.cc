#include "scale_phases.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/client_callback.h>
#include <signal.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>

#include "errand/v1/events.grpc.pb.h"
#include "errand/v1/workers.grpc.pb.h"
#include "spawned_broker.h"

namespace errand_bench {
namespace {

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

  // `flags`: more broker flags, e.g. limits the phase must stay within.
  bool Start(std::string* error, std::vector<std::string> flags = {}) {
    // No per-queue depth limit (default 1,000,000): it is not what is measured.
    flags.push_back("--max-queue-depth=0");
    if (!proc.Start(g_flags.spawn_broker, g_flags.mode, &addr, flags)) {
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

}  // namespace

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
  const int n = g_flags.waiters;
  const int chans_n = g_flags.scale_channels;
  // The broker's long-poll limits (default 10,000 in total, 1,000 per
  // connection) are not what is measured: room for every waiter on
  // --scale-channels connections.
  const int per_chan = (n + chans_n - 1) / chans_n;
  if (!b.Start(&err, {"--max-long-polls=" + std::to_string(n + 16),
                      "--max-long-polls-per-connection=" + std::to_string(per_chan + 16)})) {
    res.errors = 1;
    res.first_error = err;
    return res;
  }
  const std::string queue = QueueName("scale-waiters");
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

}  // namespace errand_bench
