// errand-worker: a generic worker daemon for people who do not write C++.
//
//   errand-worker --addr HOST:PORT --queue Q [--queue Q2] --concurrency N
//                 [--timeout 30s] [--grace 10s] -- COMMAND [ARGS...]
//
// Runs COMMAND once per job in its own process group, with the job's payload
// on stdin and ERRAND_JOB_ID, ERRAND_QUEUE, ERRAND_ATTEMPT in the
// environment. Its stdout (at most --max-output bytes) becomes the job's
// result when it exits 0; any other exit fails the job with the tail of its
// stderr. Past --timeout, or when the job is cancelled, the whole process
// group is SIGKILLed and the job failed. SIGTERM/SIGINT: take no new jobs,
// let running ones finish for up to --grace (then kill them and fail them
// back), exit 0. One log line per job on stderr.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "duration.h"
#include "errand/client.h"
#include "errand/worker.h"
#include "security_flags.h"
#include "spdlog/spdlog.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr size_t kStderrTail = 4096;

struct Settings {
  std::vector<std::string> command;
  milliseconds timeout{0};
  size_t max_output = 1 << 20;
};

void SetNonBlocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

std::string Describe(int status) {
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by signal ") + std::to_string(WTERMSIG(status));
  return "ended";
}

// Runs the command for one job. Thread-safe (one call per job).
absl::StatusOr<std::string> RunJob(const Settings& cfg, const errand::v1::Job& job,
                                   errand::JobContext& ctx) {
  const auto start = Clock::now();
  // Environment: ours minus ERRAND_JOB_*, plus the job's.
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "ERRAND_JOB_ID=", 14) == 0 || std::strncmp(*e, "ERRAND_QUEUE=", 13) == 0 ||
        std::strncmp(*e, "ERRAND_ATTEMPT=", 15) == 0) {
      continue;
    }
    env.emplace_back(*e);
  }
  env.push_back("ERRAND_JOB_ID=" + job.id());
  env.push_back("ERRAND_QUEUE=" + job.queue());
  env.push_back("ERRAND_ATTEMPT=" + std::to_string(job.attempts()));
  std::vector<char*> envp, argv;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = cfg.command;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  int in[2], out[2], err[2];
  if (::pipe2(in, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  if (::pipe2(out, O_CLOEXEC) != 0) {
    ::close(in[0]), ::close(in[1]);
    return absl::InternalError("pipe failed");
  }
  if (::pipe2(err, O_CLOEXEC) != 0) {
    ::close(in[0]), ::close(in[1]), ::close(out[0]), ::close(out[1]);
    return absl::InternalError("pipe failed");
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  int rc = ::posix_spawnp(&pid, argv[0], &fa, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(in[0]);
  ::close(out[1]);
  ::close(err[1]);
  if (rc != 0) {
    ::close(in[1]), ::close(out[0]), ::close(err[0]);
    return absl::InternalError("cannot run " + cfg.command[0] + ": " + std::strerror(rc));
  }
  SetNonBlocking(in[1]);
  SetNonBlocking(out[0]);
  SetNonBlocking(err[0]);

  const std::string& payload = job.payload();
  size_t written = 0;
  int in_fd = in[1], out_fd = out[0], err_fd = err[0];
  if (payload.empty()) {
    ::close(in_fd);
    in_fd = -1;
  }
  std::string stdout_buf, stderr_buf;
  bool truncated = false, timed_out = false, cancelled = false, exited = false;
  int status = 0;
  Clock::time_point exited_at;
  char buf[65536];
  for (;;) {
    if (!exited && ::waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      exited_at = Clock::now();
      ::kill(-pid, SIGKILL);  // leftovers of the job's process group
    }
    if (exited && ((out_fd < 0 && err_fd < 0) || Clock::now() - exited_at > milliseconds(1000))) {
      break;
    }
    if (!exited && !timed_out && !cancelled) {
      if (cfg.timeout.count() > 0 && Clock::now() - start > cfg.timeout) {
        timed_out = true;
        ::kill(-pid, SIGKILL);
      } else if (ctx.cancelled()) {
        cancelled = true;
        ::kill(-pid, SIGKILL);
      }
    }
    pollfd p[3];
    int n = 0;
    int idx_in = -1, idx_out = -1, idx_err = -1;
    if (in_fd >= 0) idx_in = n, p[n++] = {in_fd, POLLOUT, 0};
    if (out_fd >= 0) idx_out = n, p[n++] = {out_fd, POLLIN, 0};
    if (err_fd >= 0) idx_err = n, p[n++] = {err_fd, POLLIN, 0};
    if (n == 0) {
      if (!exited) ::usleep(20000);
      continue;
    }
    if (::poll(p, n, 20) <= 0) continue;
    if (idx_in >= 0 && (p[idx_in].revents & (POLLOUT | POLLERR | POLLHUP))) {
      ssize_t w = ::write(in_fd, payload.data() + written, payload.size() - written);
      if (w > 0) written += static_cast<size_t>(w);
      if (w < 0 && errno != EAGAIN) written = payload.size();  // reader gone
      if (written >= payload.size()) {
        ::close(in_fd);
        in_fd = -1;
      }
    }
    if (idx_out >= 0 && (p[idx_out].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t r = ::read(out_fd, buf, sizeof buf);
      if (r > 0) {
        size_t room = cfg.max_output - std::min(cfg.max_output, stdout_buf.size());
        if (static_cast<size_t>(r) > room) truncated = true;
        stdout_buf.append(buf, std::min(room, static_cast<size_t>(r)));
      } else if (r == 0 || errno != EAGAIN) {
        ::close(out_fd);
        out_fd = -1;
      }
    }
    if (idx_err >= 0 && (p[idx_err].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t r = ::read(err_fd, buf, sizeof buf);
      if (r > 0) {
        stderr_buf.append(buf, static_cast<size_t>(r));
        if (stderr_buf.size() > kStderrTail) stderr_buf.erase(0, stderr_buf.size() - kStderrTail);
      } else if (r == 0 || errno != EAGAIN) {
        ::close(err_fd);
        err_fd = -1;
      }
    }
  }
  for (int fd : {in_fd, out_fd, err_fd}) {
    if (fd >= 0) ::close(fd);
  }
  auto ms = std::chrono::duration_cast<milliseconds>(Clock::now() - start).count();
  std::string how = timed_out ? "timed out" : cancelled ? "cancelled" : Describe(status);
  bool ok = !timed_out && !cancelled && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  spdlog::info("job={} queue={} attempt={} outcome={} {} ms={} out_bytes={}{}", job.id(),
               job.queue(), job.attempts(), ok ? "succeeded" : "failed", how, ms,
               stdout_buf.size(), truncated ? " (truncated)" : "");
  if (ok) return stdout_buf;
  while (!stderr_buf.empty() && (stderr_buf.back() == '\n' || stderr_buf.back() == '\r')) {
    stderr_buf.pop_back();
  }
  std::string error;
  if (timed_out) {
    error = "timed out after " + std::to_string(cfg.timeout.count()) + "ms";
  } else if (cancelled) {
    error = "cancelled";
  } else {
    error = how;
  }
  if (!stderr_buf.empty()) error += ": " + stderr_buf;
  return absl::UnknownError(error);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "errand-worker: runs COMMAND once per job of the given queues.\n"
      "The payload is on COMMAND's stdin; ERRAND_JOB_ID, ERRAND_QUEUE and ERRAND_ATTEMPT are set.\n"
      "Exit 0 completes the job with COMMAND's stdout as the result; any other exit fails it\n"
      "with the tail of its stderr. SIGTERM: finish running jobs (up to --grace), exit 0."};
  std::string addr = "127.0.0.1:7600";
  std::vector<std::string> queues;
  int concurrency = 1;
  std::string timeout = "0", grace = "10s", lease = "0", worker_id;
  Settings cfg;
  app.add_option("--addr", addr, "broker address HOST:PORT")->envname("ERRAND_ADDR")
      ->capture_default_str();
  app.add_option("--queue", queues, "queue to serve (repeatable)")->required();
  app.add_option("--concurrency", concurrency, "jobs run at once")->capture_default_str()
      ->check(CLI::Range(1, 10000));
  app.add_option("--timeout", timeout, "kill and fail a job running longer (0: no limit)")
      ->capture_default_str();
  app.add_option("--grace", grace, "on SIGTERM, how long running jobs may finish")
      ->capture_default_str();
  app.add_option("--lease", lease, "lease duration asked per job (0: the job's own)")
      ->capture_default_str();
  app.add_option("--max-output", cfg.max_output, "most bytes of stdout kept as the result")
      ->capture_default_str();
  app.add_option("--worker-id", worker_id, "recorded in each attempt (default host-pid)");
  errand::tools::SecurityFlags security;
  errand::tools::AddSecurityFlags(app, &security);
  // Everything after the first "--" is the command, never parsed as flags.
  int split = argc;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--") == 0) {
      split = i;
      break;
    }
  }
  for (int i = split + 1; i < argc; ++i) cfg.command.emplace_back(argv[i]);
  app.footer("The command follows \"--\": errand-worker [OPTIONS] -- COMMAND [ARGS...]");
  CLI11_PARSE(app, split, argv);
  if (cfg.command.empty()) {
    std::fprintf(stderr, "errand-worker: no command; usage: errand-worker [OPTIONS] -- COMMAND [ARGS...]\n");
    return 1;
  }

  auto t = errand::tools::ParseDuration(timeout), g = errand::tools::ParseDuration(grace),
       l = errand::tools::ParseDuration(lease);
  if (!t || !g || !l) {
    std::fprintf(stderr, "errand-worker: bad duration (use e.g. 500ms, 30s, 5m)\n");
    return 1;
  }
  cfg.timeout = *t;
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %l errand-worker: %v");

  // SIGTERM/SIGINT are taken by sigwait below; every thread inherits the mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  errand::ClientOptions co;
  co.address = addr;
  co.connect_timeout = milliseconds(0);  // keep trying while the broker is down
  if (auto s = errand::tools::ApplySecurityFlags(security, &co); !s.ok()) {
    spdlog::error("{}", s.ToString());
    return 1;
  }
  // Job commands inherit the environment: they get no broker token.
  ::unsetenv("ERRAND_TOKEN");
  auto client = errand::Client::Connect(co);
  if (!client.ok()) {
    spdlog::error("{}", client.status().ToString());
    return 1;
  }
  errand::WorkerOptions wo;
  wo.queues = queues;
  wo.concurrency = concurrency;
  wo.stop_timeout = *g;
  wo.lease_duration = *l;
  wo.worker_id = worker_id;
  wo.poll_wait = milliseconds(2000);
  wo.max_heartbeat_interval = milliseconds(2000);
  auto worker = errand::Worker::Start(
      **client, wo, [&cfg](const errand::v1::Job& job, errand::JobContext& ctx) {
        return RunJob(cfg, job, ctx);
      });
  if (!worker.ok()) {
    spdlog::error("{}", worker.status().ToString());
    return 1;
  }
  spdlog::info("serving {} with concurrency {} at {}", fmt::join(queues, ","), concurrency, addr);
  int sig = 0;
  sigwait(&sigs, &sig);
  spdlog::info("signal {}: draining (grace {}ms)", sig, g->count());
  (*worker)->Stop();
  auto st = (*worker)->stats();
  spdlog::info("stopped: {} completed, {} failed, {} failed back", st.completed, st.failed,
               st.abandoned);
  worker->reset();
  client->reset();
  return 0;
}
