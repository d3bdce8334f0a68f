#pragma once

#include <absl/status/statusor.h>
#include <absl/synchronization/mutex.h>
#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <string>
#include <string_view>
#include <unordered_map>

// Limits on the calls that stay open: server streams (Jobs.EnqueueStream,
// Jobs.EnqueueAndWatch, Workers.Connect, Events.Subscribe) and long polls
// (Jobs.WaitJob, Workers.Lease with a wait). A client that opens too many
// gets RESOURCE_EXHAUSTED naming the limit and its flag, instead of holding
// the broker's memory and threads hostage.
//
// "Per connection" keys on the peer address gRPC reports for the call
// (ServerContext::peer(), e.g. "ipv4:127.0.0.1:53012"): one HTTP/2
// connection.
//
// Thread: any. Acquire runs on gRPC callback threads; a Slot is released
// wherever its reactor is deleted. One short mutex; no blocking.
namespace errand::service {

struct CallLimitOptions {
  // Open streams in total. Default: 10000 (--max-streams).
  size_t max_streams = 10000;
  // Open streams on one connection. Default: 1000 (--max-streams-per-connection).
  size_t max_streams_per_connection = 1000;
  // Waiting long polls in total. Default: 10000 (--max-long-polls).
  size_t max_long_polls = 10000;
  // Waiting long polls on one connection. Default: 1000
  // (--max-long-polls-per-connection).
  size_t max_long_polls_per_connection = 1000;
  // Event subscribers (Events.Subscribe and Jobs.EnqueueAndWatch streams) in
  // total; each also counts as a stream. Default: 10000 (--max-subscribers).
  size_t max_subscribers = 10000;
};

class CallLimiter {
 public:
  enum class Kind { kStream, kSubscriber, kLongPoll };

  // One admitted call. Releases its place when destroyed; move-only. A
  // default-constructed Slot holds nothing.
  class Slot {
   public:
    Slot() = default;
    ~Slot() { Release(); }
    Slot(Slot&& o) noexcept : limiter_(o.limiter_), kind_(o.kind_), peer_(std::move(o.peer_)) {
      o.limiter_ = nullptr;
    }
    Slot& operator=(Slot&& o) noexcept {
      if (this != &o) {
        Release();
        limiter_ = o.limiter_;
        kind_ = o.kind_;
        peer_ = std::move(o.peer_);
        o.limiter_ = nullptr;
      }
      return *this;
    }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    bool held() const { return limiter_ != nullptr; }

   private:
    friend class CallLimiter;
    Slot(CallLimiter* limiter, Kind kind, std::string peer)
        : limiter_(limiter), kind_(kind), peer_(std::move(peer)) {}
    void Release();

    CallLimiter* limiter_ = nullptr;
    Kind kind_ = Kind::kStream;
    std::string peer_;
  };

  explicit CallLimiter(const CallLimitOptions& options) : options_(options) {}
  CallLimiter(const CallLimiter&) = delete;
  CallLimiter& operator=(const CallLimiter&) = delete;

  // Admits one call of `kind` from `peer`, or answers RESOURCE_EXHAUSTED
  // naming the limit that is reached and its flag.
  absl::StatusOr<Slot> Acquire(Kind kind, std::string_view peer);

  // Current counts, for tests and metrics.
  size_t streams() const;
  size_t subscribers() const;
  size_t long_polls() const;
  // Connections that hold at least one slot.
  size_t connections() const;

 private:
  struct PeerCounts {
    size_t streams = 0;
    size_t long_polls = 0;
  };
  void Release(Kind kind, const std::string& peer);

  const CallLimitOptions options_;
  mutable absl::Mutex mu_;
  size_t streams_ ABSL_GUARDED_BY(mu_) = 0;
  size_t subscribers_ ABSL_GUARDED_BY(mu_) = 0;
  size_t long_polls_ ABSL_GUARDED_BY(mu_) = 0;
  std::unordered_map<std::string, PeerCounts> peers_ ABSL_GUARDED_BY(mu_);
};

// Reactors that only answer `status`, for calls refused before they start.
template <typename Req, typename Resp>
grpc::ServerBidiReactor<Req, Resp>* RejectedBidi(const grpc::Status& status) {
  class Rejected final : public grpc::ServerBidiReactor<Req, Resp> {
   public:
    explicit Rejected(const grpc::Status& s) { this->Finish(s); }
    void OnDone() override { delete this; }
  };
  return new Rejected(status);
}

template <typename Resp>
grpc::ServerWriteReactor<Resp>* RejectedWrite(const grpc::Status& status) {
  class Rejected final : public grpc::ServerWriteReactor<Resp> {
   public:
    explicit Rejected(const grpc::Status& s) { this->Finish(s); }
    void OnDone() override { delete this; }
  };
  return new Rejected(status);
}

}  // namespace errand::service
