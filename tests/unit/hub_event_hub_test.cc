#include "hub/event_hub.h"

#include <gtest/gtest.h>

#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/thread_pool.hpp>
#include <cstdint>
#include <memory>
#include <vector>

#include "commit/commit_pipeline.h"
#include "store/job_store.h"
#include "support/test_support.h"

namespace errand::hub {
namespace {

v1::Event JobEvent(uint64_t seq) {
  v1::Event ev;
  ev.set_seq(seq);
  ev.set_type(v1::EVENT_TYPE_ENQUEUED);
  ev.set_job_id("job-" + std::to_string(seq));
  return ev;
}

std::vector<v1::Event> Events(uint64_t first, uint64_t last) {
  std::vector<v1::Event> out;
  for (uint64_t s = first; s <= last; ++s) out.push_back(JobEvent(s));
  return out;
}

class EventHubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store::JobStore::Options options;
    options.path = dir_.path() + "/data";
    auto store = store::JobStore::Open(options);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    pipeline_ = std::make_unique<commit::CommitPipeline>(
        store_.get(), commit::CommitPipeline::Options{},
        [this](std::function<void()> fn) { asio::post(core_, std::move(fn)); }, 0);
    hub_ = std::make_unique<EventHub>(core_, readers_, store_.get(), pipeline_.get(),
                                      EventHub::Options{}, /*head_seq=*/0);
  }

  // A subscriber from "now" that records the sequence numbers it is sent.
  void Subscribe(std::vector<uint64_t>* got) {
    Sink sink;
    sink.send = [this, got](const EventRef& ev) {
      got->push_back(ev->event().seq());
      asio::post(core_, [this] { hub_->WriteDone(id_); });
      return false;
    };
    sink.end = [](const absl::Status&) {};
    auto id = hub_->Subscribe(Filter{}, Start{}, std::move(sink));
    ASSERT_TRUE(id.ok()) << id.status();
    id_ = *id;
  }

  void Drain() {
    core_.restart();
    core_.poll();
  }

  testing::TempDir dir_;
  asio::io_context core_;
  asio::thread_pool readers_{1};
  std::unique_ptr<store::JobStore> store_;
  std::unique_ptr<commit::CommitPipeline> pipeline_;
  std::unique_ptr<EventHub> hub_;
  uint64_t id_ = 0;
};

// The commit pipeline acknowledges an async write before an earlier sync
// write's fsync, so batches can arrive out of order: the hub holds a batch
// until everything before it is out.
TEST_F(EventHubTest, OutOfOrderBatchesAreSentInSequenceOrder) {
  std::vector<uint64_t> got;
  Subscribe(&got);
  hub_->Publish(Events(4, 5));
  hub_->Publish(Events(3, 3));
  Drain();
  EXPECT_TRUE(got.empty());
  EXPECT_EQ(hub_->head_seq(), 0u) << "head must only cover published events";
  hub_->Publish(Events(1, 2));
  Drain();
  EXPECT_EQ(got, (std::vector<uint64_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(hub_->head_seq(), 5u);
  hub_->Publish(Events(6, 6));
  Drain();
  EXPECT_EQ(got.back(), 6u);
  readers_.join();
}

TEST_F(EventHubTest, SubscriberJoiningWhileABatchIsHeldGetsItInOrder) {
  hub_->Publish(Events(1, 1));
  hub_->Publish(Events(3, 3));  // held: 2 is not out yet
  std::vector<uint64_t> got;
  Subscribe(&got);  // starts after head 1
  hub_->Publish(Events(2, 2));
  Drain();
  EXPECT_EQ(got, (std::vector<uint64_t>{2, 3}));
  readers_.join();
}

// Every subscriber a batch goes to gets the same event object: the hub
// copies no event per subscriber.
TEST_F(EventHubTest, SubscribersShareOneObjectPerEvent) {
  std::vector<EventRef> a, b;
  for (auto* got : {&a, &b}) {
    Sink sink;
    sink.send = [got](const EventRef& ev) {
      got->push_back(ev);
      return true;
    };
    sink.end = [](const absl::Status&) {};
    ASSERT_TRUE(hub_->Subscribe(Filter{}, Start{}, std::move(sink)).ok());
  }
  hub_->Publish(Events(1, 2));
  Drain();
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(a[0].get(), b[0].get());
  EXPECT_EQ(a[1].get(), b[1].get());
  EXPECT_EQ(a[1]->event().seq(), 2u);
  // The serialization is made once and shared as well.
  EXPECT_EQ(a[0]->Serialized().begin(), b[0]->Serialized().begin());
  v1::Event parsed;
  ASSERT_TRUE(parsed.ParseFromArray(a[0]->Serialized().begin(),
                                    static_cast<int>(a[0]->Serialized().size())));
  EXPECT_EQ(parsed.SerializeAsString(), JobEvent(1).SerializeAsString());
  readers_.join();
}

// A sink that queues events itself (true: room for more) gets them as they
// come, without a WriteDone each; once it says it is full (false), the hub
// holds the rest in its buffer until WriteDone, then goes on in order.
TEST_F(EventHubTest, SinkWithRoomTakesEventsAtOnceAFullOneWaitsForWriteDone) {
  std::vector<uint64_t> got;
  size_t room = 3;  // events the sink takes before it says it is full
  Sink sink;
  sink.send = [&](const EventRef& ev) {
    got.push_back(ev->event().seq());
    return got.size() < room;
  };
  sink.end = [](const absl::Status&) {};
  auto id = hub_->Subscribe(Filter{}, Start{}, std::move(sink));
  ASSERT_TRUE(id.ok()) << id.status();
  hub_->Publish(Events(1, 2));
  Drain();
  EXPECT_EQ(got, (std::vector<uint64_t>{1, 2}));  // no WriteDone needed
  hub_->Publish(Events(3, 6));
  Drain();
  EXPECT_EQ(got, (std::vector<uint64_t>{1, 2, 3})) << "full after 3: the hub must wait";
  room = 100;
  hub_->WriteDone(*id);
  EXPECT_EQ(got, (std::vector<uint64_t>{1, 2, 3, 4, 5, 6}));
  hub_->Publish(Events(7, 7));
  EXPECT_EQ(got.back(), 7u);
  EXPECT_EQ(hub_->stats().max_lag, 0u);
  readers_.join();
}

// Subscribers with different filters each get exactly their events, from
// the same published batch.
TEST_F(EventHubTest, EachFilterGetsExactlyItsEvents) {
  auto event = [](uint64_t seq, const std::string& queue, v1::EventType type) {
    v1::Event ev;
    ev.set_seq(seq);
    ev.set_type(type);
    ev.set_queue(queue);
    ev.set_job_id("job-" + std::to_string(seq));
    return ev;
  };
  std::vector<v1::Event> batch = {
      event(1, "a", v1::EVENT_TYPE_ENQUEUED), event(2, "b", v1::EVENT_TYPE_ENQUEUED),
      event(3, "a", v1::EVENT_TYPE_SUCCEEDED), event(4, "b", v1::EVENT_TYPE_SUCCEEDED)};
  v1::Event msg;
  msg.set_seq(5);
  msg.set_type(v1::EVENT_TYPE_MESSAGE);
  msg.set_topic("t");
  batch.push_back(msg);
  struct Case {
    Filter filter;
    std::vector<uint64_t> want;
    std::vector<uint64_t> got;
  };
  std::vector<Case> cases(5);
  cases[0].want = {1, 2, 3, 4, 5};
  cases[1].filter.queues = {"a"};
  cases[1].want = {1, 3};
  cases[2].filter.queues = {"b"};
  cases[2].filter.types = {v1::EVENT_TYPE_SUCCEEDED};
  cases[2].want = {4};
  cases[3].filter.topics = {"t"};
  cases[3].want = {5};
  cases[4].filter.job_ids = {"job-2", "job-3"};
  cases[4].want = {2, 3};
  for (Case& c : cases) {
    Sink sink;
    sink.send = [&c](const EventRef& ev) {
      c.got.push_back(ev->event().seq());
      return true;
    };
    sink.end = [](const absl::Status&) {};
    ASSERT_TRUE(hub_->Subscribe(c.filter, Start{}, std::move(sink)).ok());
  }
  hub_->Publish(batch);
  Drain();
  for (size_t i = 0; i < cases.size(); ++i) EXPECT_EQ(cases[i].got, cases[i].want) << "case " << i;
  readers_.join();
}

}  // namespace
}  // namespace errand::hub
