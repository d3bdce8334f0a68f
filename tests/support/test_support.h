#pragma once

// Test helpers: temporary directories and a real errand-broker process.

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

namespace errand::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents when
// the object is destroyed.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Runs the real errand-broker binary on 127.0.0.1 with a free port (port 0
// and --port-file) and the given data directory.
//
// Start() waits until the port file appears and the health service answers
// SERVING.
// Kill() sends SIGKILL (a crash); Stop() sends SIGTERM and waits for the exit
// status. The destructor SIGKILLs a still-running broker. Only the process
// this object started is ever signalled. The broker also gets SIGKILL from
// the kernel when the thread that called Start() ends (PR_SET_PDEATHSIG), so
// a crashed test leaves no broker behind: call Start() from a thread that
// outlives the broker, such as the test's own.
class BrokerProcess {
 public:
  // `extra_args` are appended to the command line, e.g. {"--commit=async"}.
  BrokerProcess(std::string data_dir, std::vector<std::string> extra_args = {});
  ~BrokerProcess();
  BrokerProcess(const BrokerProcess&) = delete;
  BrokerProcess& operator=(const BrokerProcess&) = delete;

  // Starts the process and waits (up to `timeout`, scaled) until it serves. Returns
  // false, with the broker's log in `error`, when it did not come up.
  bool Start(std::string* error = nullptr,
             std::chrono::milliseconds timeout = std::chrono::seconds(20));
  void Kill();
  // SIGTERM and wait (up to `timeout`, scaled); returns the exit code (or
  // -signal when killed by one).
  int Stop(std::chrono::milliseconds timeout = std::chrono::seconds(20));
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  int port() const { return port_; }
  // The port of the broker's HTTP endpoints (/metrics, /healthz, /readyz).
  // Unless `extra_args` name --http-listen, they listen on 127.0.0.1:0. 0
  // when disabled or not known.
  int http_port() const { return http_port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  // A new channel to the broker.
  std::shared_ptr<grpc::Channel> Channel() const;
  // Credentials of Channel() (and of Start()'s health check), for a broker
  // serving TLS. Default: plaintext.
  void set_channel_credentials(std::shared_ptr<grpc::ChannelCredentials> credentials) {
    credentials_ = std::move(credentials);
  }
  // Everything the broker wrote to stdout and stderr so far.
  std::string Log() const;

 private:
  std::string data_dir_;
  std::vector<std::string> extra_args_;
  std::string port_file_;
  std::string log_file_;
  std::string http_port_file_;
  pid_t pid_ = -1;
  int port_ = 0;
  int http_port_ = 0;
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
};

// Protobuf wire format by hand, for raw requests: a varint, and a
// length-delimited field (tag `number`, wire type 2) holding `payload`.
std::string WireVarint(uint64_t n);
std::string WireField(int number, const std::string& payload);

// One unary call of `method` (e.g. "/errand.v1.Jobs/Enqueue") with `request`
// as its bytes, through grpc::GenericStub: nothing is parsed on this side.
// On OK the answer's bytes go to `response` when it is not null.
grpc::Status RawUnaryCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                          const std::string& request, std::chrono::milliseconds timeout,
                          std::string* response = nullptr);

// grpc.health.v1.Health/Check over a generic call (the test binaries carry no
// health descriptors). `service` empty asks for the server as a whole. On OK,
// `status` gets the HealthCheckResponse.status field (1 = SERVING,
// 2 = NOT_SERVING; 0 when the answer carried none).
grpc::Status HealthCheck(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                         int* status,
                         std::chrono::milliseconds timeout = std::chrono::seconds(5));

// How much slower than a plain build the binaries under test run: the
// integer in $ERRAND_TEST_TIME_SCALE (at least 1; default 1).
// `tools/dev.sh test --sanitize=...` sets it, so that waits for the broker
// and the client tools (deadlines, start and stop, process timeouts) stretch
// under ASan and TSan instead of being loose for every run.
inline int TimeScale() {
  static const int scale = [] {
    const char* v = std::getenv("ERRAND_TEST_TIME_SCALE");
    int n = v == nullptr ? 1 : std::atoi(v);
    return n < 1 ? 1 : n;
  }();
  return scale;
}

// For a child between fork() and exec(): closes every descriptor from 3 up,
// so that the program run holds none of the test process's sockets and
// files. Most of those lack close-on-exec (the test's own sockets, a
// TcpProxy's); a broker that inherited the proxy's end of a connection would
// keep it open after the proxy closed it, and the client would never see its
// broker go away. Async-signal-safe.
void CloseInheritedDescriptors();

// `d` times TimeScale().
inline std::chrono::milliseconds Scaled(std::chrono::milliseconds d) { return d * TimeScale(); }

// A deadline `d` (scaled) from now, for ClientContext::set_deadline.
inline std::chrono::system_clock::time_point In(std::chrono::milliseconds d) {
  return std::chrono::system_clock::now() + Scaled(d);
}

}  // namespace errand::testing
