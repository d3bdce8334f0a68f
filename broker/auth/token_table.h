#pragma once

// The bearer tokens the broker accepts, as read from the token file
// (--token-file), and what each one may do.
//
// File format: one token per line; blank lines and text after '#' are
// ignored. Fields are separated by spaces or tabs:
//
//   <name> <roles> <token> [<queue patterns>]
//
//   name      names the token in logs and error messages (the token itself is
//             never logged): [A-Za-z0-9._-], unique in the file.
//   roles     a comma-separated subset of producer, worker, subscriber, admin.
//   token     the secret: 16 to 512 printable ASCII characters, no spaces,
//             unique in the file. Clients send it as `authorization: Bearer
//             <token>` metadata.
//   patterns  optional comma-separated queue name patterns ('*' matches any
//             run of characters, '?' one character); the token may only use
//             queues (and pub/sub topics) whose names match one of them.
//             Absent or "*": every queue.
//
// Thread: a TokenTable is immutable after Parse and may be read from any
// thread.

#include <absl/status/statusor.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace errand::auth {

// Roles, as bits. kAdmin may call every RPC.
enum Role : uint32_t {
  kProducer = 1u << 0,
  kWorker = 1u << 1,
  kSubscriber = 1u << 2,
  kAdmin = 1u << 3,
};
using Roles = uint32_t;

// "producer,subscriber" for kProducer | kSubscriber (with sep ","); "none"
// for 0.
std::string RolesToString(Roles roles, std::string_view sep = ",");

// Who a token speaks for.
struct Principal {
  std::string name;
  Roles roles = 0;
  // Queue name patterns; empty means every queue.
  std::vector<std::string> queue_patterns;
  // SHA-256 of the token: finds the same token in a reloaded table.
  std::array<unsigned char, 32> digest{};

  bool restricted() const { return !queue_patterns.empty(); }
  // True when `queue` matches a pattern (always, when not restricted).
  bool AllowsQueue(std::string_view queue) const;
  // The patterns joined by commas, for messages.
  std::string PatternsString() const;
};

class TokenTable {
 public:
  // Parses the text of a token file. `source` names it in error messages
  // ("tokens.conf:3: unknown role \"prodcer\""); messages never quote a
  // token.
  static absl::StatusOr<TokenTable> Parse(std::string_view text, std::string_view source);
  // Reads and parses a token file.
  static absl::StatusOr<TokenTable> Load(const std::string& path);

  // The principal whose token equals `token`, or nullptr. The token is
  // hashed (SHA-256) and compared with every entry's hash in constant time,
  // so the time taken does not depend on how much of a token matched.
  const Principal* Find(std::string_view token) const;
  // The principal whose token has this SHA-256 digest, or nullptr.
  const Principal* FindDigest(const std::array<unsigned char, 32>& digest) const;

  size_t size() const { return entries_.size(); }

 private:
  std::vector<Principal> entries_;
};

}  // namespace errand::auth
