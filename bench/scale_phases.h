#pragma once

// errand-bench's opt-in scale phases. Each starts a broker of its own
// (--spawn-broker) on 127.0.0.1 with a temp data dir, is bounded by
// --phase-timeout, and reports its figures as " key=value" fields in
// PhaseResult::extra. See docs/performance.md.

#include "bench_support.h"

namespace errand_bench {

// --scale-n READY jobs (EnqueueBatch of 1,000 from 4 threads), the broker's
// VmRSS/VmHWM, then --restart-signal and a restart on the same data dir: the
// time from exec to the first lease served, and the jobs recovered.
PhaseResult RunScaleReady();

// --subscribers Events.Subscribe streams over --scale-channels connections
// while one worker completes --fanout-jobs jobs at --fanout-rate/s; latency =
// completion ack -> each subscriber's SUCCEEDED event.
PhaseResult RunScaleFanout();

// --waiters concurrent WaitJob long polls (callback API): the broker's RSS
// growth while they wait, and each answers done once its job completes;
// latency = completion ack -> answer.
PhaseResult RunScaleWaiters();

}  // namespace errand_bench
