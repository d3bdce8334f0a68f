#pragma once

// The broker's bearer-token check: the current TokenTable (reloaded from the
// token file on SIGHUP) and the role and queue checks every RPC makes.
//
// Thread: every method may be called from any thread. Authenticate takes a
// mutex only to copy a shared_ptr; Reload parses outside it and swaps.

#include <absl/base/thread_annotations.h>
#include <absl/status/status.h>
#include <absl/status/statusor.h>
#include <absl/synchronization/mutex.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "auth/token_table.h"

namespace errand::auth {

// A caller, kept alive by the table it came from even after a reload
// replaced that table. Null when the broker runs without tokens.
using PrincipalRef = std::shared_ptr<const Principal>;

class Authenticator {
 public:
  // Loads `path`; fails (naming the line) when it cannot be read or parsed.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Open(const std::string& path);
  Authenticator(const Authenticator&) = delete;
  Authenticator& operator=(const Authenticator&) = delete;

  // Re-reads the token file. On success new calls see the new table at once;
  // on error the current table stays and the status says why.
  absl::Status Reload();

  // The caller of `authorization` (the value of the `authorization`
  // metadata, "Bearer <token>"; empty when absent). UNAUTHENTICATED when it
  // is missing, malformed or names no token of the table.
  absl::StatusOr<PrincipalRef> Authenticate(std::string_view authorization) const;

  // Counts successful reloads; long-lived streams compare it to know when
  // to look their caller up again (Refresh). One atomic load.
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

  // `p` as the current table has it (its roles and patterns may have
  // changed); UNAUTHENTICATED when its token was removed.
  absl::StatusOr<PrincipalRef> Refresh(const Principal& p) const;

  // Tokens in the current table.
  size_t size() const;
  const std::string& path() const { return path_; }

 private:
  explicit Authenticator(std::string path) : path_(std::move(path)) {}

  const std::string path_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const TokenTable> table_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> generation_{0};
};

// OK when `p` holds one of the roles in `needed`, or admin (which may call
// everything); otherwise PERMISSION_DENIED naming `method`, the roles it
// needs and the roles the token has.
absl::Status CheckRole(const Principal& p, Roles needed, std::string_view method);

// OK when `p` may use the queue (what = "queue") or topic (what = "topic")
// `name`; otherwise PERMISSION_DENIED naming it and the token's patterns.
absl::Status CheckQueue(const Principal& p, std::string_view name, std::string_view what);

}  // namespace errand::auth
