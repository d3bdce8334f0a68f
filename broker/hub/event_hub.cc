#include "hub/event_hub.h"

#include <grpc/slice.h>
#include <rocksdb/db.h>
#include <spdlog/spdlog.h>

#include <asio/post.hpp>
#include <algorithm>

#include "store/keys.h"
#include "store/records.h"

namespace errand::hub {
namespace {

bool HasAny(const std::set<std::string>& set, const std::string& v) {
  return set.empty() || set.count(v) > 0;
}

struct ReadResult {
  absl::Status status;
  std::vector<EventRef> events;
  uint64_t last_scanned = 0;
  bool gap = false;
  uint64_t first_seen = 0;
};

// Reads events after `cursor` from the log. Runs on a reader thread.
ReadResult ReadLog(store::JobStore* store, const Filter& filter, uint64_t cursor, size_t max_events,
                   size_t max_scan) {
  ReadResult r;
  r.last_scanned = cursor;
  std::unique_ptr<rocksdb::Iterator> it(
      store->db()->NewIterator(rocksdb::ReadOptions(), store->events_cf()));
  size_t scanned = 0;
  for (it->Seek(store::EncodeBE64(cursor + 1)); it->Valid(); it->Next()) {
    if (it->key().size() != 8) {
      r.status = absl::DataLossError("malformed event key");
      return r;
    }
    uint64_t seq = store::DecodeBE64(it->key().ToStringView());
    if (scanned == 0) {
      r.first_seen = seq;
      if (seq != cursor + 1) {
        r.gap = true;
        return r;
      }
    } else if (seq != r.last_scanned + 1) {
      r.gap = true;
      return r;
    }
    auto decoded = store::DecodeEvent(it->key().ToStringView(), it->value().ToStringView());
    if (!decoded.ok()) {
      r.status = decoded.status();
      return r;
    }
    v1::Event& ev = *decoded;
    r.last_scanned = seq;
    if (filter.Matches(ev)) r.events.push_back(std::make_shared<const SharedEvent>(std::move(ev)));
    if (++scanned >= max_scan || r.events.size() >= max_events) break;
  }
  if (!it->status().ok()) r.status = absl::InternalError("reading events: " + it->status().ToString());
  return r;
}

}  // namespace

SharedEvent::SharedEvent(v1::Event event) : event_(std::move(event)) {
  const size_t size = event_.ByteSizeLong();
  grpc_slice s = grpc_slice_malloc(size);
  event_.SerializeWithCachedSizesToArray(GRPC_SLICE_START_PTR(s));
  bytes_ = grpc::Slice(s, grpc::Slice::STEAL_REF);
}

bool Filter::Matches(const v1::Event& e) const {
  if (!types.empty() && types.count(static_cast<int>(e.type())) == 0) return false;
  if (e.type() == v1::EVENT_TYPE_MESSAGE) {
    if (topics.empty() && (!queues.empty() || !job_ids.empty())) return false;
    return HasAny(topics, e.topic());
  }
  if (!topics.empty() && queues.empty() && job_ids.empty()) return false;
  return HasAny(queues, e.queue()) && HasAny(job_ids, e.job_id());
}

EventHub::EventHub(asio::io_context& core, asio::thread_pool& readers, store::JobStore* store,
                   const commit::CommitPipeline* pipeline, Options options, uint64_t head_seq)
    : core_(core),
      readers_(readers),
      store_(store),
      pipeline_(pipeline),
      options_(options),
      head_seq_(head_seq) {}

void EventHub::Publish(const std::vector<v1::Event>& events) {
  if (events.empty()) return;
  if (events.front().seq() > head_seq_ + 1) {
    // An earlier write is still being fsynced: hold these until it is out.
    pending_.emplace(events.front().seq(), events);
    return;
  }
  FanOut(events);
  while (!pending_.empty() && pending_.begin()->first <= head_seq_ + 1) {
    auto node = pending_.extract(pending_.begin());
    FanOut(node.mapped());
  }
}

void EventHub::FanOut(const std::vector<v1::Event>& events) {
  head_seq_ = std::max(head_seq_, events.back().seq());
  if (sessions_.empty()) return;
  // Each event is copied once, when a first subscriber wants it; everyone
  // it goes to shares that copy.
  std::vector<EventRef> shared(events.size());
  std::vector<uint64_t> ids;
  ids.reserve(sessions_.size());
  for (auto& [id, s] : sessions_) ids.push_back(id);
  for (uint64_t id : ids) {
    auto it = sessions_.find(id);
    if (it == sessions_.end()) continue;
    Session& s = *it->second;
    if (!s.live) continue;
    for (size_t i = 0; i < events.size(); ++i) {
      const v1::Event& ev = events[i];
      if (ev.seq() <= s.cursor) continue;
      if (s.filter.Matches(ev)) {
        if (s.buffer.size() >= options_.buffer) {
          // Too slow: the rest comes from disk once the buffer drains.
          s.live = false;
          break;
        }
        if (shared[i] == nullptr) shared[i] = std::make_shared<const SharedEvent>(ev);
        s.buffer.push_back(shared[i]);
      }
      s.cursor = ev.seq();
    }
    Pump(s);
  }
}

absl::StatusOr<uint64_t> EventHub::Subscribe(Filter filter, Start start, Sink sink, bool hold) {
  if (stopping_) return absl::UnavailableError("broker is shutting down");
  if (sessions_.size() >= options_.max_subscribers) {
    return absl::ResourceExhaustedError("too many subscribers (limit " +
                                        std::to_string(options_.max_subscribers) + ")");
  }
  const uint64_t first = pipeline_->first_event_seq();
  auto s = std::make_unique<Session>();
  s->filter = std::move(filter);
  s->sink = std::move(sink);
  s->in_flight = hold;
  switch (start.kind) {
    case Start::kNow:
      s->cursor = head_seq_;
      break;
    case Start::kOldest:
      s->cursor = first > 0 ? first - 1 : head_seq_;
      s->live = s->cursor >= head_seq_;
      break;
    case Start::kAfterSeq:
      if (start.after_seq > head_seq_) {
        return absl::OutOfRangeError("after_seq " + std::to_string(start.after_seq) +
                                     " is ahead of the event log head " +
                                     std::to_string(head_seq_));
      }
      if (first > 0 && start.after_seq + 1 < first) {
        return absl::OutOfRangeError(
            "after_seq " + std::to_string(start.after_seq) +
            " is older than the retained event log; the oldest retained seq is " +
            std::to_string(first));
      }
      s->cursor = start.after_seq;
      s->live = s->cursor >= head_seq_;
      break;
  }
  const uint64_t id = ++next_id_;
  s->id = id;
  Session& ref = *s;
  sessions_.emplace(id, std::move(s));
  Pump(ref);
  return id;
}

void EventHub::WriteDone(uint64_t id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  it->second->in_flight = false;
  Pump(*it->second);
}

void EventHub::Unsubscribe(uint64_t id) { sessions_.erase(id); }

void EventHub::End(uint64_t id, const absl::Status& status) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  Sink sink = std::move(it->second->sink);
  sessions_.erase(it);
  sink.end(status);
}

void EventHub::Shutdown(const absl::Status& status) {
  stopping_ = true;
  std::vector<uint64_t> ids;
  for (auto& [id, s] : sessions_) ids.push_back(id);
  for (uint64_t id : ids) End(id, status);
}

void EventHub::Pump(Session& s) {
  while (!s.in_flight && !s.buffer.empty()) {
    s.in_flight = true;
    EventRef ev = std::move(s.buffer.front());
    s.buffer.pop_front();
    // A false answer may have ended the session: do not touch `s` then.
    if (!s.sink.send(ev)) return;
    s.in_flight = false;  // the sink took it and has room for the next
  }
  if (!s.in_flight && !s.live && !s.reading) StartRead(s);
}

void EventHub::StartRead(Session& s) {
  s.reading = true;
  const uint64_t id = s.id;
  asio::post(readers_, [this, id, filter = s.filter, cursor = s.cursor] {
    ReadResult r = ReadLog(store_, filter, cursor, options_.buffer, options_.read_scan);
    auto on_core = [this, id, cursor, r = std::move(r)]() mutable {
      auto it = sessions_.find(id);
      if (it == sessions_.end()) return;
      Session& s = *it->second;
      s.reading = false;
      if (!r.status.ok()) {
        End(id, r.status);
        return;
      }
      if (r.gap) {
        cut_off_++;
        spdlog::warn("subscriber {} cut off: it fell behind the retained event log (next seq {}, "
                     "oldest retained {})",
                     id, cursor + 1, pipeline_->first_event_seq());
        End(id, absl::OutOfRangeError(
                    "subscriber fell behind the retained event log: next seq " +
                    std::to_string(cursor + 1) + " was trimmed; the oldest retained seq is " +
                    std::to_string(pipeline_->first_event_seq())));
        return;
      }
      for (EventRef& ev : r.events) s.buffer.push_back(std::move(ev));
      s.cursor = std::max(s.cursor, r.last_scanned);
      // Every event up to head_seq_ was committed before it was published,
      // so a read that reached it has seen all of them.
      if (s.cursor >= head_seq_) s.live = true;
      Pump(s);
    };
    if (options_.post_to_core) {
      options_.post_to_core(std::move(on_core));
    } else {
      asio::post(core_, std::move(on_core));
    }
  });
}

EventHub::Stats EventHub::stats() const {
  Stats st;
  st.subscribers = sessions_.size();
  st.cut_off = cut_off_;
  for (const auto& [id, s] : sessions_) {
    if (!s->live) st.catching_up++;
    uint64_t behind = head_seq_ > s->cursor ? head_seq_ - s->cursor : 0;
    uint64_t lag = behind + s->buffer.size();
    st.max_lag = std::max(st.max_lag, lag);
    st.total_lag += lag;
  }
  return st;
}

}  // namespace errand::hub
