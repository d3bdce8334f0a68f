#pragma once

// Helpers of the client library's end-to-end tests (tests/e2e/client_*):
// a loopback TCP proxy that gives a restarted broker (new port) a stable
// address and can cut every connection (a network drop) or make it go
// silent (a partition: no FIN, no RST, nothing gets through), and small process
// helpers for the errand-worker / errandctl / example binaries.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/test_support.h"

namespace errand::e2e {

// Listens on 127.0.0.1:<port()> and forwards every connection to
// 127.0.0.1:<target>. Thread-safe. Its sockets are close-on-exec: a program
// started meanwhile (a restarted broker) must not hold a connection open
// after the proxy closed it.
class TcpProxy {
 public:
  TcpProxy() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::listen(listen_fd_, 64);
    socklen_t len = sizeof a;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }

  ~TcpProxy() {
    stop_ = true;
    accept_thread_.join();
    ::close(listen_fd_);
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& t : conns_) t.join();
  }

  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  void SetTarget(int port) { target_ = port; }
  // Closes every open connection (new ones are accepted again).
  void DropAll() { ++generation_; }
  // A silent partition of the connections open now: from this call on they
  // forward nothing in either direction, and their sockets stay open (no
  // FIN, no RST), as behind a dead NAT entry or a pulled cable. Both ends'
  // kernels still acknowledge what they are sent, until their buffers fill.
  // Connections accepted later forward normally. Silenced sockets are
  // closed by DropAll() or the destructor.
  void SilenceAll() { ++silence_epoch_; }
  // Connections accepted so far, silenced ones included.
  int accepted() const { return accepted_; }

 private:
  void AcceptLoop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      std::lock_guard<std::mutex> lock(mu_);
      ++accepted_;
      // Taken here, not in the thread: a SilenceAll() after this accept
      // silences the connection even if its thread has not run yet.
      const int epoch = silence_epoch_;
      conns_.emplace_back([this, c, epoch] { Pump(c, epoch); });
    }
  }

  void Pump(int c, int epoch) {
    int u = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(target_.load()));
    if (::connect(u, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(u);
      ::close(c);
      return;
    }
    int one = 1;
    ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int gen = generation_;
    char buf[65536];
    while (!stop_ && gen == generation_) {
      if (silence_epoch_ != epoch) {
        // Read nothing, write nothing, close nothing: wait for DropAll() or
        // the destructor.
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        continue;
      }
      pollfd p[2] = {{c, POLLIN, 0}, {u, POLLIN, 0}};
      int n = ::poll(p, 2, 50);
      if (n <= 0 || silence_epoch_ != epoch) continue;
      bool closed = false;
      for (int i = 0; i < 2 && !closed; ++i) {
        if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t r = ::read(p[i].fd, buf, sizeof buf);
        if (r <= 0) {
          closed = true;
          break;
        }
        int out = i == 0 ? u : c;
        for (ssize_t off = 0; off < r;) {
          ssize_t w = ::send(out, buf + off, r - off, MSG_NOSIGNAL);
          if (w <= 0) {
            closed = true;
            break;
          }
          off += w;
        }
      }
      if (closed) break;
    }
    ::close(u);
    ::close(c);
  }

  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<int> target_{0};
  std::atomic<int> generation_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::atomic<int> silence_epoch_{0};
  std::mutex mu_;
  std::vector<std::thread> conns_;
  std::thread accept_thread_;
};

// The result of running a program to its end.
struct RunResult {
  int exit_code = -1;  // -signal when killed by one
  std::string out;
  std::string err;
};

// Runs argv (with `input` on stdin, extra env "K=V" entries) and waits up to
// `timeout` (scaled: testing::Scaled); SIGKILLs it past that (exit_code -9).
inline RunResult RunProgram(const std::vector<std::string>& argv, const std::string& input = "",
                            const std::vector<std::string>& env = {},
                            std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  RunResult res;
  char tmpl_out[] = "/tmp/errand-run-out-XXXXXX";
  char tmpl_err[] = "/tmp/errand-run-err-XXXXXX";
  char tmpl_in[] = "/tmp/errand-run-in-XXXXXX";
  int out_fd = ::mkstemp(tmpl_out), err_fd = ::mkstemp(tmpl_err), in_fd = ::mkstemp(tmpl_in);
  if (::write(in_fd, input.data(), input.size()) != static_cast<ssize_t>(input.size())) return res;
  ::lseek(in_fd, 0, SEEK_SET);
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) envs.push_back(*e);
  for (const auto& e : env) envs.push_back(e);
  std::vector<char*> args, envp;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (const auto& e : envs) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(in_fd, 0);
    ::dup2(out_fd, 1);
    ::dup2(err_fd, 2);
    testing::CloseInheritedDescriptors();
    ::execve(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + testing::Scaled(timeout);
  int status = 0;
  for (;;) {
    pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  res.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
  auto slurp = [](const char* path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  res.out = slurp(tmpl_out);
  res.err = slurp(tmpl_err);
  ::close(out_fd);
  ::close(err_fd);
  ::close(in_fd);
  ::unlink(tmpl_out);
  ::unlink(tmpl_err);
  ::unlink(tmpl_in);
  return res;
}

// A program running in the background; its stdout+stderr go to a file.
class BackgroundProgram {
 public:
  explicit BackgroundProgram(const std::vector<std::string>& argv) {
    char tmpl[] = "/tmp/errand-bg-log-XXXXXX";
    int fd = ::mkstemp(tmpl);
    log_path_ = tmpl;
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      int devnull = ::open("/dev/null", O_RDONLY);
      ::dup2(devnull, 0);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      testing::CloseInheritedDescriptors();
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(fd);
  }
  ~BackgroundProgram() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    ::unlink(log_path_.c_str());
  }
  pid_t pid() const { return pid_; }
  void Signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  // Waits up to `timeout` (scaled) for the exit; returns the code (-signal),
  // or -1000 when it still runs.
  int Wait(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + testing::Scaled(timeout);
    while (pid_ > 0) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
      }
      if (std::chrono::steady_clock::now() > deadline) return -1000;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1000;
  }
  std::string Log() const {
    std::ifstream in(log_path_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  pid_t pid_ = -1;
  std::string log_path_;
};

}  // namespace errand::e2e
