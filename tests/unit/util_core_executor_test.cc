#include "util/core_executor.h"

#include <gtest/gtest.h>

#include <asio/executor_work_guard.hpp>
#include <asio/steady_timer.hpp>
#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace errand::util {
namespace {

// An io_context run by a thread of its own: the core thread.
class CoreThread {
 public:
  CoreThread() : work_(io_.get_executor()), thread_([this] {
    id_promise_.set_value(std::this_thread::get_id());
    io_.run();
  }) {
    id_ = id_promise_.get_future().get();
  }
  ~CoreThread() {
    work_.reset();
    thread_.join();
  }
  asio::io_context& io() { return io_; }
  std::thread::id id() const { return id_; }

 private:
  asio::io_context io_{1};
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::promise<std::thread::id> id_promise_;
  std::thread::id id_;
  std::thread thread_;
};

TEST(CoreExecutorTest, RunsInPlaceWhenIdle) {
  CoreThread core;
  CoreExecutor exec(core.io());
  std::thread::id ran_on;
  bool in_core = false;
  exec.Run([&] {
    ran_on = std::this_thread::get_id();
    in_core = CoreExecutor::InCore();
  });
  EXPECT_EQ(ran_on, std::this_thread::get_id());
  EXPECT_TRUE(in_core);
  EXPECT_FALSE(CoreExecutor::InCore());
  EXPECT_EQ(exec.counts().in_place, 1u);
  EXPECT_EQ(exec.counts().core_thread, 0u);
}

TEST(CoreExecutorTest, ClosuresHandedInFromCoreRunAfterTheCurrentOneNeverNested) {
  CoreThread core;
  CoreExecutor exec(core.io());
  std::vector<int> order;
  exec.Run([&] {
    order.push_back(1);
    exec.Run([&] {
      order.push_back(3);
      exec.Run([&] { order.push_back(5); });
      order.push_back(4);
    });
    order.push_back(2);
  });
  // All ran before Run returned, in order, on this thread.
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4, 5}));
  EXPECT_EQ(exec.counts().in_place, 3u);
}

// A hook runs right after the closure that added it, before the next
// closure; hooks added by hooks run too. Outside core a hook runs at once.
TEST(CoreExecutorTest, AfterThisClosureRunsBeforeTheNextClosure) {
  CoreThread core;
  CoreExecutor exec(core.io());
  std::vector<std::string> order;
  exec.Run([&] {
    order.push_back("a");
    exec.Run([&] { order.push_back("b"); });
    CoreExecutor::AfterThisClosure([&] {
      order.push_back("a-hook");
      EXPECT_TRUE(CoreExecutor::InCore());
      CoreExecutor::AfterThisClosure([&] { order.push_back("a-hook-hook"); });
    });
    CoreExecutor::AfterThisClosure([&] { order.push_back("a-hook2"); });
    order.push_back("a-end");
  });
  EXPECT_EQ(order, (std::vector<std::string>{"a", "a-end", "a-hook", "a-hook2", "a-hook-hook",
                                             "b"}));
  bool ran = false;
  CoreExecutor::AfterThisClosure([&] { ran = true; });
  EXPECT_TRUE(ran) << "outside core a hook runs at once";
}

// On the core thread too (Post), and a hook of one closure never runs
// after another's.
TEST(CoreExecutorTest, AfterThisClosureOnTheCoreThread) {
  CoreThread core;
  CoreExecutor exec(core.io());
  std::vector<std::string> order;
  std::promise<void> done;
  exec.Post([&] {
    order.push_back("x");
    CoreExecutor::AfterThisClosure([&] { order.push_back("x-hook"); });
  });
  exec.Post([&] {
    order.push_back("y");
    done.set_value();
  });
  done.get_future().wait();
  // "y" ran last; its closure added no hook.
  EXPECT_EQ(order, (std::vector<std::string>{"x", "x-hook", "y"}));
}

TEST(CoreExecutorTest, PostNeverRunsInPlace) {
  CoreThread core;
  CoreExecutor exec(core.io());
  std::promise<std::thread::id> ran_on;
  exec.Post([&] { ran_on.set_value(std::this_thread::get_id()); });
  EXPECT_EQ(ran_on.get_future().get(), core.id());
}

TEST(CoreExecutorTest, RunQueuesBehindCoreBusyOnAnotherThread) {
  CoreThread core;
  CoreExecutor exec(core.io());
  std::promise<void> entered, release;
  auto release_f = release.get_future().share();
  std::vector<int> order;  // only touched in core
  exec.Post([&] {
    entered.set_value();
    release_f.wait();
    order.push_back(1);
  });
  entered.get_future().wait();
  // Core is busy on the core thread: these queue, in order, and Run returns
  // without running them.
  std::thread::id second_ran_on;
  exec.Run([&] {
    order.push_back(2);
    second_ran_on = std::this_thread::get_id();
  });
  exec.Run([&] { order.push_back(3); });
  std::promise<std::vector<int>> done;
  exec.Post([&] { done.set_value(order); });
  release.set_value();
  EXPECT_EQ(done.get_future().get(), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(second_ran_on, core.id());
  EXPECT_EQ(exec.counts().in_place, 0u);
}

TEST(CoreExecutorTest, InPlaceRunHandsTheRestToTheCoreThreadAfterItsLimit) {
  CoreThread core;
  CoreExecutor exec(core.io(), /*max_in_place=*/4);
  std::vector<std::thread::id> ran_on;  // only touched in core
  std::promise<void> done;
  exec.Run([&] {
    for (int i = 0; i < 9; ++i) {
      exec.Run([&, i] {
        ran_on.push_back(std::this_thread::get_id());
        if (i == 8) done.set_value();
      });
    }
  });
  done.get_future().wait();
  ASSERT_EQ(ran_on.size(), 9u);
  // This thread ran the first closure and three of the queued ones; the core
  // thread ran the rest.
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(ran_on[i], std::this_thread::get_id()) << i;
  for (size_t i = 3; i < 9; ++i) EXPECT_EQ(ran_on[i], core.id()) << i;
  EXPECT_EQ(exec.counts().in_place, 4u);
  EXPECT_EQ(exec.counts().core_thread, 6u);
}

TEST(CoreExecutorTest, CoreThreadLetsTimersInBetweenLongRuns) {
  CoreThread core;
  CoreExecutor exec(core.io(), /*max_in_place=*/2);
  // A closure that keeps core busy by re-queueing itself until the timer,
  // which can only expire between closures, has fired.
  std::atomic<bool> fired{false};
  asio::steady_timer timer(core.io(), std::chrono::milliseconds(5));
  timer.async_wait([&](const std::error_code& ec) {
    if (!ec) fired = true;
  });
  std::promise<int> done;
  auto spins = std::make_shared<int>(0);
  std::function<void()> spin = [&, spins] {
    ++*spins;
    if (fired || *spins > 1'000'000) {
      done.set_value(*spins);
      return;
    }
    exec.Post(spin);
  };
  exec.Post(spin);
  auto f = done.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_LE(f.get(), 1'000'000);
  EXPECT_TRUE(fired);
}

TEST(CoreExecutorTest, AfterCloseInPlaceEverythingRunsOnTheCoreThread) {
  CoreThread core;
  CoreExecutor exec(core.io());
  exec.CloseInPlace();
  std::promise<std::thread::id> ran_on;
  exec.Run([&] { ran_on.set_value(std::this_thread::get_id()); });
  EXPECT_EQ(ran_on.get_future().get(), core.id());
  EXPECT_EQ(exec.counts().in_place, 0u);
}

TEST(CoreExecutorTest, ManyThreadsNeverRunTwoClosuresAtOnceAndKeepEachThreadsOrder) {
  CoreThread core;
  CoreExecutor exec(core.io(), /*max_in_place=*/8);
  constexpr int kThreads = 6;
  constexpr int kEach = 3000;
  // Plain ints: only core touches them; ThreadSanitizer flags a closure
  // that ran beside another.
  int inside = 0;
  int overlaps = 0;
  std::vector<int> last(kThreads, -1);
  int out_of_order = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        auto body = [&, t, i] {
          if (++inside != 1) ++overlaps;
          if (last[t] != i - 1) ++out_of_order;
          last[t] = i;
          --inside;
        };
        if (i % 3 == 0) {
          exec.Post(body);
        } else {
          exec.Run(body);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  std::promise<void> done;
  exec.Post([&] { done.set_value(); });
  done.get_future().wait();
  std::promise<std::vector<int>> result;
  exec.Post([&] { result.set_value({overlaps, out_of_order}); });
  auto r = result.get_future().get();
  EXPECT_EQ(r[0], 0);
  EXPECT_EQ(r[1], 0);
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(last[t], kEach - 1);
  EXPECT_EQ(exec.counts().in_place + exec.counts().core_thread, size_t{kThreads} * kEach + 2);
}

}  // namespace
}  // namespace errand::util
