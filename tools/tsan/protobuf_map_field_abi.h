// ThreadSanitizer builds only (ERRAND_SANITIZE=thread): included first in
// every translation unit (-include, see CMakeLists.txt).
//
// protobuf's map_field.h gives MapFieldBase two extra members (seq1_, seq2_,
// its own race check) when __SANITIZE_THREAD__ is defined. Debian's
// libprotobuf is built without TSan, so its code (MapFieldBase::Destruct,
// the map reflection) and errand's TSan-built code (the generated messages,
// Map's inline functions) would disagree on where arena_ and
// repeated_field_ are: the library reads a pointer from the wrong offset and
// frees or calls through garbage (seen as a SEGV at a small address in
// MapFieldBase::Destruct when a message with a map field, such as a Job's
// headers, is destroyed). This header includes map_field.h once with the
// macro hidden, so every translation unit uses the library's layout; the
// macro is back for everything that follows. libstdc++'s configuration is
// read first, so that it still sees TSan (_GLIBCXX_TSAN).

#include <cstddef>

#pragma push_macro("__SANITIZE_THREAD__")
#undef __SANITIZE_THREAD__
#include <google/protobuf/map_field.h>
#pragma pop_macro("__SANITIZE_THREAD__")
