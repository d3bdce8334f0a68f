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
    sink.send = [this, got](const v1::Event& ev) {
      got->push_back(ev.seq());
      asio::post(core_, [this] { hub_->WriteDone(id_); });
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

}  // namespace
}  // namespace errand::hub
