#include "service/call_limits.h"

namespace errand::service {
namespace {

absl::Status Exhausted(const char* what, size_t limit, const char* flag) {
  return absl::ResourceExhaustedError(std::string(what) + "; the limit is " +
                                      std::to_string(limit) + " (" + flag + ")");
}

}  // namespace

void CallLimiter::Slot::Release() {
  if (limiter_ == nullptr) return;
  limiter_->Release(kind_, peer_);
  limiter_ = nullptr;
}

absl::StatusOr<CallLimiter::Slot> CallLimiter::Acquire(Kind kind, std::string_view peer) {
  std::string key(peer);
  absl::MutexLock lock(&mu_);
  auto it = peers_.find(key);
  const PeerCounts none;
  const PeerCounts& pc = it == peers_.end() ? none : it->second;
  if (kind == Kind::kLongPoll) {
    if (long_polls_ >= options_.max_long_polls) {
      return Exhausted("too many long polls (WaitJob, Lease with a wait) waiting",
                       options_.max_long_polls, "--max-long-polls");
    }
    if (pc.long_polls >= options_.max_long_polls_per_connection) {
      return Exhausted("too many long polls (WaitJob, Lease with a wait) waiting on this connection",
                       options_.max_long_polls_per_connection,
                       "--max-long-polls-per-connection");
    }
  } else {
    if (kind == Kind::kSubscriber && subscribers_ >= options_.max_subscribers) {
      return Exhausted("too many event subscribers (Subscribe, EnqueueAndWatch)",
                       options_.max_subscribers, "--max-subscribers");
    }
    if (streams_ >= options_.max_streams) {
      return Exhausted("too many open streams", options_.max_streams, "--max-streams");
    }
    if (pc.streams >= options_.max_streams_per_connection) {
      return Exhausted("too many open streams on this connection",
                       options_.max_streams_per_connection, "--max-streams-per-connection");
    }
  }
  PeerCounts& mine = peers_[key];
  if (kind == Kind::kLongPoll) {
    long_polls_++;
    mine.long_polls++;
  } else {
    streams_++;
    mine.streams++;
    if (kind == Kind::kSubscriber) subscribers_++;
  }
  return Slot(this, kind, std::move(key));
}

void CallLimiter::Release(Kind kind, const std::string& peer) {
  absl::MutexLock lock(&mu_);
  auto it = peers_.find(peer);
  if (kind == Kind::kLongPoll) {
    long_polls_--;
    if (it != peers_.end()) it->second.long_polls--;
  } else {
    streams_--;
    if (kind == Kind::kSubscriber) subscribers_--;
    if (it != peers_.end()) it->second.streams--;
  }
  if (it != peers_.end() && it->second.streams == 0 && it->second.long_polls == 0) {
    peers_.erase(it);
  }
}

size_t CallLimiter::streams() const {
  absl::MutexLock lock(&mu_);
  return streams_;
}

size_t CallLimiter::subscribers() const {
  absl::MutexLock lock(&mu_);
  return subscribers_;
}

size_t CallLimiter::long_polls() const {
  absl::MutexLock lock(&mu_);
  return long_polls_;
}

size_t CallLimiter::connections() const {
  absl::MutexLock lock(&mu_);
  return peers_.size();
}

}  // namespace errand::service
