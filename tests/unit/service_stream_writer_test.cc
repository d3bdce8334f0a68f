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

// Everything queued in one write: "1+2+3".
void JoinAll(std::deque<int>& queued, std::string* out) {
  out->clear();
  for (int v : queued) *out += (out->empty() ? "" : "+") + std::to_string(v);
  queued.clear();
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

// Hold queues without writing; Flush writes what is held, packed into one
// message, unless a write is in flight (its end writes them).
TEST(StreamWriterTest, HeldMessagesGoOutTogetherOnFlush) {
  FakeReactor r;
  Writer w(&r, &JoinAll, nullptr);
  w.Hold(1);
  w.Hold(2);
  EXPECT_TRUE(r.writes.empty()) << "Hold wrote";
  w.Flush();
  EXPECT_EQ(r.writes, (std::vector<std::string>{"1+2"}));
  w.Hold(3);
  w.Flush();  // "1+2" is still in flight
  EXPECT_EQ(r.writes.size(), 1u);
  w.Hold(4);
  w.OnWriteDone(true);
  EXPECT_EQ(r.writes, (std::vector<std::string>{"1+2", "3+4"}));
  w.OnWriteDone(true);
  w.Flush();  // nothing held: no write
  EXPECT_EQ(r.writes.size(), 2u);
  w.Hold(5);
  w.Finish(grpc::Status::OK);  // held messages are written before the finish
  EXPECT_FALSE(r.finished);
  w.Hold(6);  // after Finish: dropped
  w.OnWriteDone(true);
  EXPECT_TRUE(r.finished);
  EXPECT_EQ(r.writes, (std::vector<std::string>{"1+2", "3+4", "5"}));
}

TEST(StreamWriterTest, HoldAfterAFailedWriteIsDropped) {
  FakeReactor r;
  int broken = 0;
  Writer w(&r, &JoinAll, [&] { broken++; });
  w.Send(1);
  w.OnWriteDone(false);
  EXPECT_EQ(broken, 1);
  w.Hold(2);
  w.Flush();
  EXPECT_EQ(r.writes, (std::vector<std::string>{"1"}));
}

}  // namespace
}  // namespace errand::service
