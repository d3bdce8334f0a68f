#pragma once

#include <cstddef>
#include <deque>

#include "errand/v1/workers.pb.h"

namespace errand::service {

// The next message for a worker whose hello set packed_acks, from what
// queued (never empty): the acks at the front (at most kMaxPackedConnectAcks)
// go into `acks`, then the message after them, if any, is the kind. Order is
// kept: an ack queued after a delivery waits for the next message.
// (A file of its own: errand-floor-broker packs the same way.)
constexpr size_t kMaxPackedConnectAcks = 256;
void PackConnectAcks(std::deque<v1::ConnectResponse>& queued, v1::ConnectResponse* out);

}  // namespace errand::service
