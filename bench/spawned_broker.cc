#include "spawned_broker.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace errand_bench {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

bool SpawnedBroker::Start(const std::string& path, const std::string& mode, std::string* addr,
                          const std::vector<std::string>& extra, Clock::duration ready_within) {
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
  // HTTP endpoints on a free port too: the default (7601) may be taken.
  args_ = {path, "--listen=127.0.0.1:0", "--data-dir=" + dir_ + "/data",
           "--port-file=" + port_file_, "--commit=" + mode, "--http-listen=127.0.0.1:0"};
  args_.insert(args_.end(), extra.begin(), extra.end());
  return Launch(addr, ready_within);
}

bool SpawnedBroker::Restart(int sig, std::string* addr, double* stopped_s,
                            Clock::time_point* exec_at, Clock::duration ready_within) {
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

void SpawnedBroker::Stop() {
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

std::string SpawnedBroker::Log() const {
  std::ifstream in(log_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool SpawnedBroker::Launch(std::string* addr, Clock::duration ready_within) {
  // Built before the fork: the child of a threaded process may not allocate
  // (another thread may have held the allocator's lock at the fork).
  std::vector<char*> argv;
  for (auto& a : args_) argv.push_back(a.data());
  argv.push_back(nullptr);
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
    // None of our descriptors (sockets without close-on-exec) may live on in
    // the broker: it would hold connections open that we closed.
    if (::close_range(3, ~0U, 0) != 0) {
      for (int i = 3; i < 65536; ++i) ::close(i);
    }
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

bool SpawnedBroker::WaitExit(Clock::duration limit) {
  auto deadline = Clock::now() + limit;
  int status = 0;
  while (Clock::now() < deadline) {
    if (::waitpid(pid_, &status, WNOHANG) == pid_) return true;
    std::this_thread::sleep_for(milliseconds(2));
  }
  return false;
}

}  // namespace errand_bench
