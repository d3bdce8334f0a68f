// ThreadSanitizer builds only: the annotation files (tools/tsan/*.cc)
// define library entry points in the executable and call the library's own
// definition, found here.
#pragma once

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>

namespace errand::tsan {

// The next definition of `name` after the executable's (the library's), as
// `Fn`. Aborts naming `name` when there is none: the annotations were
// written for another version of the library.
template <typename Fn>
Fn Real(const char* name) {
  void* p = dlsym(RTLD_NEXT, name);
  if (p == nullptr) {
    std::fprintf(stderr, "tsan annotations: %s not found\n", name);
    std::abort();
  }
  return reinterpret_cast<Fn>(p);
}

}  // namespace errand::tsan
