// peer-bench: issue 6's job round trip workload on a peer broker, through its
// native client, so that its figures sit beside errand-bench's.
//
//   peer-bench --system=beanstalkd|redis|rabbitmq-classic|rabbitmq-quorum|nats
//              --addr=127.0.0.1:PORT [--mode=sync|async] [--n=20000] [--producers=4]
//              [--workers=4] [--payload=256] [--rate=1000] [--paced-n=5000]
//              [--phases=enqueue,drain,roundtrip,paced] [--queue=bench]
//              [--phase-timeout=120] [--server-pid=PID]
//
// The workload is errand-bench's (bench/errand_bench.cc), phase by phase:
//   enqueue    N jobs, producers only; latency = one enqueue until its ack
//   drain      W workers empty a queue of N (the enqueue phase's queue, or one
//              filled beforehand, unmeasured); latency = complete -> its ack
//   roundtrip  producers and workers at once, N jobs; latency = enqueue start
//              -> completion acknowledged at the worker
//   paced      --paced-n jobs offered at --rate jobs/s (open loop schedule);
//              latency as roundtrip
// P producer threads each enqueue one job at a time and wait for the broker's
// acknowledgement; W worker threads each take one job, then acknowledge its
// completion. Every thread has its own connection (none of these clients
// shares one connection between threads). What "acknowledged" means per
// system (and what --mode changes) is the broker's configuration, which
// run.sh sets; this program only speaks each protocol:
//   beanstalkd        text protocol: put -> INSERTED; reserve-with-timeout ->
//                     RESERVED; delete -> DELETED
//   redis             streams + one consumer group (hiredis): XADD; XREADGROUP
//                     COUNT 1 BLOCK; XACK + XDEL in one pipeline
//   rabbitmq-classic  durable classic queue, persistent messages, publisher
//   rabbitmq-quorum   confirms (librabbitmq); consumer with prefetch 1 and
//                     manual basic.ack (AMQP has no reply to an ack: its
//                     latency is the time to send it)
//   nats              JetStream file stream with work-queue retention (nats.c):
//                     js_Publish waits for the PubAck; one durable pull
//                     consumer shared by the workers: Fetch(1) + AckSync
// Each phase prints one line in errand-bench's format, starting with
// "system=<name> mode=<mode> phase=<phase> jobs=", and a summary follows.
// Every phase gives up after --phase-timeout seconds (status=timeout); the
// exit code is then 1, as for any phase with errors.

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;
using std::chrono::seconds;

int64_t NowNs() {
  return std::chrono::duration_cast<nanoseconds>(Clock::now().time_since_epoch()).count();
}

// ---------------------------------------------------------------------------
// Flags.

const char* const kSystems[] = {"beanstalkd", "redis", "rabbitmq-classic", "rabbitmq-quorum",
                                "nats"};

struct Flags {
  std::string system;
  std::string addr;  // HOST:PORT of the peer
  std::string mode = "sync";
  int n = 20000;
  int producers = 4;
  int workers = 4;
  int payload = 256;
  double rate = 1000;
  int paced_n = 5000;
  std::vector<std::string> phases = {"enqueue", "drain", "roundtrip", "paced"};
  std::string queue = "bench";
  int phase_timeout_s = 120;
  int server_pid = 0;  // the peer's process, for its CPU time per job; 0: unknown
};

Flags g_flags;
std::string g_host;
int g_port = 0;

// One enqueue, take or completion gives up after this long (a stuck peer
// then shows up as an error, not a hang).
constexpr int kOpTimeoutMs = 30000;
// How long a worker waits for a job before it looks at the stop flag again.
constexpr int kTakeWaitMs = 1000;

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
  std::fprintf(
      stderr,
      "usage: peer-bench --system=beanstalkd|redis|rabbitmq-classic|rabbitmq-quorum|nats\n"
      "  --addr=HOST:PORT [--mode=sync|async] [--n=20000] [--producers=4] [--workers=4]\n"
      "  [--payload=256] [--rate=1000] [--paced-n=5000]\n"
      "  [--phases=enqueue,drain,roundtrip,paced] [--queue=bench] [--phase-timeout=120]\n"
      "  [--server-pid=PID]\n"
      "--mode only labels the output: the peer's own configuration (run.sh) decides\n"
      "whether it acknowledges after fsync. --server-pid: the peer's process, whose CPU\n"
      "time per job is then reported (broker_cpu_us_per_job).\n");
}

bool ParseFlags(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      Usage();
      std::exit(0);
    }
    auto eq = a.find('=');
    std::string key = a.substr(0, eq);
    std::string val;
    if (eq != std::string::npos) {
      val = a.substr(eq + 1);
    } else if (i + 1 < argc) {
      val = argv[++i];
    } else {
      std::fprintf(stderr, "peer-bench: %s needs a value\n", key.c_str());
      return false;
    }
    try {
      if (key == "--system") g_flags.system = val;
      else if (key == "--addr") g_flags.addr = val;
      else if (key == "--mode") g_flags.mode = val;
      else if (key == "--n") g_flags.n = std::stoi(val);
      else if (key == "--producers") g_flags.producers = std::stoi(val);
      else if (key == "--workers") g_flags.workers = std::stoi(val);
      else if (key == "--payload") g_flags.payload = std::stoi(val);
      else if (key == "--rate") g_flags.rate = std::stod(val);
      else if (key == "--paced-n") g_flags.paced_n = std::stoi(val);
      else if (key == "--phases") g_flags.phases = Split(val, ',');
      else if (key == "--queue") g_flags.queue = val;
      else if (key == "--phase-timeout") g_flags.phase_timeout_s = std::stoi(val);
      else if (key == "--server-pid") g_flags.server_pid = std::stoi(val);
      else {
        std::fprintf(stderr, "peer-bench: unknown flag %s\n", key.c_str());
        return false;
      }
    } catch (const std::exception&) {
      std::fprintf(stderr, "peer-bench: bad value for %s: %s\n", key.c_str(), val.c_str());
      return false;
    }
  }
  bool known = false;
  for (const char* s : kSystems) known = known || g_flags.system == s;
  if (!known) {
    std::fprintf(stderr, "peer-bench: --system must be one of beanstalkd, redis, "
                         "rabbitmq-classic, rabbitmq-quorum, nats (got '%s')\n",
                 g_flags.system.c_str());
    return false;
  }
  auto colon = g_flags.addr.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    std::fprintf(stderr, "peer-bench: --addr must be HOST:PORT (got '%s')\n",
                 g_flags.addr.c_str());
    return false;
  }
  g_host = g_flags.addr.substr(0, colon);
  try {
    g_port = std::stoi(g_flags.addr.substr(colon + 1));
  } catch (const std::exception&) {
    g_port = 0;
  }
  if (g_port < 1 || g_port > 65535) {
    std::fprintf(stderr, "peer-bench: --addr has a bad port: '%s'\n", g_flags.addr.c_str());
    return false;
  }
  if (g_flags.mode != "sync" && g_flags.mode != "async") {
    std::fprintf(stderr, "peer-bench: --mode must be sync or async\n");
    return false;
  }
  if (g_flags.n < 1 || g_flags.producers < 1 || g_flags.workers < 1 || g_flags.rate <= 0 ||
      g_flags.paced_n < 1 || g_flags.payload < 0 || g_flags.phase_timeout_s < 1 ||
      g_flags.n > 100000000 || g_flags.producers > 4096 || g_flags.workers > 4096 ||
      g_flags.payload > 1 << 20) {
    std::fprintf(stderr, "peer-bench: --n, --producers, --workers, --rate, --paced-n, "
                         "--phase-timeout must be positive (and sane), --payload 0..1 MiB\n");
    return false;
  }
  // Queue names go into protocol lines, Redis keys and NATS subjects.
  for (char c : g_flags.queue) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') {
      std::fprintf(stderr, "peer-bench: --queue may hold only letters, digits, '-' and '_'\n");
      return false;
    }
  }
  if (g_flags.phases.empty()) {
    std::fprintf(stderr, "peer-bench: --phases is empty\n");
    return false;
  }
  for (const auto& p : g_flags.phases) {
    if (p != "enqueue" && p != "drain" && p != "roundtrip" && p != "paced") {
      std::fprintf(stderr, "peer-bench: unknown phase %s\n", p.c_str());
      return false;
    }
  }
  return true;
}

// A payload of --payload bytes whose first 8 bytes carry the enqueue start
// (steady clock, ns; producers and workers share this process's clock).
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

// utime + stime of a process in microseconds (/proc/PID/stat), -1 if unknown.
double CpuUs(int pid) {
  std::ifstream in(pid > 0 ? "/proc/" + std::to_string(pid) + "/stat" : "/proc/self/stat");
  std::string line;
  if (!std::getline(in, line)) return -1;
  auto rp = line.rfind(')');
  if (rp == std::string::npos) return -1;
  std::istringstream ss(line.substr(rp + 2));
  std::string field;
  double utime = 0, stime = 0;
  for (int f = 3; f <= 15 && ss >> field; ++f) {
    if (f == 14) utime = std::stod(field);
    if (f == 15) stime = std::stod(field);
  }
  return (utime + stime) * 1e6 / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// ---------------------------------------------------------------------------
// The peer interface: one connection per producer or worker thread.

// Thread: one thread at a time.
class ProducerConn {
 public:
  virtual ~ProducerConn() = default;
  // Enqueues one job and waits for the broker's acknowledgement.
  virtual bool Enqueue(const std::string& payload, std::string* err) = 0;
};

// Thread: one thread at a time.
class WorkerConn {
 public:
  virtual ~WorkerConn() = default;
  // Waits up to wait_ms for a job: 1 with one (its payload in *payload), 0
  // when none came in time, -1 on an error.
  virtual int Take(int wait_ms, std::string* payload, std::string* err) = 0;
  // Acknowledges the completion of the job the last Take returned.
  virtual bool Complete(std::string* err) = 0;
};

class Peer {
 public:
  virtual ~Peer() = default;
  // Creates the queue (stream, consumer group, ...) before anyone uses it.
  virtual bool Prepare(const std::string& queue, std::string* err) = 0;
  virtual std::unique_ptr<ProducerConn> NewProducer(const std::string& queue, std::string* err) = 0;
  virtual std::unique_ptr<WorkerConn> NewWorker(const std::string& queue, int idx,
                                                std::string* err) = 0;
};

// ---------------------------------------------------------------------------
// beanstalkd: its text protocol over a blocking TCP socket.

class LineSocket {
 public:
  ~LineSocket() {
    if (fd_ >= 0) ::close(fd_);
  }

  bool Connect(std::string* err) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(g_port));
    if (fd_ < 0 || ::inet_pton(AF_INET, g_host.c_str(), &sa.sin_addr) != 1) {
      *err = "beanstalkd: bad address " + g_flags.addr + " (an IPv4 address is needed)";
      return false;
    }
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
      *err = "beanstalkd: connect " + g_flags.addr + ": " + std::strerror(errno);
      return false;
    }
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    SetTimeoutMs(kOpTimeoutMs);
    return true;
  }

  void SetTimeoutMs(int ms) {
    timeval tv{ms / 1000, (ms % 1000) * 1000};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  }

  bool Write(const std::string& data, std::string* err) {
    size_t off = 0;
    while (off < data.size()) {
      ssize_t w = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        *err = std::string("beanstalkd: send: ") + std::strerror(errno);
        return false;
      }
      off += static_cast<size_t>(w);
    }
    return true;
  }

  // One line without its "\r\n".
  bool ReadLine(std::string* line, std::string* err) {
    for (;;) {
      auto pos = buf_.find("\r\n");
      if (pos != std::string::npos) {
        *line = buf_.substr(0, pos);
        buf_.erase(0, pos + 2);
        return true;
      }
      if (!Fill(err)) return false;
    }
  }

  // Exactly n bytes.
  bool ReadN(size_t n, std::string* out, std::string* err) {
    while (buf_.size() < n) {
      if (!Fill(err)) return false;
    }
    out->assign(buf_, 0, n);
    buf_.erase(0, n);
    return true;
  }

 private:
  bool Fill(std::string* err) {
    char tmp[16384];
    for (;;) {
      ssize_t r = ::recv(fd_, tmp, sizeof(tmp), 0);
      if (r > 0) {
        buf_.append(tmp, static_cast<size_t>(r));
        return true;
      }
      if (r < 0 && errno == EINTR) continue;
      *err = r == 0 ? "beanstalkd: connection closed"
                    : std::string("beanstalkd: recv: ") + std::strerror(errno);
      return false;
    }
  }

  int fd_ = -1;
  std::string buf_;
};

// Sends one command and expects a reply line starting with `want`.
bool BeanstalkCommand(LineSocket* s, const std::string& cmd, const std::string& want,
                      std::string* reply, std::string* err) {
  if (!s->Write(cmd, err) || !s->ReadLine(reply, err)) return false;
  if (reply->rfind(want, 0) != 0) {
    *err = "beanstalkd: '" + cmd.substr(0, cmd.find('\r')) + "' answered '" + *reply + "'";
    return false;
  }
  return true;
}

class BeanstalkProducer : public ProducerConn {
 public:
  bool Open(const std::string& tube, std::string* err) {
    std::string reply;
    return sock_.Connect(err) && BeanstalkCommand(&sock_, "use " + tube + "\r\n", "USING", &reply, err);
  }
  bool Enqueue(const std::string& payload, std::string* err) override {
    // pri 0, no delay, ttr 60 s: longer than any job of this bench takes.
    std::string cmd = "put 0 0 60 " + std::to_string(payload.size()) + "\r\n" + payload + "\r\n";
    std::string reply;
    return BeanstalkCommand(&sock_, cmd, "INSERTED ", &reply, err);
  }

 private:
  LineSocket sock_;
};

class BeanstalkWorker : public WorkerConn {
 public:
  bool Open(const std::string& tube, std::string* err) {
    std::string reply;
    return sock_.Connect(err) &&
           BeanstalkCommand(&sock_, "watch " + tube + "\r\n", "WATCHING", &reply, err) &&
           BeanstalkCommand(&sock_, "ignore default\r\n", "WATCHING", &reply, err);
  }
  int Take(int wait_ms, std::string* payload, std::string* err) override {
    // reserve-with-timeout counts whole seconds (0 would not wait at all).
    int secs = std::max(1, wait_ms / 1000);
    std::string line;
    if (!sock_.Write("reserve-with-timeout " + std::to_string(secs) + "\r\n", err) ||
        !sock_.ReadLine(&line, err)) {
      return -1;
    }
    if (line == "TIMED_OUT" || line == "DEADLINE_SOON") return 0;
    unsigned long long id = 0, bytes = 0;
    if (std::sscanf(line.c_str(), "RESERVED %llu %llu", &id, &bytes) != 2) {
      *err = "beanstalkd: reserve answered '" + line + "'";
      return -1;
    }
    std::string body;
    if (!sock_.ReadN(bytes + 2, &body, err)) return -1;
    body.resize(bytes);
    *payload = std::move(body);
    id_ = id;
    return 1;
  }
  bool Complete(std::string* err) override {
    std::string reply;
    return BeanstalkCommand(&sock_, "delete " + std::to_string(id_) + "\r\n", "DELETED", &reply,
                            err);
  }

 private:
  LineSocket sock_;
  unsigned long long id_ = 0;
};

class BeanstalkPeer : public Peer {
 public:
  bool Prepare(const std::string&, std::string*) override { return true; }  // tubes are implicit
  std::unique_ptr<ProducerConn> NewProducer(const std::string& queue, std::string* err) override {
    auto p = std::make_unique<BeanstalkProducer>();
    if (!p->Open(queue, err)) return nullptr;
    return p;
  }
  std::unique_ptr<WorkerConn> NewWorker(const std::string& queue, int, std::string* err) override {
    auto w = std::make_unique<BeanstalkWorker>();
    if (!w->Open(queue, err)) return nullptr;
    return w;
  }
};

// ---------------------------------------------------------------------------
// Redis streams with one consumer group (hiredis).

constexpr const char* kRedisGroup = "workers";

struct RedisReplyDeleter {
  void operator()(redisReply* r) const {
    if (r) freeReplyObject(r);
  }
};
using RedisReplyPtr = std::unique_ptr<redisReply, RedisReplyDeleter>;

class RedisConn {
 public:
  ~RedisConn() {
    if (c_) redisFree(c_);
  }
  bool Open(std::string* err) {
    timeval tv{5, 0};
    c_ = redisConnectWithTimeout(g_host.c_str(), g_port, tv);
    if (c_ == nullptr || c_->err) {
      *err = "redis: connect " + g_flags.addr + ": " + (c_ ? c_->errstr : "out of memory");
      return false;
    }
    // Longer than XREADGROUP's BLOCK, so a blocked read is never cut short.
    timeval op{kOpTimeoutMs / 1000, 0};
    redisSetTimeout(c_, op);
    return true;
  }
  // Runs one command; a nullptr reply (the connection failed) or an error
  // reply sets *err.
  RedisReplyPtr Command(std::string* err, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    auto* r = static_cast<redisReply*>(redisvCommand(c_, fmt, ap));
    va_end(ap);
    return Check(r, err);
  }
  RedisReplyPtr Check(redisReply* r, std::string* err) {
    RedisReplyPtr p(r);
    if (!p) {
      *err = std::string("redis: ") + (c_->errstr[0] ? c_->errstr : "no reply");
    } else if (p->type == REDIS_REPLY_ERROR) {
      *err = std::string("redis: ") + p->str;
      p.reset();
    }
    return p;
  }
  redisContext* ctx() { return c_; }

 private:
  redisContext* c_ = nullptr;
};

class RedisProducer : public ProducerConn {
 public:
  explicit RedisProducer(std::string queue) : queue_(std::move(queue)) {}
  bool Open(std::string* err) { return conn_.Open(err); }
  bool Enqueue(const std::string& payload, std::string* err) override {
    auto r = conn_.Command(err, "XADD %s * d %b", queue_.c_str(), payload.data(), payload.size());
    if (!r) return false;
    if (r->type != REDIS_REPLY_STRING) {
      *err = "redis: XADD did not answer an id";
      return false;
    }
    return true;
  }

 private:
  std::string queue_;
  RedisConn conn_;
};

class RedisWorker : public WorkerConn {
 public:
  RedisWorker(std::string queue, int idx)
      : queue_(std::move(queue)), consumer_("c" + std::to_string(idx)) {}
  bool Open(std::string* err) { return conn_.Open(err); }
  int Take(int wait_ms, std::string* payload, std::string* err) override {
    auto r = conn_.Command(err, "XREADGROUP GROUP %s %s COUNT 1 BLOCK %d STREAMS %s >",
                           kRedisGroup, consumer_.c_str(), wait_ms, queue_.c_str());
    if (!r) return -1;
    if (r->type == REDIS_REPLY_NIL) return 0;
    // [[stream, [[id, [field, value]]]]]
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->elements < 2) {
      *err = "redis: XREADGROUP answered an unexpected shape";
      return -1;
    }
    redisReply* entries = r->element[0]->element[1];
    if (entries->elements == 0) return 0;
    redisReply* entry = entries->element[0];
    if (entry->elements < 2 || entry->element[1]->elements < 2) {
      *err = "redis: XREADGROUP entry has an unexpected shape";
      return -1;
    }
    id_.assign(entry->element[0]->str, entry->element[0]->len);
    redisReply* value = entry->element[1]->element[1];
    payload->assign(value->str, value->len);
    return 1;
  }
  bool Complete(std::string* err) override {
    // XACK takes it out of the group's pending list, XDEL out of the stream:
    // both in one round trip (one AOF write, one fsync under "always").
    redisAppendCommand(conn_.ctx(), "XACK %s %s %s", queue_.c_str(), kRedisGroup, id_.c_str());
    redisAppendCommand(conn_.ctx(), "XDEL %s %s", queue_.c_str(), id_.c_str());
    for (const char* what : {"XACK", "XDEL"}) {
      void* raw = nullptr;
      if (redisGetReply(conn_.ctx(), &raw) != REDIS_OK) {
        conn_.Check(static_cast<redisReply*>(raw), err);
        return false;
      }
      auto r = conn_.Check(static_cast<redisReply*>(raw), err);
      if (!r) return false;
      if (r->type != REDIS_REPLY_INTEGER || r->integer != 1) {
        *err = std::string("redis: ") + what + " did not remove the entry " + id_;
        return false;
      }
    }
    return true;
  }

 private:
  std::string queue_;
  std::string consumer_;
  std::string id_;
  RedisConn conn_;
};

class RedisPeer : public Peer {
 public:
  bool Prepare(const std::string& queue, std::string* err) override {
    RedisConn c;
    if (!c.Open(err)) return false;
    return c.Command(err, "XGROUP CREATE %s %s 0 MKSTREAM", queue.c_str(), kRedisGroup) != nullptr;
  }
  std::unique_ptr<ProducerConn> NewProducer(const std::string& queue, std::string* err) override {
    auto p = std::make_unique<RedisProducer>(queue);
    if (!p->Open(err)) return nullptr;
    return p;
  }
  std::unique_ptr<WorkerConn> NewWorker(const std::string& queue, int idx,
                                        std::string* err) override {
    auto w = std::make_unique<RedisWorker>(queue, idx);
    if (!w->Open(err)) return nullptr;
    return w;
  }
};

// ---------------------------------------------------------------------------
// RabbitMQ (librabbitmq): durable queue, persistent messages, publisher
// confirms; classic or quorum queue type.

std::string AmqpReplyText(const amqp_rpc_reply_t& r) {
  switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL: return "ok";
    case AMQP_RESPONSE_NONE: return "no reply";
    case AMQP_RESPONSE_LIBRARY_EXCEPTION: return amqp_error_string2(r.library_error);
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        auto* m = static_cast<amqp_connection_close_t*>(r.reply.decoded);
        return "connection closed: " + std::to_string(m->reply_code) + " " +
               std::string(static_cast<char*>(m->reply_text.bytes), m->reply_text.len);
      }
      if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        auto* m = static_cast<amqp_channel_close_t*>(r.reply.decoded);
        return "channel closed: " + std::to_string(m->reply_code) + " " +
               std::string(static_cast<char*>(m->reply_text.bytes), m->reply_text.len);
      }
      return "server exception";
  }
  return "unknown reply";
}

class AmqpConn {
 public:
  ~AmqpConn() {
    if (conn_) {
      if (open_) {
        amqp_channel_close(conn_, 1, AMQP_REPLY_SUCCESS);
        amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
      }
      amqp_destroy_connection(conn_);
    }
  }
  bool Open(std::string* err) {
    conn_ = amqp_new_connection();
    amqp_socket_t* sock = amqp_tcp_socket_new(conn_);
    if (sock == nullptr) {
      *err = "rabbitmq: out of memory";
      return false;
    }
    timeval tv{5, 0};
    int rc = amqp_socket_open_noblock(sock, g_host.c_str(), g_port, &tv);
    if (rc != AMQP_STATUS_OK) {
      *err = "rabbitmq: connect " + g_flags.addr + ": " + amqp_error_string2(rc);
      return false;
    }
    // The default guest account, which RabbitMQ allows from loopback only.
    if (!Ok(amqp_login(conn_, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest"),
            "login", err)) {
      return false;
    }
    amqp_channel_open(conn_, 1);
    if (!Ok(amqp_get_rpc_reply(conn_), "channel.open", err)) return false;
    open_ = true;
    return true;
  }
  bool Ok(const amqp_rpc_reply_t& r, const char* what, std::string* err) {
    if (r.reply_type == AMQP_RESPONSE_NORMAL) return true;
    *err = std::string("rabbitmq: ") + what + ": " + AmqpReplyText(r);
    return false;
  }
  amqp_connection_state_t get() { return conn_; }

 private:
  amqp_connection_state_t conn_ = nullptr;
  bool open_ = false;
};

class AmqpProducer : public ProducerConn {
 public:
  explicit AmqpProducer(std::string queue) : queue_(std::move(queue)) {}
  bool Open(std::string* err) {
    if (!conn_.Open(err)) return false;
    amqp_confirm_select(conn_.get(), 1);
    return conn_.Ok(amqp_get_rpc_reply(conn_.get()), "confirm.select", err);
  }
  bool Enqueue(const std::string& payload, std::string* err) override {
    amqp_basic_properties_t props;
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.delivery_mode = 2;  // persistent
    amqp_bytes_t body{payload.size(), const_cast<char*>(payload.data())};
    int rc = amqp_basic_publish(conn_.get(), 1, amqp_empty_bytes, amqp_cstring_bytes(queue_.c_str()),
                                0, 0, &props, body);
    if (rc != AMQP_STATUS_OK) {
      *err = std::string("rabbitmq: basic.publish: ") + amqp_error_string2(rc);
      return false;
    }
    const uint64_t tag = ++published_;
    // Waits for the confirm of this message (the broker numbers them 1, 2, ...).
    auto deadline = Clock::now() + milliseconds(kOpTimeoutMs);
    for (;;) {
      amqp_maybe_release_buffers(conn_.get());
      auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - Clock::now());
      if (left.count() <= 0) {
        *err = "rabbitmq: no publisher confirm in " + std::to_string(kOpTimeoutMs) + " ms";
        return false;
      }
      timeval tv{static_cast<time_t>(left.count() / 1000000),
                 static_cast<suseconds_t>(left.count() % 1000000)};
      amqp_frame_t frame;
      rc = amqp_simple_wait_frame_noblock(conn_.get(), &frame, &tv);
      if (rc != AMQP_STATUS_OK) {
        *err = std::string("rabbitmq: waiting for a confirm: ") + amqp_error_string2(rc);
        return false;
      }
      if (frame.frame_type != AMQP_FRAME_METHOD) continue;
      if (frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
        auto* ack = static_cast<amqp_basic_ack_t*>(frame.payload.method.decoded);
        if (ack->delivery_tag == tag || (ack->multiple && ack->delivery_tag >= tag)) return true;
      } else if (frame.payload.method.id == AMQP_BASIC_NACK_METHOD) {
        *err = "rabbitmq: the broker nacked a message";
        return false;
      } else if (frame.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                 frame.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
        *err = "rabbitmq: the broker closed the channel while publishing";
        return false;
      }
    }
  }

 private:
  std::string queue_;
  AmqpConn conn_;
  uint64_t published_ = 0;
};

class AmqpWorker : public WorkerConn {
 public:
  explicit AmqpWorker(std::string queue) : queue_(std::move(queue)) {}
  bool Open(std::string* err) {
    if (!conn_.Open(err)) return false;
    amqp_basic_qos(conn_.get(), 1, 0, 1, 0);  // one unacknowledged job at a time
    if (!conn_.Ok(amqp_get_rpc_reply(conn_.get()), "basic.qos", err)) return false;
    amqp_basic_consume(conn_.get(), 1, amqp_cstring_bytes(queue_.c_str()), amqp_empty_bytes, 0, 0,
                       0, amqp_empty_table);
    return conn_.Ok(amqp_get_rpc_reply(conn_.get()), "basic.consume", err);
  }
  int Take(int wait_ms, std::string* payload, std::string* err) override {
    amqp_maybe_release_buffers(conn_.get());
    timeval tv{wait_ms / 1000, (wait_ms % 1000) * 1000};
    amqp_envelope_t env;
    amqp_rpc_reply_t r = amqp_consume_message(conn_.get(), &env, &tv, 0);
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT) {
      return 0;
    }
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
      *err = "rabbitmq: consume: " + AmqpReplyText(r);
      return -1;
    }
    payload->assign(static_cast<char*>(env.message.body.bytes), env.message.body.len);
    tag_ = env.delivery_tag;
    amqp_destroy_envelope(&env);
    return 1;
  }
  bool Complete(std::string* err) override {
    // basic.ack has no answer in AMQP 0-9-1: this returns once it is sent.
    int rc = amqp_basic_ack(conn_.get(), 1, tag_, 0);
    if (rc != AMQP_STATUS_OK) {
      *err = std::string("rabbitmq: basic.ack: ") + amqp_error_string2(rc);
      return false;
    }
    return true;
  }

 private:
  std::string queue_;
  AmqpConn conn_;
  uint64_t tag_ = 0;
};

class AmqpPeer : public Peer {
 public:
  explicit AmqpPeer(std::string queue_type) : type_(std::move(queue_type)) {}
  bool Prepare(const std::string& queue, std::string* err) override {
    AmqpConn c;
    if (!c.Open(err)) return false;
    amqp_table_entry_t entry;
    entry.key = amqp_cstring_bytes("x-queue-type");
    entry.value.kind = AMQP_FIELD_KIND_UTF8;
    entry.value.value.bytes = amqp_cstring_bytes(type_.c_str());
    amqp_table_t args{1, &entry};
    amqp_queue_declare(c.get(), 1, amqp_cstring_bytes(queue.c_str()), /*passive=*/0,
                       /*durable=*/1, /*exclusive=*/0, /*auto_delete=*/0, args);
    return c.Ok(amqp_get_rpc_reply(c.get()), "queue.declare", err);
  }
  std::unique_ptr<ProducerConn> NewProducer(const std::string& queue, std::string* err) override {
    auto p = std::make_unique<AmqpProducer>(queue);
    if (!p->Open(err)) return nullptr;
    return p;
  }
  std::unique_ptr<WorkerConn> NewWorker(const std::string& queue, int, std::string* err) override {
    auto w = std::make_unique<AmqpWorker>(queue);
    if (!w->Open(err)) return nullptr;
    return w;
  }

 private:
  std::string type_;
};

// ---------------------------------------------------------------------------
// NATS JetStream (nats.c): a file stream per queue with work-queue retention
// and one durable pull consumer that all workers share.

constexpr const char* kNatsConsumer = "workers";

std::string NatsError(const char* what, natsStatus s, jsErrCode jerr) {
  std::string e = std::string("nats: ") + what + ": " + natsStatus_GetText(s);
  const char* last = nats_GetLastError(nullptr);
  if (last && *last) e += std::string(" (") + last + ")";
  if (jerr != 0) e += " jetstream error " + std::to_string(static_cast<int>(jerr));
  return e;
}

class NatsConn {
 public:
  ~NatsConn() {
    if (js_) jsCtx_Destroy(js_);
    if (nc_) natsConnection_Destroy(nc_);
  }
  bool Open(std::string* err) {
    natsOptions* opts = nullptr;
    natsStatus s = natsOptions_Create(&opts);
    std::string url = "nats://" + g_flags.addr;
    if (s == NATS_OK) s = natsOptions_SetURL(opts, url.c_str());
    if (s == NATS_OK) s = natsOptions_SetTimeout(opts, 5000);
    if (s == NATS_OK) s = natsConnection_Connect(&nc_, opts);
    natsOptions_Destroy(opts);
    if (s != NATS_OK) {
      *err = NatsError(("connect " + g_flags.addr).c_str(), s, static_cast<jsErrCode>(0));
      return false;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = kOpTimeoutMs;  // every JetStream request, publishes included
    s = natsConnection_JetStream(&js_, nc_, &jo);
    if (s != NATS_OK) {
      *err = NatsError("JetStream context", s, static_cast<jsErrCode>(0));
      return false;
    }
    return true;
  }
  jsCtx* js() { return js_; }

 private:
  natsConnection* nc_ = nullptr;
  jsCtx* js_ = nullptr;
};

class NatsProducer : public ProducerConn {
 public:
  explicit NatsProducer(std::string subject) : subject_(std::move(subject)) {}
  bool Open(std::string* err) { return conn_.Open(err); }
  bool Enqueue(const std::string& payload, std::string* err) override {
    jsPubAck* pa = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    // Waits for the PubAck: the stream has stored the message.
    natsStatus s = js_Publish(&pa, conn_.js(), subject_.c_str(), payload.data(),
                              static_cast<int>(payload.size()), nullptr, &jerr);
    if (pa) jsPubAck_Destroy(pa);
    if (s != NATS_OK) {
      *err = NatsError("publish", s, jerr);
      return false;
    }
    return true;
  }

 private:
  std::string subject_;
  NatsConn conn_;
};

class NatsWorker : public WorkerConn {
 public:
  explicit NatsWorker(std::string queue) : queue_(std::move(queue)) {}
  ~NatsWorker() override {
    if (msg_) natsMsg_Destroy(msg_);
    if (sub_) natsSubscription_Destroy(sub_);
  }
  bool Open(std::string* err) {
    if (!conn_.Open(err)) return false;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = queue_.c_str();
    so.Consumer = kNatsConsumer;  // bind to the consumer Prepare made
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s =
        js_PullSubscribe(&sub_, conn_.js(), queue_.c_str(), kNatsConsumer, nullptr, &so, &jerr);
    if (s != NATS_OK) {
      *err = NatsError("pull subscribe", s, jerr);
      return false;
    }
    return true;
  }
  int Take(int wait_ms, std::string* payload, std::string* err) override {
    natsMsgList list{nullptr, 0};
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = natsSubscription_Fetch(&list, sub_, 1, wait_ms, &jerr);
    if (s == NATS_TIMEOUT) {
      natsMsgList_Destroy(&list);
      return 0;
    }
    if (s != NATS_OK || list.Count < 1) {
      natsMsgList_Destroy(&list);
      *err = NatsError("fetch", s, jerr);
      return -1;
    }
    msg_ = list.Msgs[0];
    list.Msgs[0] = nullptr;  // ours now; Destroy skips it
    natsMsgList_Destroy(&list);
    payload->assign(natsMsg_GetData(msg_), static_cast<size_t>(natsMsg_GetDataLength(msg_)));
    return 1;
  }
  bool Complete(std::string* err) override {
    jsErrCode jerr = static_cast<jsErrCode>(0);
    // AckSync waits for the server's answer to the ack.
    natsStatus s = natsMsg_AckSync(msg_, nullptr, &jerr);
    natsMsg_Destroy(msg_);
    msg_ = nullptr;
    if (s != NATS_OK) {
      *err = NatsError("ack", s, jerr);
      return false;
    }
    return true;
  }

 private:
  std::string queue_;
  NatsConn conn_;
  natsSubscription* sub_ = nullptr;
  natsMsg* msg_ = nullptr;
};

class NatsPeer : public Peer {
 public:
  ~NatsPeer() override { nats_Close(); }
  bool Prepare(const std::string& queue, std::string* err) override {
    NatsConn c;
    if (!c.Open(err)) return false;
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    const char* subjects[] = {queue.c_str()};
    cfg.Name = queue.c_str();
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    cfg.Retention = js_WorkQueuePolicy;  // an acknowledged message is removed
    jsStreamInfo* si = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = js_AddStream(&si, c.js(), &cfg, nullptr, &jerr);
    if (si) jsStreamInfo_Destroy(si);
    if (s != NATS_OK) {
      *err = NatsError("add stream", s, jerr);
      return false;
    }
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = kNatsConsumer;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = 60LL * 1000 * 1000 * 1000;  // ns; longer than any job here takes
    jsConsumerInfo* ci = nullptr;
    s = js_AddConsumer(&ci, c.js(), queue.c_str(), &cc, nullptr, &jerr);
    if (ci) jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) {
      *err = NatsError("add consumer", s, jerr);
      return false;
    }
    return true;
  }
  std::unique_ptr<ProducerConn> NewProducer(const std::string& queue, std::string* err) override {
    auto p = std::make_unique<NatsProducer>(queue);
    if (!p->Open(err)) return nullptr;
    return p;
  }
  std::unique_ptr<WorkerConn> NewWorker(const std::string& queue, int, std::string* err) override {
    auto w = std::make_unique<NatsWorker>(queue);
    if (!w->Open(err)) return nullptr;
    return w;
  }
};

std::unique_ptr<Peer> MakePeer(const std::string& system) {
  if (system == "beanstalkd") return std::make_unique<BeanstalkPeer>();
  if (system == "redis") return std::make_unique<RedisPeer>();
  if (system == "rabbitmq-classic") return std::make_unique<AmqpPeer>("classic");
  if (system == "rabbitmq-quorum") return std::make_unique<AmqpPeer>("quorum");
  if (system == "nats") return std::make_unique<NatsPeer>();
  return nullptr;
}

// ---------------------------------------------------------------------------
// The workload, shaped as errand-bench's.

// Collects errors and latencies from many threads.
struct Sink {
  std::mutex mu;
  std::vector<int64_t> lat_ns;
  std::atomic<uint64_t> errors{0};
  std::string first_error;

  void Merge(const std::vector<int64_t>& lat) {
    std::lock_guard<std::mutex> l(mu);
    lat_ns.insert(lat_ns.end(), lat.begin(), lat.end());
  }
  void Error(const std::string& what) {
    std::lock_guard<std::mutex> l(mu);
    if (errors++ == 0) first_error = what;
  }
};

template <typename F>
bool WaitUntil(F done, Clock::time_point deadline) {
  while (!done()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(2));
  }
  return true;
}

// P threads, each with its own connection, one job at a time each.
class Producers {
 public:
  // Enqueues `total` jobs. With rate > 0, job i starts no earlier than
  // t0 + i/rate (open loop schedule); otherwise back to back.
  Producers(Peer* peer, std::string queue, uint64_t total, double rate, Sink* sink,
            bool record_latency)
      : peer_(peer), queue_(std::move(queue)), total_(total), rate_(rate), sink_(sink),
        record_(record_latency) {}

  // Opens the connections (not part of the measured time).
  bool Connect(std::string* err) {
    for (int i = 0; i < g_flags.producers; ++i) {
      auto c = peer_->NewProducer(queue_, err);
      if (!c) return false;
      conns_.push_back(std::move(c));
    }
    return true;
  }
  void Start(Clock::time_point deadline) {
    deadline_ = deadline;
    t0_ = Clock::now();
    for (auto& c : conns_) threads_.emplace_back([this, conn = c.get()] { Run(conn); });
  }
  void Stop() { stop_ = true; }
  void Join() {
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  uint64_t done() const { return done_.load(); }
  int64_t max_lag_ns() const { return max_lag_ns_.load(); }

 private:
  void Run(ProducerConn* conn) {
    std::vector<int64_t> lat;
    std::string err;
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
      if (!conn->Enqueue(MakePayload(start), &err)) {
        sink_->Error("enqueue: " + err);
        break;  // the connection is in an unknown state
      }
      if (record_) lat.push_back(NowNs() - start);
      done_.fetch_add(1);
    }
    sink_->Merge(lat);
  }

  Peer* peer_;
  std::string queue_;
  uint64_t total_;
  double rate_;
  Sink* sink_;
  bool record_;
  std::vector<std::unique_ptr<ProducerConn>> conns_;
  Clock::time_point t0_, deadline_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> next_{0};
  std::atomic<uint64_t> done_{0};
  std::atomic<int64_t> max_lag_ns_{0};
  std::vector<std::thread> threads_;
};

// W threads, each with its own connection: take one job, complete it, repeat.
class Workers {
 public:
  // `latency_from_enqueue`: record completion ack time minus the enqueue start
  // carried in the payload; otherwise the time Complete takes.
  Workers(Peer* peer, std::string queue, uint64_t total, Sink* sink, bool latency_from_enqueue)
      : peer_(peer), queue_(std::move(queue)), total_(total), sink_(sink),
        from_enqueue_(latency_from_enqueue) {}

  bool Connect(std::string* err) {
    for (int i = 0; i < g_flags.workers; ++i) {
      auto c = peer_->NewWorker(queue_, i, err);
      if (!c) return false;
      conns_.push_back(std::move(c));
    }
    return true;
  }
  void Start() {
    for (auto& c : conns_) threads_.emplace_back([this, conn = c.get()] { Run(conn); });
  }
  void Stop() { stop_ = true; }
  void Join() {
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  uint64_t done() const { return done_.load(); }

 private:
  void Run(WorkerConn* conn) {
    std::vector<int64_t> lat;
    std::string payload, err;
    while (!stop_ && done_.load() < total_) {
      int got = conn->Take(kTakeWaitMs, &payload, &err);
      if (got < 0) {
        sink_->Error("take: " + err);
        break;
      }
      if (got == 0) continue;
      int64_t start = from_enqueue_ ? PayloadStart(payload) : NowNs();
      if (!conn->Complete(&err)) {
        sink_->Error("complete: " + err);
        break;
      }
      lat.push_back(NowNs() - start);
      done_.fetch_add(1);
    }
    sink_->Merge(lat);
  }

  Peer* peer_;
  std::string queue_;
  uint64_t total_;
  Sink* sink_;
  bool from_enqueue_;
  std::vector<std::unique_ptr<WorkerConn>> conns_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> done_{0};
  std::vector<std::thread> threads_;
};

struct PhaseResult {
  std::string phase;
  uint64_t jobs = 0;
  uint64_t target = 0;
  double secs = 0;
  std::vector<int64_t> lat_ns;
  double server_cpu_us = -1;  // over the phase
  double bench_cpu_us = -1;
  uint64_t errors = 0;
  std::string first_error;
  bool timed_out = false;
  std::string note;

  double rate() const { return secs > 0 ? jobs / secs : 0; }
  bool ok() const { return !timed_out && errors == 0 && jobs == target; }
};

std::unique_ptr<Peer> g_peer;
std::string g_run_id;
std::string g_enqueued_queue;  // filled by the enqueue phase, emptied by drain
uint64_t g_enqueued_jobs = 0;

std::string QueueName(const std::string& phase) {
  return g_flags.queue + "-" + g_run_id + "-" + phase;
}

PhaseResult Failed(PhaseResult res, const std::string& what) {
  res.errors = std::max<uint64_t>(res.errors, 1);
  if (res.first_error.empty()) res.first_error = what;
  return res;
}

PhaseResult RunPhase(const std::string& phase) {
  PhaseResult res;
  res.phase = phase;
  res.target = phase == "paced" ? g_flags.paced_n : g_flags.n;
  const auto timeout = seconds(g_flags.phase_timeout_s);
  Sink sink;
  std::string queue = QueueName(phase);
  std::string err;

  if (phase == "drain" && !g_enqueued_queue.empty() &&
      g_enqueued_jobs == static_cast<uint64_t>(g_flags.n)) {
    queue = g_enqueued_queue;
    res.note = "queue from the enqueue phase";
  } else {
    if (!g_peer->Prepare(queue, &err)) return Failed(res, "prepare: " + err);
    if (phase == "drain") {
      // Fill the queue first, with the same producers, unmeasured.
      Sink fill_sink;
      Producers fill(g_peer.get(), queue, res.target, 0, &fill_sink, false);
      if (!fill.Connect(&err)) return Failed(res, "prefill: " + err);
      fill.Start(Clock::now() + timeout);
      WaitUntil([&] { return fill.done() + fill_sink.errors >= res.target; },
                Clock::now() + timeout);
      fill.Stop();
      fill.Join();
      if (fill.done() != res.target) {
        return Failed(res, "prefill: " + std::to_string(fill.done()) + " of " +
                               std::to_string(res.target) + " jobs; " + fill_sink.first_error);
      }
      res.note = "queue filled beforehand (unmeasured)";
    }
  }

  const bool has_producers = phase != "drain";
  const bool has_workers = phase != "enqueue";
  const bool paced = phase == "paced";
  Producers prod(g_peer.get(), queue, res.target, paced ? g_flags.rate : 0, &sink,
                 phase == "enqueue");
  Workers work(g_peer.get(), queue, res.target, &sink, phase != "drain");
  if (has_producers && !prod.Connect(&err)) return Failed(res, "producer connect: " + err);
  if (has_workers && !work.Connect(&err)) return Failed(res, "worker connect: " + err);

  const double server_cpu0 = g_flags.server_pid > 0 ? CpuUs(g_flags.server_pid) : -1;
  const double bench_cpu0 = CpuUs(0);
  const auto start = Clock::now();
  const auto deadline = start + timeout;
  if (has_workers) work.Start();
  if (has_producers) prod.Start(deadline);
  if (has_workers) {
    res.timed_out = !WaitUntil([&] { return work.done() >= res.target || sink.errors > 0; },
                               deadline);
  } else {
    res.timed_out = !WaitUntil([&] { return prod.done() + sink.errors >= res.target; }, deadline);
  }
  res.secs = std::chrono::duration<double>(Clock::now() - start).count();
  const double server_cpu1 = g_flags.server_pid > 0 ? CpuUs(g_flags.server_pid) : -1;
  const double bench_cpu1 = CpuUs(0);
  prod.Stop();
  work.Stop();
  prod.Join();
  work.Join();
  res.jobs = has_workers ? work.done() : prod.done();
  if (server_cpu0 >= 0 && server_cpu1 >= 0) res.server_cpu_us = server_cpu1 - server_cpu0;
  if (bench_cpu0 >= 0 && bench_cpu1 >= 0) res.bench_cpu_us = bench_cpu1 - bench_cpu0;
  if (phase == "enqueue") {
    g_enqueued_queue = queue;
    g_enqueued_jobs = res.jobs;
  }
  if (paced) {
    char buf[128];
    std::snprintf(buf, sizeof(buf), "offered %.0f jobs/s; latest enqueue start %.0f us behind schedule",
                  g_flags.rate, prod.max_lag_ns() / 1e3);
    res.note = buf;
  }
  res.lat_ns = std::move(sink.lat_ns);
  res.errors = sink.errors.load();
  res.first_error = sink.first_error;
  return res;
}

double Percentile(const std::vector<int64_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t i = static_cast<size_t>(q * (sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)] / 1e3;
}

void PrintLine(PhaseResult& r) {
  std::sort(r.lat_ns.begin(), r.lat_ns.end());
  const double p50 = Percentile(r.lat_ns, 0.50), p99 = Percentile(r.lat_ns, 0.99);
  const double max = r.lat_ns.empty() ? 0 : r.lat_ns.back() / 1e3;
  const double server_cpu = r.jobs > 0 && r.server_cpu_us >= 0 ? r.server_cpu_us / r.jobs : -1;
  const double bench_cpu = r.jobs > 0 && r.bench_cpu_us >= 0 ? r.bench_cpu_us / r.jobs : -1;
  const std::string status = r.timed_out ? "timeout" : (r.ok() ? "ok" : "error");
  std::printf(
      "system=%s mode=%s phase=%s jobs=%llu secs=%.3f rate=%.0f p50_us=%.0f p99_us=%.0f "
      "max_us=%.0f broker_cpu_us_per_job=%.1f bench_cpu_us_per_job=%.1f producers=%d workers=%d "
      "payload=%d status=%s\n",
      g_flags.system.c_str(), g_flags.mode.c_str(), r.phase.c_str(),
      static_cast<unsigned long long>(r.jobs), r.secs, r.rate(), p50, p99, max, server_cpu,
      bench_cpu, g_flags.producers, g_flags.workers, g_flags.payload, status.c_str());
  if (!r.ok()) {
    std::printf("#   %s: %llu of %llu jobs, %llu errors%s%s\n", r.phase.c_str(),
                static_cast<unsigned long long>(r.jobs), static_cast<unsigned long long>(r.target),
                static_cast<unsigned long long>(r.errors),
                r.first_error.empty() ? "" : "; first: ", r.first_error.c_str());
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  if (!ParseFlags(argc, argv)) {
    Usage();
    return 2;
  }
  g_peer = MakePeer(g_flags.system);
  g_run_id = std::to_string(::getpid()) + "-" +
             std::to_string(std::chrono::duration_cast<milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count());
  std::vector<PhaseResult> results;
  bool failed = false;
  for (const auto& phase : g_flags.phases) {
    PhaseResult r = RunPhase(phase);
    PrintLine(r);
    failed = failed || !r.ok();
    results.push_back(std::move(r));
  }
  std::printf("\npeer-bench summary: %s at %s, mode %s, %d producers, %d workers, %d-byte "
              "payloads (a connection per thread)\n",
              g_flags.system.c_str(), g_flags.addr.c_str(), g_flags.mode.c_str(),
              g_flags.producers, g_flags.workers, g_flags.payload);
  std::printf("  %-10s %8s %10s %9s %9s %9s  %s\n", "phase", "jobs", "jobs/s", "p50 us", "p99 us",
              "max us", "");
  for (auto& r : results) {
    std::string extra = r.note;
    if (!r.ok()) extra = std::string(r.timed_out ? "TIMED OUT " : "ERRORS ") + extra;
    std::printf("  %-10s %8llu %10.0f %9.0f %9.0f %9.0f  %s\n", r.phase.c_str(),
                static_cast<unsigned long long>(r.jobs), r.rate(), Percentile(r.lat_ns, 0.5),
                Percentile(r.lat_ns, 0.99), r.lat_ns.empty() ? 0 : r.lat_ns.back() / 1e3,
                extra.c_str());
  }
  std::fflush(stdout);
  g_peer.reset();
  return failed ? 1 : 0;
}
