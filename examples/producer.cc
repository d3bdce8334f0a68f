// Enqueues jobs from several threads over one Client (one shared stream),
// in the three styles, then waits for the last one to finish.
//
//   errand_example_producer [ADDRESS] [QUEUE] [COUNT]

#include <cstdio>
#include <cstdlib>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "errand/client.h"

int main(int argc, char** argv) {
  errand::ClientOptions options;
  options.address = argc > 1 ? argv[1] : "127.0.0.1:7600";
  const std::string queue = argc > 2 ? argv[2] : "examples";
  const int count = argc > 3 ? std::atoi(argv[3]) : 30;

  auto client = errand::Client::Connect(options);
  if (!client.ok()) {
    std::fprintf(stderr, "connect: %s\n", client.status().ToString().c_str());
    return 1;
  }
  errand::v1::EnqueueRequest job;
  job.set_queue(queue);

  // Blocking, from three threads at once: all share one stream.
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < count; i += 3) {
        errand::v1::EnqueueRequest j = job;
        j.set_payload("job " + std::to_string(i));
        auto id = (*client)->Enqueue(j);
        if (!id.ok()) std::fprintf(stderr, "enqueue: %s\n", id.status().ToString().c_str());
      }
    });
  }
  for (auto& t : threads) t.join();

  // Future style.
  job.set_payload("last");
  auto answer = (*client)->EnqueueFuture(job).get();
  if (!answer.ok()) return 1;
  std::printf("enqueued %d jobs; last is %s\n", count + 1, answer->job_id().c_str());

  // Callback style: the callback runs on a library thread.
  std::promise<void> done;
  (*client)->EnqueueAsync(job, [&](absl::StatusOr<errand::v1::EnqueueResponse> r) {
    std::printf("callback: %s\n", r.ok() ? r->job_id().c_str() : r.status().ToString().c_str());
    done.set_value();
  });
  done.get_future().wait();

  // Wait for the last job to be processed by some worker.
  auto finished = (*client)->Wait(answer->job_id(), std::chrono::seconds(30));
  if (!finished.ok()) {
    std::fprintf(stderr, "wait: %s\n", finished.status().ToString().c_str());
    return 2;
  }
  std::printf("job %s finished: %s result=%s\n", finished->id().c_str(),
              errand::v1::JobState_Name(finished->state()).c_str(), finished->result().c_str());
  return 0;
}
