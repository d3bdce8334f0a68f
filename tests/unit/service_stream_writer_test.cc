#include "service/stream_writer.h"

#include <gtest/gtest.h>

#include <deque>
#include <string>
#include <vector>

namespace errand::service {
namespace {

// Records what the writer starts; the test plays gRPC and calls
// OnWriteDone.
struct FakeReactor {
  void StartWrite(const std::string* msg) { writes.push_back(*msg); }
  void Finish(grpc::Status s) {
    finished = true;
    status = std::move(s);
  }
  std::vector<std::string> writes;
  bool finished = false;
  grpc::Status status;
};

// What queues is an int; the write is its text (as Subscribe queues events
// and writes their bytes).
using Writer = StreamWriter<FakeReactor, std::string, int>;

void PackText(std::deque<int>& queued, std::string* out) {
  *out = std::to_string(queued.front());
  queued.pop_front();
}

TEST(StreamWriterTest, SendBoundedSaysWhenFullAndCallsOnDrainedOnceEmpty) {
  FakeReactor r;
  int drained = 0;
  Writer w(&r, &PackText, nullptr, [&] { drained++; });
  EXPECT_TRUE(w.SendBounded(1, 2));  // written at once: nothing queued
  EXPECT_TRUE(w.SendBounded(2, 2));  // one waits behind the write
  EXPECT_FALSE(w.SendBounded(3, 2)) << "two wait: full";
  EXPECT_EQ(r.writes, (std::vector<std::string>{"1"}));
  w.OnWriteDone(true);  // "2" goes out, "3" still waits
  EXPECT_EQ(drained, 0);
  w.OnWriteDone(true);  // "3" goes out: the queue is empty
  EXPECT_EQ(drained, 1);
  EXPECT_EQ(r.writes, (std::vector<std::string>{"1", "2", "3"}));
  w.OnWriteDone(true);
  EXPECT_EQ(drained, 1) << "only once per full queue";
  EXPECT_TRUE(w.SendBounded(4, 2));
  w.OnWriteDone(true);
  EXPECT_EQ(drained, 1);
  w.Finish(grpc::Status::OK);
  EXPECT_TRUE(r.finished);
  EXPECT_EQ(r.writes.back(), "4");
}

TEST(StreamWriterTest, NoOnDrainedAfterAFailedWriteAndSendsAreRefused) {
  FakeReactor r;
  int drained = 0, broken = 0;
  Writer w(&r, &PackText, [&] { broken++; }, [&] { drained++; });
  EXPECT_TRUE(w.SendBounded(1, 1));
  EXPECT_FALSE(w.SendBounded(2, 1));
  w.OnWriteDone(false);
  EXPECT_EQ(broken, 1);
  EXPECT_EQ(drained, 0);
  EXPECT_FALSE(w.SendBounded(3, 1));
  EXPECT_EQ(r.writes, (std::vector<std::string>{"1"}));
  w.Finish(grpc::Status(grpc::StatusCode::CANCELLED, "gone"));
  EXPECT_TRUE(r.finished);
}

TEST(StreamWriterTest, FinishWaitsForTheWriteInFlightAndQueuedMessages) {
  FakeReactor r;
  Writer w(&r, &PackText, nullptr);
  w.Send(1);
  w.Send(2);
  w.Finish(grpc::Status::OK);
  EXPECT_FALSE(r.finished);
  w.Send(3);  // after Finish: dropped
  w.OnWriteDone(true);
  EXPECT_FALSE(r.finished);
  w.OnWriteDone(true);
  EXPECT_TRUE(r.finished);
  EXPECT_EQ(r.writes, (std::vector<std::string>{"1", "2"}));
}

}  // namespace
}  // namespace errand::service
