#pragma once

// A broker process of errand-bench's own (--spawn-broker, and one per scale
// phase): 127.0.0.1 port 0, a temp data dir, found through --port-file; it
// dies with errand-bench (PDEATHSIG) and is stopped by its PID.

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

namespace errand_bench {

class SpawnedBroker {
 public:
  SpawnedBroker() = default;
  ~SpawnedBroker() { Stop(); }
  SpawnedBroker(const SpawnedBroker&) = delete;
  SpawnedBroker& operator=(const SpawnedBroker&) = delete;

  // Makes a temp dir and starts `path` there with `extra` flags added (and
  // --commit=`mode`); returns once the broker wrote its port file (within
  // `ready_within`), with its address in `addr`.
  bool Start(const std::string& path, const std::string& mode, std::string* addr,
             const std::vector<std::string>& extra = {},
             std::chrono::steady_clock::duration ready_within = std::chrono::seconds(20));

  // Stops the running broker with `sig` (SIGKILL: a crash; SIGTERM: a clean
  // stop, SIGKILL after 60 s) and starts it again on the same data dir.
  // `stopped_s`: signal -> exit. `exec_at`: when the new process was forked
  // (it execs at once). Returns once the new broker wrote its port file.
  bool Restart(int sig, std::string* addr, double* stopped_s,
               std::chrono::steady_clock::time_point* exec_at,
               std::chrono::steady_clock::duration ready_within);

  // SIGTERM, up to 10 s for a clean exit, then SIGKILL; removes the temp dir.
  void Stop();

  pid_t pid() const { return pid_; }
  // The broker's stdout and stderr so far.
  std::string Log() const;

 private:
  bool Launch(std::string* addr, std::chrono::steady_clock::duration ready_within);
  // Waits up to `limit` for the broker to exit (reaping it).
  bool WaitExit(std::chrono::steady_clock::duration limit);

  pid_t pid_ = -1;
  std::string dir_;
  std::string port_file_;
  std::string log_;
  std::vector<std::string> args_;
};

}  // namespace errand_bench
