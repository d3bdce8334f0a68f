#include "service/event_stream.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace errand::service {
namespace {

std::string Bytes(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(b.Dump(&slices).ok());
  std::string out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

v1::Event EventOfSize(size_t payload) {
  v1::Event ev;
  ev.set_seq(42);
  ev.set_type(v1::EVENT_TYPE_MESSAGE);
  ev.set_topic("t");
  ev.set_payload(std::string(payload, 'p'));
  return ev;
}

// The bytes written for an event are what protobuf serializes the response
// to, whatever the length's varint takes (1, 2 or 3 bytes here), for both
// responses that carry an event.
TEST(EventResponseBytesTest, EqualTheProtoResponseSerialization) {
  for (size_t payload : {0, 10, 200, 20000}) {
    const hub::SharedEvent shared(EventOfSize(payload));
    v1::SubscribeResponse sub;
    *sub.mutable_event() = shared.event();
    EXPECT_EQ(Bytes(EventResponseBytes(v1::SubscribeResponse::kEventFieldNumber, shared)),
              sub.SerializeAsString())
        << payload;
    v1::WatchJobResponse watch;
    *watch.mutable_event() = shared.event();
    EXPECT_EQ(Bytes(EventResponseBytes(v1::WatchJobResponse::kEventFieldNumber, shared)),
              watch.SerializeAsString())
        << payload;
  }
}

// Every response made of one event shares its serialized bytes.
TEST(EventResponseBytesTest, ResponsesShareTheEventsBytes) {
  const hub::SharedEvent shared(EventOfSize(1000));
  grpc::ByteBuffer a = EventResponseBytes(1, shared);
  grpc::ByteBuffer b = EventResponseBytes(1, shared);
  std::vector<grpc::Slice> sa, sb;
  ASSERT_TRUE(a.Dump(&sa).ok());
  ASSERT_TRUE(b.Dump(&sb).ok());
  ASSERT_EQ(sa.size(), 2u);
  ASSERT_EQ(sb.size(), 2u);
  EXPECT_EQ(sa[1].begin(), sb[1].begin());
  EXPECT_EQ(sa[1].begin(), shared.Serialized().begin());
}

}  // namespace
}  // namespace errand::service
