#pragma once

#include <pthread.h>

namespace errand::util {

// Names the calling thread (shown by top -H, perf, gdb; at most 15
// characters are kept).
inline void SetThreadName(const char* name) { pthread_setname_np(pthread_self(), name); }

}  // namespace errand::util
