#include "support/test_support.h"

#include <fcntl.h>
#include <grpcpp/generic/generic_stub.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

namespace errand::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/errand-test-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) std::abort();
  path_ = buf.data();
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void CloseInheritedDescriptors() {
  if (::close_range(3, ~0U, 0) == 0) return;
  // Kernels before 5.9: one by one (far more than a test ever opens).
  for (int fd = 3; fd < 65536; ++fd) ::close(fd);
}

BrokerProcess::BrokerProcess(std::string data_dir, std::vector<std::string> extra_args)
    : data_dir_(std::move(data_dir)), extra_args_(std::move(extra_args)) {
  port_file_ = data_dir_ + ".port";
  log_file_ = data_dir_ + ".log";
  http_port_file_ = data_dir_ + ".httpport";
}

BrokerProcess::~BrokerProcess() {
  if (pid_ > 0) Kill();
  std::error_code ec;
  std::filesystem::remove(port_file_, ec);
  std::filesystem::remove(log_file_, ec);
  std::filesystem::remove(http_port_file_, ec);
}

bool BrokerProcess::Start(std::string* error, std::chrono::milliseconds timeout) {
  std::error_code ec;
  std::filesystem::remove(port_file_, ec);
  std::vector<std::string> args = {ERRAND_BROKER_PATH, "--listen=127.0.0.1:0",
                                   "--data-dir=" + data_dir_, "--port-file=" + port_file_};
  // HTTP endpoints on a free port (never the fixed default, which other
  // brokers on this machine may hold), unless the test chooses.
  std::filesystem::remove(http_port_file_, ec);
  bool http_chosen = false, http_port_file_chosen = false;
  for (const auto& a : extra_args_) {
    http_chosen = http_chosen || a.rfind("--http-listen", 0) == 0;
    http_port_file_chosen = http_port_file_chosen || a.rfind("--http-port-file", 0) == 0;
  }
  if (!http_chosen) args.push_back("--http-listen=127.0.0.1:0");
  if (!http_port_file_chosen) args.push_back("--http-port-file=" + http_port_file_);
  for (const auto& a : extra_args_) args.push_back(a);
  // Built before the fork: the child of a threaded process may not allocate
  // (another thread may have held the allocator's lock at the fork, and the
  // child would wait for it forever, never reaching exec).
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) return false;
  if (pid == 0) {
    // A test process that crashes must not leave its broker running.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    int fd = ::open(log_file_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::close(fd);
    }
    CloseInheritedDescriptors();
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  pid_ = pid;
  port_ = 0;
  http_port_ = 0;
  auto deadline = std::chrono::steady_clock::now() + Scaled(timeout);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      if (error) *error = "broker exited during start:\n" + Log();
      return false;
    }
    std::ifstream in(port_file_);
    int port = 0;
    if (port_ == 0 && in >> port && port > 0) port_ = port;
    if (port_ > 0) {
      // The port file is written once the server listens; health says it serves.
      int health = 0;
      if (HealthCheck(Channel(), "", &health, std::chrono::seconds(1)).ok() && health == 1) {
        // The HTTP port file is written before the gRPC one.
        std::ifstream http_in(http_port_file_);
        int http_port = 0;
        if (http_in >> http_port && http_port > 0) http_port_ = http_port;
        return true;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (error) *error = "broker did not start in time:\n" + Log();
  Kill();
  return false;
}

void BrokerProcess::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
}

int BrokerProcess::Stop(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return -1;
  ::kill(pid_, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + Scaled(timeout);
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return -WTERMSIG(status);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  Kill();
  return -SIGKILL;
}

std::shared_ptr<grpc::Channel> BrokerProcess::Channel() const {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // A fresh connection per channel, so that tests do not share subchannels.
  args.SetInt("grpc.use_local_subchannel_pool", 1);
  return grpc::CreateCustomChannel(
      address(), credentials_ ? credentials_ : grpc::InsecureChannelCredentials(), args);
}

std::string BrokerProcess::Log() const {
  std::ifstream in(log_file_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string WireVarint(uint64_t n) {
  std::string out;
  while (n >= 0x80) {
    out += static_cast<char>((n & 0x7f) | 0x80);
    n >>= 7;
  }
  out += static_cast<char>(n);
  return out;
}

std::string WireField(int number, const std::string& payload) {
  return WireVarint(static_cast<uint64_t>(number) << 3 | 2) + WireVarint(payload.size()) + payload;
}

grpc::Status RawUnaryCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                          const std::string& request, std::chrono::milliseconds timeout,
                          std::string* response) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(In(timeout));
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status result;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request_buffer, &response_buffer,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mu);
                   result = std::move(s);
                   done = true;
                   cv.notify_all();
                 });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
  }
  if (response != nullptr && result.ok()) {
    std::vector<grpc::Slice> slices;
    (void)response_buffer.Dump(&slices);
    response->clear();
    for (const auto& sl : slices) {
      response->append(reinterpret_cast<const char*>(sl.begin()), sl.size());
    }
  }
  return result;
}

namespace {

// HealthCheckResponse { ServingStatus status = 1; }: returns false when the
// bytes are not a well-formed message.
bool DecodeHealthResponse(const std::string& wire, int* status) {
  *status = 0;
  size_t i = 0;
  auto varint = [&](uint64_t* v) {
    *v = 0;
    for (int shift = 0; i < wire.size() && shift < 64; shift += 7) {
      uint8_t b = static_cast<uint8_t>(wire[i++]);
      *v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  };
  while (i < wire.size()) {
    uint64_t tag = 0;
    if (!varint(&tag)) return false;
    uint64_t v = 0;
    switch (tag & 7) {
      case 0:
        if (!varint(&v)) return false;
        if (tag >> 3 == 1) *status = static_cast<int>(v);
        break;
      case 2:
        if (!varint(&v) || v > wire.size() - i) return false;
        i += v;
        break;
      default:
        return false;
    }
  }
  return true;
}

}  // namespace

grpc::Status HealthCheck(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                         int* status, std::chrono::milliseconds timeout) {
  // HealthCheckRequest { string service = 1; }.
  const std::string request = service.empty() ? std::string() : WireField(1, service);
  std::string response;
  grpc::Status result =
      RawUnaryCall(channel, "/grpc.health.v1.Health/Check", request, timeout, &response);
  if (result.ok() && !DecodeHealthResponse(response, status)) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "malformed HealthCheckResponse");
  }
  return result;
}

}  // namespace errand::testing
