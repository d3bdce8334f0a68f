#include "service/connect_acks.h"

#include <utility>

namespace errand::service {

void PackConnectAcks(std::deque<v1::ConnectResponse>& queued, v1::ConnectResponse* out) {
  out->Clear();
  while (!queued.empty() && queued.front().kind_case() == v1::ConnectResponse::kAck &&
         static_cast<size_t>(out->acks_size()) < kMaxPackedConnectAcks) {
    *out->add_acks() = std::move(*queued.front().mutable_ack());
    queued.pop_front();
  }
  if (queued.empty() || queued.front().kind_case() == v1::ConnectResponse::kAck) return;
  v1::ConnectResponse next = std::move(queued.front());
  queued.pop_front();
  next.mutable_acks()->Swap(out->mutable_acks());  // `next` came with none
  *out = std::move(next);
}

}  // namespace errand::service
