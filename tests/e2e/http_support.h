#pragma once

// Plain HTTP/1.1 over loopback for the tests of the broker's HTTP endpoints,
// and a runner for one-shot broker commands (--print-config, bad configs).

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace errand::e2e {

struct HttpAnswer {
  bool ok = false;      // a whole answer arrived
  bool closed = false;  // the server closed the connection (else the read timed out)
  int status = 0;
  std::string head;  // status line and headers
  std::string body;
};

// Sends `raw` to 127.0.0.1:`port` and reads until the server closes (it
// answers with Connection: close). Every socket operation is bounded by
// `timeout`.
inline HttpAnswer HttpRaw(int port, const std::string& raw,
                          std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  HttpAnswer a;
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return a;
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return a;
  }
  size_t sent = 0;
  while (sent < raw.size()) {
    ssize_t n = ::send(fd, raw.data() + sent, raw.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  std::string in;
  char buf[16384];
  bool eof = false;
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n == 0) eof = true;
    if (n <= 0) break;
    in.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  a.closed = eof;
  size_t end = in.find("\r\n\r\n");
  if (!eof || end == std::string::npos) {
    a.head = in;
    return a;
  }
  a.head = in.substr(0, end);
  a.body = in.substr(end + 4);
  if (a.head.rfind("HTTP/1.1 ", 0) == 0) a.status = std::atoi(a.head.c_str() + 9);
  a.ok = a.status > 0;
  return a;
}

inline HttpAnswer HttpGet(int port, const std::string& path) {
  return HttpRaw(port, "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
}

// The value of the sample `series` (name plus labels exactly as the broker
// writes them, e.g. `errand_jobs{queue="q",state="ready"}`) in a scrape;
// NaN when absent.
inline double MetricValue(const std::string& scrape, const std::string& series) {
  std::istringstream in(scrape);
  for (std::string line; std::getline(in, line);) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::strtod(line.c_str() + series.size() + 1, nullptr);
    }
  }
  return std::numeric_limits<double>::quiet_NaN();
}

// The result of one command run to completion.
struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs `args` (argv[0] first) with `env` added to the environment, through
// /bin/sh, stdout and stderr to files under `dir`.
inline RunResult RunCommand(const std::vector<std::string>& args,
                            const std::vector<std::pair<std::string, std::string>>& env,
                            const std::string& dir) {
  auto quote = [](const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
  };
  std::string cmd = "env";
  for (const auto& [k, v] : env) cmd += " " + quote(k + "=" + v);
  for (const auto& a : args) cmd += " " + quote(a);
  const std::string out = dir + "/run.out", err = dir + "/run.err";
  cmd += " >" + quote(out) + " 2>" + quote(err) + " </dev/null";
  RunResult r;
  int status = std::system(cmd.c_str());
  if (status != -1 && WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  std::ifstream o(out), e(err);
  std::stringstream so, se;
  so << o.rdbuf();
  se << e.rdbuf();
  r.out = so.str();
  r.err = se.str();
  return r;
}

}  // namespace errand::e2e
