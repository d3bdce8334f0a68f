// Follows the events of a queue from the oldest retained one and prints
// them; exits after COUNT events. Reconnects by itself if the broker goes
// away, without missing or repeating an event.
//
//   errand_example_subscriber [ADDRESS] [QUEUE] [COUNT]

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "errand/client.h"
#include "errand/subscription.h"

int main(int argc, char** argv) {
  errand::ClientOptions options;
  options.address = argc > 1 ? argv[1] : "127.0.0.1:7600";
  const std::string queue = argc > 2 ? argv[2] : "examples";
  const int count = argc > 3 ? std::atoi(argv[3]) : 10;

  auto client = errand::Client::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "connect: %s\n", client.status().ToString().c_str());
    return 1;
  }
  std::atomic<int> seen{0};
  errand::SubscriptionOptions so;
  so.queues = {queue};
  so.start = errand::SubscriptionOptions::Start::kOldest;
  auto sub = errand::Subscription::Start(
      **client, so,
      [&](const errand::v1::Event& e) {
        if (seen >= count) return;  // enough: main() unsubscribes
        std::printf("%llu %s job=%s\n", static_cast<unsigned long long>(e.seq()),
                    errand::v1::EventType_Name(e.type()).c_str(), e.job_id().c_str());
        ++seen;
      },
      [](const absl::Status& error) {
        std::fprintf(stderr, "subscription stopped: %s\n", error.ToString().c_str());
      });
  if (!sub.ok()) return 1;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (seen < count && !(*sub)->done() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  sub->reset();  // unsubscribes
  return seen >= count ? 0 : 2;
}
