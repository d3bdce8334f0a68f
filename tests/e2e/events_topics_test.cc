// End to end: pub/sub topics. Published messages reach every matching
// subscriber in order; a topic-only subscriber gets no job events and a
// queue-only subscriber no topic messages; bad topics are INVALID_ARGUMENT.

#include <map>

#include "e2e/e2e_support.h"

namespace errand::e2e {
namespace {

class EventsE2ETopics : public BrokerTest {};

TEST_F(EventsE2ETopics, MessagesReachAllMatchingSubscribersInOrder) {
  const uint64_t head = HeadSeq(client());
  std::vector<std::unique_ptr<Client>> cs;
  auto sub = [&](std::vector<std::string> queues, std::vector<std::string> topics) {
    cs.push_back(NewClient());
    return std::make_unique<EventStream>(cs.back()->events.get(),
                                         SubscribeReq(std::move(queues), std::move(topics), head));
  };
  auto t1a = sub({}, {"news.t1"});
  auto t1b = sub({}, {"news.t1"});
  auto both = sub({}, {"news.t1", "news.t2"});
  auto t2 = sub({}, {"news.t2"});
  auto queue_only = sub({"topics-q"}, {});
  auto mixed = sub({"topics-q"}, {"news.t2"});
  v1::SubscribeRequest msg_only = SubscribeReq({}, {"news.t1"}, head);
  msg_only.add_types(v1::EVENT_TYPE_MESSAGE);
  cs.push_back(NewClient());
  EventStream typed(cs.back()->events.get(), msg_only);

  // Interleave: a t1 message, a t2 message, a job in topics-q; 40 times.
  constexpr int kRounds = 40;
  std::vector<uint64_t> t1_seqs, t2_seqs;
  std::vector<std::string> job_ids;
  for (int i = 0; i < kRounds; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(10s));
    v1::PublishRequest req;
    req.set_topic("news.t1");
    req.set_payload("one-" + std::to_string(i));
    (*req.mutable_headers())["i"] = std::to_string(i);
    v1::PublishResponse resp;
    grpc::Status s = client().events->Publish(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << Show(s);
    EXPECT_EQ(resp.durability(), v1::DURABILITY_SYNC);
    t1_seqs.push_back(resp.seq());
    t2_seqs.push_back(MustPublish(client(), "news.t2", "two-" + std::to_string(i)));
    job_ids.push_back(client().MustEnqueue(NewJob("topics-q")));
  }
  // A last job: everything before it was published earlier.
  const std::string last_job = client().MustEnqueue(NewJob("topics-q"));
  job_ids.push_back(last_job);
  const uint64_t t1_last = MustPublish(client(), "news.t1", "end");
  t1_seqs.push_back(t1_last);

  auto check_t1 = [&](EventStream& s, const char* who) {
    SCOPED_TRACE(who);
    std::vector<v1::Event> got = s.Take(t1_seqs.size(), 10s);
    ASSERT_EQ(got.size(), t1_seqs.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].type(), v1::EVENT_TYPE_MESSAGE);
      EXPECT_EQ(got[i].topic(), "news.t1");
      EXPECT_EQ(got[i].seq(), t1_seqs[i]);
      if (i < static_cast<size_t>(kRounds)) {
        EXPECT_EQ(got[i].payload(), "one-" + std::to_string(i));
        EXPECT_EQ(got[i].headers().at("i"), std::to_string(i));
      }
      EXPECT_TRUE(got[i].job_id().empty());
    }
    EXPECT_FALSE(s.Next(100ms).has_value());
  };
  check_t1(*t1a, "t1a");
  check_t1(*t1b, "t1b");
  check_t1(typed, "t1 with types=[MESSAGE]");

  {  // Both topics, interleaved in publish order, no job events.
    std::vector<v1::Event> got = both->Take(2 * kRounds + 1, 10s);
    ASSERT_EQ(got.size(), 2u * kRounds + 1);
    for (int i = 0; i < kRounds; ++i) {
      EXPECT_EQ(got[2 * i].seq(), t1_seqs[i]);
      EXPECT_EQ(got[2 * i + 1].seq(), t2_seqs[i]);
      EXPECT_EQ(got[2 * i + 1].payload(), "two-" + std::to_string(i));
    }
    EXPECT_EQ(got.back().seq(), t1_last);
    EXPECT_FALSE(both->Next(100ms).has_value());
  }
  {  // t2 only.
    std::vector<v1::Event> got = t2->Take(kRounds, 10s);
    ASSERT_EQ(got.size(), static_cast<size_t>(kRounds));
    for (int i = 0; i < kRounds; ++i) EXPECT_EQ(got[i].seq(), t2_seqs[i]);
    EXPECT_FALSE(t2->Next(100ms).has_value());
  }
  {  // Queue only: the jobs' events and no message.
    std::vector<v1::Event> got = queue_only->Take(job_ids.size(), 10s);
    ASSERT_EQ(got.size(), job_ids.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].type(), v1::EVENT_TYPE_ENQUEUED);
      EXPECT_EQ(got[i].job_id(), job_ids[i]);
      EXPECT_TRUE(got[i].topic().empty());
    }
    auto extra = queue_only->Next(200ms);
    EXPECT_FALSE(extra.has_value()) << extra->DebugString();
  }
  {  // Queue and t2: both kinds, in global order.
    std::vector<v1::Event> got = mixed->Take(2 * kRounds + 1, 10s);
    ASSERT_EQ(got.size(), 2u * kRounds + 1);
    for (int i = 0; i < kRounds; ++i) {
      EXPECT_EQ(got[2 * i].seq(), t2_seqs[i]);
      EXPECT_EQ(got[2 * i + 1].job_id(), job_ids[i]);
    }
    EXPECT_EQ(got.back().job_id(), last_job);
    EXPECT_FALSE(mixed->Next(100ms).has_value());
  }
}

TEST_F(EventsE2ETopics, FiltersByJobIdsAndTypes) {
  const uint64_t head = HeadSeq(client());
  const std::string a = client().MustEnqueue(NewJob("filter-q"));
  const std::string b = client().MustEnqueue(NewJob("filter-q"));
  const std::string other = client().MustEnqueue(NewJob("filter-other"));
  std::vector<std::unique_ptr<Client>> cs;
  auto sub = [&](v1::SubscribeRequest req) {
    cs.push_back(NewClient());
    return std::make_unique<EventStream>(cs.back()->events.get(), req);
  };
  v1::SubscribeRequest by_id = SubscribeReq({}, {}, head);
  by_id.add_job_ids(a);
  by_id.add_job_ids(other);
  auto ids_sub = sub(by_id);
  v1::SubscribeRequest id_and_queue = SubscribeReq({"filter-q"}, {}, head);
  id_and_queue.add_job_ids(other);  // AND: other is not in filter-q
  id_and_queue.add_job_ids(b);
  auto and_sub = sub(id_and_queue);
  v1::SubscribeRequest done_only = SubscribeReq({"filter-q", "filter-other"}, {}, head);
  done_only.add_types(v1::EVENT_TYPE_SUCCEEDED);
  done_only.add_types(v1::EVENT_TYPE_MESSAGE);  // no topics named: no messages anyway
  auto types_sub = sub(done_only);
  MustPublish(client(), "filter-topic", "noise");

  for (const std::string q : {"filter-q", "filter-q", "filter-other"}) {
    v1::Lease l = client().MustLeaseOne(q);
    ASSERT_TRUE(client().Complete(l.job().id(), l.lease_token(), "r").ok());
  }
  auto types_of = [](const std::vector<v1::Event>& evs, const std::string& id) {
    std::vector<v1::EventType> t;
    for (const auto& e : evs) {
      if (e.job_id() == id) t.push_back(e.type());
    }
    return t;
  };
  const std::vector<v1::EventType> full = {v1::EVENT_TYPE_ENQUEUED, v1::EVENT_TYPE_LEASED,
                                           v1::EVENT_TYPE_SUCCEEDED};
  std::vector<v1::Event> got = ids_sub->Take(6, 10s);
  ASSERT_EQ(got.size(), 6u);
  EXPECT_EQ(types_of(got, a), full);
  EXPECT_EQ(types_of(got, other), full);
  EXPECT_FALSE(ids_sub->Next(200ms).has_value());

  got = and_sub->Take(3, 10s);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(types_of(got, b), full);
  EXPECT_FALSE(and_sub->Next(200ms).has_value());

  got = types_sub->Take(3, 10s);
  ASSERT_EQ(got.size(), 3u);
  for (const auto& e : got) EXPECT_EQ(e.type(), v1::EVENT_TYPE_SUCCEEDED) << e.DebugString();
  EXPECT_FALSE(types_sub->Next(200ms).has_value());
}

TEST_F(EventsE2ETopics, InvalidTopicIsInvalidArgument) {
  const std::vector<std::string> bad = {"", "has space", "bad!topic", std::string(129, 't'),
                                        "tab\there"};
  for (const std::string& topic : bad) {
    SCOPED_TRACE("topic '" + topic + "'");
    grpc::ClientContext ctx;
    ctx.set_deadline(testing::In(10s));
    v1::PublishRequest req;
    req.set_topic(topic);
    req.set_payload("x");
    v1::PublishResponse resp;
    grpc::Status s = client().events->Publish(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
    EXPECT_NE(s.error_message().find("topic"), std::string::npos) << Show(s);

    if (topic.empty()) continue;  // an empty list entry is checked below
    auto c = NewClient();
    EventStream sub(c->events.get(), SubscribeReq({}, {"ok.topic", topic}, 0));
    grpc::Status end;
    ASSERT_TRUE(sub.WaitEnd(&end, 5s));
    EXPECT_EQ(end.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(end);
    EXPECT_NE(end.error_message().find("topics[1]"), std::string::npos) << Show(end);
  }
  {
    auto c = NewClient();
    EventStream sub(c->events.get(), SubscribeReq({}, {""}, 0));
    grpc::Status end;
    ASSERT_TRUE(sub.WaitEnd(&end, 5s));
    EXPECT_EQ(end.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(end);
  }
  // The longest valid name and every allowed character work.
  const std::string longest(128, 'a');
  EXPECT_GT(MustPublish(client(), longest, "x"), 0u);
  EXPECT_GT(MustPublish(client(), "A-z.0_9:/x", "x"), 0u);

  // Oversized payload.
  grpc::ClientContext ctx;
  ctx.set_deadline(testing::In(10s));
  v1::PublishRequest req;
  req.set_topic("ok.topic");
  req.set_payload(std::string((1 << 20) + 1, 'p'));
  v1::PublishResponse resp;
  grpc::Status s = client().events->Publish(&ctx, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Show(s);
  EXPECT_NE(s.error_message().find("payload"), std::string::npos) << Show(s);
}

}  // namespace
}  // namespace errand::e2e
