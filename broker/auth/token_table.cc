#include "auth/token_table.h"

#include <fnmatch.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <fstream>
#include <set>
#include <sstream>

namespace errand::auth {
namespace {

constexpr size_t kMinTokenLength = 16;
constexpr size_t kMaxTokenLength = 512;

struct RoleName {
  Role role;
  const char* name;
};
constexpr RoleName kRoleNames[] = {
    {kProducer, "producer"}, {kWorker, "worker"}, {kSubscriber, "subscriber"}, {kAdmin, "admin"}};

std::array<unsigned char, 32> Digest(std::string_view token) {
  std::array<unsigned char, 32> d;
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), d.data());
  return d;
}

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    size_t end = s.find(sep, start);
    out.push_back(s.substr(start, end == std::string_view::npos ? end : end - start));
    if (end == std::string_view::npos) return out;
    start = end + 1;
  }
}

std::vector<std::string_view> Fields(std::string_view line) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
    if (i > start) out.push_back(line.substr(start, i - start));
  }
  return out;
}

bool NameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '.' || c == '_' || c == '-';
}

// Queue name characters (as service/validate.cc) plus the glob characters.
bool PatternChar(char c) {
  return NameChar(c) || c == ':' || c == '/' || c == '*' || c == '?';
}

}  // namespace

std::string RolesToString(Roles roles, std::string_view sep) {
  std::string out;
  for (const auto& r : kRoleNames) {
    if (roles & r.role) {
      if (!out.empty()) out += sep;
      out += r.name;
    }
  }
  return out.empty() ? "none" : out;
}

bool Principal::AllowsQueue(std::string_view queue) const {
  if (queue_patterns.empty()) return true;
  // fnmatch needs a NUL-terminated name; queue names are at most a few
  // hundred characters, so a stack buffer avoids an allocation.
  char buf[512];
  if (queue.size() >= sizeof buf) return false;
  queue.copy(buf, queue.size());
  buf[queue.size()] = '\0';
  for (const std::string& p : queue_patterns) {
    if (fnmatch(p.c_str(), buf, 0) == 0) return true;
  }
  return false;
}

std::string Principal::PatternsString() const {
  if (queue_patterns.empty()) return "*";
  std::string out;
  for (const auto& p : queue_patterns) {
    if (!out.empty()) out += ",";
    out += p;
  }
  return out;
}

absl::StatusOr<TokenTable> TokenTable::Parse(std::string_view text, std::string_view source) {
  TokenTable table;
  std::set<std::string> names;
  int line_no = 0;
  for (std::string_view line : Split(text, '\n')) {
    ++line_no;
    auto where = [&] { return std::string(source) + ":" + std::to_string(line_no) + ": "; };
    if (size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    auto f = Fields(line);
    if (f.empty()) continue;
    if (f.size() < 3 || f.size() > 4) {
      return absl::InvalidArgumentError(where() + "expected <name> <roles> <token> [<queue "
                                                  "patterns>], found " +
                                        std::to_string(f.size()) + " fields");
    }
    Principal e;
    // Name.
    for (char c : f[0]) {
      if (!NameChar(c)) {
        return absl::InvalidArgumentError(where() + "name \"" + std::string(f[0]) +
                                          "\" has a character outside [A-Za-z0-9._-]");
      }
    }
    e.name = std::string(f[0]);
    if (!names.insert(e.name).second) {
      return absl::InvalidArgumentError(where() + "name \"" + e.name +
                                        "\" is used twice");
    }
    // Roles.
    for (std::string_view r : Split(f[1], ',')) {
      Roles bit = 0;
      for (const auto& rn : kRoleNames) {
        if (r == rn.name) bit = rn.role;
      }
      if (bit == 0) {
        return absl::InvalidArgumentError(where() + "unknown role \"" + std::string(r) +
                                          "\" (roles: producer, worker, subscriber, admin)");
      }
      e.roles |= bit;
    }
    // Token (never quoted in messages).
    std::string_view token = f[2];
    if (token.size() < kMinTokenLength || token.size() > kMaxTokenLength) {
      return absl::InvalidArgumentError(where() + "the token of \"" + e.name + "\" has " +
                                        std::to_string(token.size()) +
                                        " characters; tokens have 16 to 512");
    }
    for (char c : token) {
      if (c < 0x21 || c > 0x7e) {
        return absl::InvalidArgumentError(where() + "the token of \"" + e.name +
                                          "\" has a character that is not printable ASCII");
      }
    }
    e.digest = Digest(token);
    for (const Principal& other : table.entries_) {
      if (other.digest == e.digest) {
        return absl::InvalidArgumentError(where() + "the token of \"" + e.name +
                                          "\" is also the token of \"" + other.name + "\"");
      }
    }
    // Queue patterns.
    if (f.size() == 4 && f[3] != "*") {
      for (std::string_view p : Split(f[3], ',')) {
        if (p.empty()) return absl::InvalidArgumentError(where() + "empty queue pattern");
        for (char c : p) {
          if (!PatternChar(c)) {
            return absl::InvalidArgumentError(where() + "queue pattern \"" + std::string(p) +
                                              "\" has a character outside [A-Za-z0-9._:/-*?]");
          }
        }
        if (p == "*") {
          return absl::InvalidArgumentError(where() +
                                            "\"*\" among other patterns; use \"*\" alone");
        }
        e.queue_patterns.emplace_back(p);
      }
    }
    table.entries_.push_back(std::move(e));
  }
  return table;
}

absl::StatusOr<TokenTable> TokenTable::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError("cannot read token file " + path);
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError("error reading token file " + path);
  return Parse(text.str(), path);
}

const Principal* TokenTable::Find(std::string_view token) const {
  return FindDigest(Digest(token));
}

const Principal* TokenTable::FindDigest(const std::array<unsigned char, 32>& d) const {
  const Principal* found = nullptr;
  // No early exit: every entry is compared, each in constant time.
  for (const Principal& e : entries_) {
    if (CRYPTO_memcmp(d.data(), e.digest.data(), d.size()) == 0) found = &e;
  }
  return found;
}

}  // namespace errand::auth
