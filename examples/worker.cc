// Processes jobs with a handler: upper-cases the payload. Stops after
// MAX_JOBS jobs (0: on Ctrl-C only... here: never; give a number).
//
//   errand_example_worker [ADDRESS] [QUEUE] [MAX_JOBS]

#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "errand/client.h"
#include "errand/worker.h"

int main(int argc, char** argv) {
  errand::ClientOptions options;
  options.address = argc > 1 ? argv[1] : "127.0.0.1:7600";
  const std::string queue = argc > 2 ? argv[2] : "examples";
  const int max_jobs = argc > 3 ? std::atoi(argv[3]) : 10;

  auto client = errand::Client::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "connect: %s\n", client.status().ToString().c_str());
    return 1;
  }
  std::atomic<int> handled{0};
  errand::WorkerOptions wo;
  wo.queues = {queue};
  wo.concurrency = 4;
  wo.poll_wait = std::chrono::milliseconds(500);
  auto worker = errand::Worker::Start(
      **client, wo,
      [&](const errand::v1::Job& job, errand::JobContext& ctx) -> absl::StatusOr<std::string> {
        ctx.SetProgress(0.5, "upper-casing");
        if (ctx.cancelled()) return absl::CancelledError("cancelled");
        std::string out = job.payload();
        for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        ++handled;
        return out;
      });
  if (!worker.ok()) {
    std::fprintf(stderr, "worker: %s\n", worker.status().ToString().c_str());
    return 1;
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (handled < max_jobs && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  (*worker)->Stop();
  std::printf("handled %d jobs\n", handled.load());
  return handled >= max_jobs ? 0 : 2;
}
