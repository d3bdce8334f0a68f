// ThreadSanitizer builds only (ERRAND_SANITIZE=thread): tells TSan the
// orderings gRPC's callback API promises, which happen inside Debian's
// uninstrumented libgrpc where TSan cannot see them.
//
// A reaction (OnReadDone, OnWriteDone, OnDone, OnCancel, a client call's
// done callback, a method handler for a new call) happens after what set it
// up: the message written before StartWrite is read by the serializer, the
// request a reactor hands to StartRead is filled on the completion thread,
// the response written before Finish is freed after OnDone, the reactor
// built on one thread is deleted by OnDone on another. Without the edges
// every such pair is reported as a race (thousands per e2e run).
//
// The hand-overs all pass through a few libgrpc entry points, defined here
// in the executable (the dynamic linker binds the calls of errand's code and
// of libgrpc++ to these definitions, which call libgrpc's own):
//   grpc_call_start_batch, grpc_server_request_call,
//   grpc_server_request_registered_call: the tag is a functor the core runs
//     on completion;
//   grpc_core::Executor::Run: a closure libgrpc++ schedules (OnDone and
//     OnCancel when they are not run inline);
//   grpc_completion_queue_next/pluck: the sync and async API's completion
//     (released at grpc_call_start_batch, acquired when the event is taken);
//   ServerCallbackCall::ScheduleOnDone and CallOnCancel (libgrpc++): see
//     there.
// Each releases the tag (the closure's argument) and points the functor (the
// closure's callback) at a trampoline that acquires it before running the
// original: exactly the edge gRPC guarantees. Only functors and closures of
// the executable and libgrpc++ are touched: the completion-queue API's tags
// (objects with a vtable) and libgrpc's own closures are left alone.
//
// The declarations and the closure layout are Debian 12's gRPC 1.51; another
// version makes Real() abort with the missing name.

#include <absl/status/status.h>
#include <grpc/grpc.h>
#include <grpcpp/support/server_callback.h>
#include <link.h>
#include <sanitizer/tsan_interface.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "real_symbol.h"

struct grpc_closure;

namespace grpc_core {
// Declarations matching Debian 12's libgrpc (1.51), for the definition below.
enum class ExecutorType { DEFAULT = 0, RESOLVER, NUM_EXECUTORS };
enum class ExecutorJobType { SHORT = 0, LONG, NUM_JOB_TYPES };
class Executor {
 public:
  static void Run(grpc_closure* closure, absl::Status error, ExecutorType executor_type,
                  ExecutorJobType job_type);
};
}  // namespace grpc_core

namespace {

using errand::tsan::Real;

// The executable code of the executable and of libgrpc++ (where the C++
// API's functors and closures live). A functor's functor_run points there; a
// vtable pointer (the first word of the completion-queue API's tags) never
// does; libgrpc's own closures are left alone.
// Never destroyed: gRPC's threads may still call in while the process exits.
const std::vector<std::pair<uintptr_t, uintptr_t>>& Text() {
  static const auto* ranges = [] {
    auto* out = new std::vector<std::pair<uintptr_t, uintptr_t>>;
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* data) {
          const char* name = info->dlpi_name == nullptr ? "" : info->dlpi_name;
          if (name[0] != '\0' && std::strstr(name, "libgrpc++.so") == nullptr) return 0;
          auto* v = static_cast<std::vector<std::pair<uintptr_t, uintptr_t>>*>(data);
          for (int i = 0; i < info->dlpi_phnum; ++i) {
            const auto& ph = info->dlpi_phdr[i];
            if (ph.p_type != PT_LOAD || (ph.p_flags & PF_X) == 0) continue;
            uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
            v->emplace_back(lo, lo + ph.p_memsz);
          }
          return 0;
        },
        out);
    return out;
  }();
  return *ranges;
}

bool IsText(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  for (const auto& [lo, hi] : Text()) {
    if (a >= lo && a < hi) return true;
  }
  return false;
}

// Trampolines: one per distinct original function (gRPC has a handful:
// CallbackWithSuccessTag::StaticRun, CallbackWithStatusTag::StaticRun, the
// server's request tags, the closures that run OnDone and OnCancel). Each
// acquires what the start released, then runs the original.
constexpr int kSlots = 32;

template <typename Fn>
struct Slots {
  std::atomic<Fn> originals[kSlots];
  std::mutex mu;
  // The slot of `original` (taken if new), or -1 when all are used.
  int For(Fn original) {
    std::lock_guard<std::mutex> lock(mu);
    for (int i = 0; i < kSlots; ++i) {
      Fn o = originals[i].load(std::memory_order_relaxed);
      if (o == original) return i;
      if (o == nullptr) {
        originals[i].store(original, std::memory_order_release);
        return i;
      }
    }
    return -1;
  }
};

using RunFn = void (*)(grpc_completion_queue_functor*, int);
Slots<RunFn> functor_slots;

template <int I>
void FunctorTrampoline(grpc_completion_queue_functor* f, int ok) {
  __tsan_acquire(f);
  functor_slots.originals[I].load(std::memory_order_acquire)(f, ok);
}

using ClosureFn = void (*)(void*, absl::Status);
Slots<ClosureFn> closure_slots;

template <int I>
void ClosureTrampoline(void* arg, absl::Status error) {
  __tsan_acquire(arg);
  closure_slots.originals[I].load(std::memory_order_acquire)(arg, std::move(error));
}

template <int... I>
constexpr std::array<RunFn, sizeof...(I)> FunctorTrampolines(std::integer_sequence<int, I...>) {
  return {&FunctorTrampoline<I>...};
}
template <int... I>
constexpr std::array<ClosureFn, sizeof...(I)> ClosureTrampolines(std::integer_sequence<int, I...>) {
  return {&ClosureTrampoline<I>...};
}
constexpr auto kFunctorTrampolines = FunctorTrampolines(std::make_integer_sequence<int, kSlots>());
constexpr auto kClosureTrampolines = ClosureTrampolines(std::make_integer_sequence<int, kSlots>());

// `tag` is about to be handed to the core, which runs it (if it is a
// functor) on some thread once the operation completes.
void StartingTag(void* tag) {
  if (tag == nullptr) return;
  auto* f = static_cast<grpc_completion_queue_functor*>(tag);
  RunFn run = f->functor_run;
  if (std::find(kFunctorTrampolines.begin(), kFunctorTrampolines.end(), run) !=
      kFunctorTrampolines.end()) {
    __tsan_release(tag);
    return;
  }
  if (!IsText(reinterpret_cast<const void*>(run))) return;  // not a functor
  int slot = functor_slots.For(run);
  if (slot < 0) return;
  f->functor_run = kFunctorTrampolines[slot];
  __tsan_release(tag);
}

// The layout of Debian 12's grpc_closure (src/core/lib/iomgr/closure.h):
// a queue link, then the callback and its argument.
struct ClosureHead {
  void* next;
  ClosureFn cb;
  void* cb_arg;
};

void SchedulingClosure(grpc_closure* closure) {
  auto* c = reinterpret_cast<ClosureHead*>(closure);
  if (c == nullptr || c->cb_arg == nullptr) return;
  ClosureFn cb = c->cb;
  if (std::find(kClosureTrampolines.begin(), kClosureTrampolines.end(), cb) !=
      kClosureTrampolines.end()) {
    __tsan_release(c->cb_arg);
    return;
  }
  if (!IsText(reinterpret_cast<const void*>(cb))) return;
  int slot = closure_slots.For(cb);
  if (slot < 0) return;
  c->cb = kClosureTrampolines[slot];
  __tsan_release(c->cb_arg);
}

}  // namespace

// Operations on a call: reads, writes, Finish, a client call's start and
// status (the C++ API's CallOpSet and the server's completion op).
extern "C" grpc_call_error grpc_call_start_batch(grpc_call* call, const grpc_op* ops,
                                                 size_t nops, void* tag, void* reserved) {
  static const auto real = Real<grpc_call_error (*)(grpc_call*, const grpc_op*, size_t, void*,
                                                    void*)>("grpc_call_start_batch");
  StartingTag(tag);
  // A completion-queue tag (sync and async API) comes back from
  // grpc_completion_queue_next/pluck below.
  if (tag != nullptr) __tsan_release(tag);
  return real(call, ops, nops, tag, reserved);
}

// The sync and async API: the thread that takes an operation's event from
// its completion queue runs after the thread that started it.
extern "C" grpc_event grpc_completion_queue_next(grpc_completion_queue* cq, gpr_timespec deadline,
                                                 void* reserved) {
  static const auto real = Real<grpc_event (*)(grpc_completion_queue*, gpr_timespec, void*)>(
      "grpc_completion_queue_next");
  grpc_event ev = real(cq, deadline, reserved);
  if (ev.type == GRPC_OP_COMPLETE && ev.tag != nullptr) __tsan_acquire(ev.tag);
  return ev;
}

extern "C" grpc_event grpc_completion_queue_pluck(grpc_completion_queue* cq, void* tag,
                                                  gpr_timespec deadline, void* reserved) {
  static const auto real =
      Real<grpc_event (*)(grpc_completion_queue*, void*, gpr_timespec, void*)>(
          "grpc_completion_queue_pluck");
  grpc_event ev = real(cq, tag, deadline, reserved);
  if (ev.type == GRPC_OP_COMPLETE && ev.tag != nullptr) __tsan_acquire(ev.tag);
  return ev;
}

// The callback server's requests for new calls: the request object prepared
// on one thread is run on the thread that gets the call.
extern "C" grpc_call_error grpc_server_request_call(
    grpc_server* server, grpc_call** call, grpc_call_details* details,
    grpc_metadata_array* request_metadata, grpc_completion_queue* cq_bound_to_call,
    grpc_completion_queue* cq_for_notification, void* tag_new) {
  static const auto real = Real<grpc_call_error (*)(
      grpc_server*, grpc_call**, grpc_call_details*, grpc_metadata_array*, grpc_completion_queue*,
      grpc_completion_queue*, void*)>("grpc_server_request_call");
  StartingTag(tag_new);
  return real(server, call, details, request_metadata, cq_bound_to_call, cq_for_notification,
              tag_new);
}

extern "C" grpc_call_error grpc_server_request_registered_call(
    grpc_server* server, void* registered_method, grpc_call** call, gpr_timespec* deadline,
    grpc_metadata_array* request_metadata, grpc_byte_buffer** optional_payload,
    grpc_completion_queue* cq_bound_to_call, grpc_completion_queue* cq_for_notification,
    void* tag_new) {
  static const auto real = Real<grpc_call_error (*)(
      grpc_server*, void*, grpc_call**, gpr_timespec*, grpc_metadata_array*, grpc_byte_buffer**,
      grpc_completion_queue*, grpc_completion_queue*, void*)>(
      "grpc_server_request_registered_call");
  StartingTag(tag_new);
  return real(server, registered_method, call, deadline, request_metadata, optional_payload,
              cq_bound_to_call, cq_for_notification, tag_new);
}

// Closures libgrpc++ hands to the executor: a reactor's OnDone and OnCancel
// when they are not run inline.
void grpc_core::Executor::Run(grpc_closure* closure, absl::Status error,
                              ExecutorType executor_type, ExecutorJobType job_type) {
  using Fn = void (*)(grpc_closure*, absl::Status, ExecutorType, ExecutorJobType);
  static const auto real = Real<Fn>(
      "_ZN9grpc_core8Executor3RunEP12grpc_closureN4absl7debian36StatusENS_12ExecutorTypeENS_"
      "15ExecutorJobTypeE");
  SchedulingClosure(closure);
  real(closure, std::move(error), executor_type, job_type);
}

// A server call's OnDone runs once its reference count
// (callbacks_outstanding_) drops to zero, OnCancel once its cancellation
// conditions (on_cancel_conditions_remaining_) do: each decrement is an
// acq_rel fetch_sub, so whoever takes the last one has seen every earlier
// reaction of the call. The decrements made by errand's code (the inline
// MaybeDone after OnWriteDone, Finish, ...) are visible to TSan; the one made
// inside libgrpc++ (the ServerContext's CompletionOp when the call ends or
// is cancelled) is not, so OnDone freeing the call's tags and message
// buffers looked racy with the reactions still leaving them. libgrpc++
// calls ScheduleOnDone and CallOnCancel through its PLT, so these
// definitions see every call: each acquires the counter (the acquire half
// of that last decrement) and runs libgrpc++'s own.
void grpc::internal::ServerCallbackCall::ScheduleOnDone(bool inline_ondone) {
  static const auto real = Real<void (*)(ServerCallbackCall*, bool)>(
      "_ZN4grpc8internal18ServerCallbackCall14ScheduleOnDoneEb");
  __tsan_acquire(&callbacks_outstanding_);
  real(this, inline_ondone);
}

void grpc::internal::ServerCallbackCall::CallOnCancel(ServerReactor* reactor) {
  static const auto real = Real<void (*)(ServerCallbackCall*, ServerReactor*)>(
      "_ZN4grpc8internal18ServerCallbackCall12CallOnCancelEPNS0_13ServerReactorE");
  __tsan_acquire(&on_cancel_conditions_remaining_);
  real(this, reactor);
}
