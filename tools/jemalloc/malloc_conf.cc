// jemalloc's settings for errand-broker and errand-worker, read by jemalloc
// at its first allocation (CMakeLists.txt compiles this file into each
// binary linked with jemalloc). MALLOC_CONF in the environment is read after
// it, so an operator can override any of them.
//
// - narenas:2: two arenas, not four per CPU. The broker's threads are few
//   and mostly take turns in core; more arenas only spread a million jobs'
//   records over more half-used pages (1,000,000 READY jobs: 303 MB of RSS
//   with the default, 280 MB with these settings; glibc: 275 MB).
// - background_thread, dirty_decay_ms:1000, muzzy_decay_ms:0: freed pages
//   go back to the system within a second or so, from jemalloc's own thread,
//   even while the broker is idle (the default keeps them for 10 s, and
//   purges only when something allocates).
// See docs/performance.md ("Allocator") for the figures.
extern "C" {
// NOLINTNEXTLINE: the name jemalloc looks for.
const char* malloc_conf = "narenas:2,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0";
}
