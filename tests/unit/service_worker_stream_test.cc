#include "service/worker_stream.h"

#include <gtest/gtest.h>

#include <deque>
#include <string>

namespace errand::service {
namespace {

v1::ConnectResponse AckMsg(uint64_t rid) {
  v1::ConnectResponse m;
  m.mutable_ack()->set_request_id(rid);
  return m;
}

v1::ConnectResponse DeliveryMsg(const std::string& id) {
  v1::ConnectResponse m;
  m.mutable_delivery()->mutable_job()->set_id(id);
  return m;
}

// Acks at the front ride with the message after them; an ack queued after a
// delivery waits for the next message, which may carry acks only.
TEST(PackConnectAcksTest, LeadingAcksRideWithTheNextMessageInOrder) {
  std::deque<v1::ConnectResponse> q;
  q.push_back(AckMsg(1));
  q.push_back(AckMsg(2));
  q.push_back(DeliveryMsg("j1"));
  q.push_back(AckMsg(3));
  q.push_back(DeliveryMsg("j2"));
  q.push_back(AckMsg(4));

  v1::ConnectResponse out;
  PackConnectAcks(q, &out);
  ASSERT_EQ(out.acks_size(), 2);
  EXPECT_EQ(out.acks(0).request_id(), 1u);
  EXPECT_EQ(out.acks(1).request_id(), 2u);
  ASSERT_TRUE(out.has_delivery());
  EXPECT_EQ(out.delivery().job().id(), "j1");

  PackConnectAcks(q, &out);
  ASSERT_EQ(out.acks_size(), 1);
  EXPECT_EQ(out.acks(0).request_id(), 3u);
  EXPECT_EQ(out.delivery().job().id(), "j2");

  PackConnectAcks(q, &out);
  ASSERT_EQ(out.acks_size(), 1);
  EXPECT_EQ(out.acks(0).request_id(), 4u);
  EXPECT_EQ(out.kind_case(), v1::ConnectResponse::KIND_NOT_SET) << out.DebugString();
  EXPECT_TRUE(q.empty());
}

TEST(PackConnectAcksTest, AMessageWithoutAcksGoesAsIs) {
  std::deque<v1::ConnectResponse> q;
  v1::ConnectResponse cancel;
  cancel.set_cancel_job_id("j9");
  q.push_back(cancel);
  q.push_back(AckMsg(1));
  v1::ConnectResponse out;
  out.add_acks()->set_request_id(77);  // left over from the last write
  PackConnectAcks(q, &out);
  EXPECT_EQ(out.acks_size(), 0);
  EXPECT_EQ(out.cancel_job_id(), "j9");
  ASSERT_EQ(q.size(), 1u);
}

TEST(PackConnectAcksTest, AtMostTheCapPerMessage) {
  std::deque<v1::ConnectResponse> q;
  const size_t n = kMaxPackedConnectAcks + 10;
  for (size_t i = 0; i < n; ++i) q.push_back(AckMsg(i + 1));
  q.push_back(DeliveryMsg("j1"));
  v1::ConnectResponse out;
  PackConnectAcks(q, &out);
  EXPECT_EQ(static_cast<size_t>(out.acks_size()), kMaxPackedConnectAcks);
  EXPECT_EQ(out.kind_case(), v1::ConnectResponse::KIND_NOT_SET);
  PackConnectAcks(q, &out);
  ASSERT_EQ(out.acks_size(), 10);
  EXPECT_EQ(out.acks(0).request_id(), kMaxPackedConnectAcks + 1);
  EXPECT_EQ(out.delivery().job().id(), "j1");
  EXPECT_TRUE(q.empty());
}

}  // namespace
}  // namespace errand::service
