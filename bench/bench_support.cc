#include "bench_support.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace errand_bench {

Flags g_flags;
std::unique_ptr<errand::v1::Admin::Stub> g_admin;
std::string g_run_id;
std::string g_server_mode = "?";
std::string g_system = "errand";
pid_t g_broker_pid = -1;

int64_t NowNs() {
  return std::chrono::duration_cast<nanoseconds>(Clock::now().time_since_epoch()).count();
}

bool IsScalePhase(const std::string& p) { return p.rfind("scale-", 0) == 0; }

bool IsSweepPhase(const std::string& p) {
  return p == "enqueue" || p == "roundtrip" || p == "batch";
}

std::string QueueName(const std::string& phase) {
  return g_flags.queue + "-" + g_run_id + "-" + phase;
}

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

double ContextSwitches(pid_t pid) {
  if (pid <= 0) {
    // Every thread of this process, those that ended included.
    rusage ru{};
    if (::getrusage(RUSAGE_SELF, &ru) != 0) return -1;
    return static_cast<double>(ru.ru_nvcsw + ru.ru_nivcsw);
  }
  // Another process: the sum over its threads now (/proc/PID/status counts
  // the main thread only). The broker's threads live as long as it does.
  std::error_code ec;
  std::filesystem::directory_iterator tasks("/proc/" + std::to_string(pid) + "/task", ec);
  if (ec) return -1;
  double total = 0;
  for (const auto& task : tasks) {
    std::ifstream in(task.path() / "status");
    std::string line;
    while (std::getline(in, line)) {
      for (const char* key : {"voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"}) {
        if (line.rfind(key, 0) == 0) total += std::strtod(line.c_str() + std::strlen(key), nullptr);
      }
    }
  }
  return total;
}

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

ServerCounters GetCounters(errand::v1::Admin::Stub* admin, pid_t pid,
                           errand::v1::GetServerInfoResponse* info_out) {
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
  c.broker_csw = pid > 0 ? ContextSwitches(pid) : -1;
  c.bench_csw = ContextSwitches(0);
  c.commit_mode = info.commit_mode();
  if (admin == g_admin.get()) {
    g_server_mode = info.commit_mode();
    if (info.version() == "errand-floor-broker") g_system = "grpc-floor";
  }
  if (info_out != nullptr) *info_out = std::move(info);
  return c;
}

errand::v1::Durability RequestedDurability() {
  return g_flags.mode == "sync" ? errand::v1::DURABILITY_SYNC : errand::v1::DURABILITY_ASYNC;
}

std::string DurabilityName(errand::v1::Durability d) {
  switch (d) {
    case errand::v1::DURABILITY_SYNC: return "sync";
    case errand::v1::DURABILITY_ASYNC: return "async";
    default: return "unspecified";
  }
}

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

std::chrono::system_clock::time_point SystemDeadline(Clock::time_point deadline) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(deadline - Clock::now());
}

std::string StatusText(const grpc::Status& s) {
  return "code " + std::to_string(s.error_code()) + ": " + s.error_message();
}

BatchRun EnqueueBatches(errand::v1::Jobs::Stub* stub, const std::string& queue, uint64_t total,
                        int batch_size, int threads, Clock::time_point deadline, Sink* sink,
                        std::vector<std::string>* ids) {
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

}  // namespace errand_bench
