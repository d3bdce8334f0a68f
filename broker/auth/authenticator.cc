#include "auth/authenticator.h"

#include <sys/stat.h>

#include <spdlog/spdlog.h>

namespace errand::auth {
namespace {

void WarnIfReadableByOthers(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    spdlog::warn("token file {} can be read by group or others (mode {:o}); chmod 600 it", path,
                 st.st_mode & 0777);
  }
}

bool StartsWithBearer(std::string_view v) {
  constexpr std::string_view kBearer = "bearer ";
  if (v.size() < kBearer.size()) return false;
  for (size_t i = 0; i < kBearer.size(); ++i) {
    char c = v[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != kBearer[i]) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Open(const std::string& path) {
  std::unique_ptr<Authenticator> a(new Authenticator(path));
  if (auto s = a->Reload(); !s.ok()) return s;
  return a;
}

absl::Status Authenticator::Reload() {
  auto table = TokenTable::Load(path_);
  if (!table.ok()) return table.status();
  WarnIfReadableByOthers(path_);
  auto fresh = std::make_shared<const TokenTable>(std::move(*table));
  absl::MutexLock lock(&mu_);
  table_ = std::move(fresh);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  return absl::OkStatus();
}

absl::StatusOr<PrincipalRef> Authenticator::Authenticate(std::string_view authorization) const {
  if (authorization.empty()) {
    return absl::UnauthenticatedError(
        "this broker requires a bearer token: send metadata \"authorization: Bearer <token>\"");
  }
  if (!StartsWithBearer(authorization)) {
    return absl::UnauthenticatedError(
        "the authorization metadata must be \"Bearer <token>\"");
  }
  std::string_view token = authorization.substr(7);
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  std::shared_ptr<const TokenTable> table;
  {
    absl::MutexLock lock(&mu_);
    table = table_;
  }
  const Principal* p = table->Find(token);
  if (p == nullptr) return absl::UnauthenticatedError("unknown bearer token");
  // Aliasing: the principal keeps its whole table alive, with no allocation.
  return PrincipalRef(std::move(table), p);
}

absl::StatusOr<PrincipalRef> Authenticator::Refresh(const Principal& p) const {
  std::shared_ptr<const TokenTable> table;
  {
    absl::MutexLock lock(&mu_);
    table = table_;
  }
  const Principal* now = table->FindDigest(p.digest);
  if (now == nullptr) {
    return absl::UnauthenticatedError("the token of \"" + p.name +
                                      "\" was removed from the token file");
  }
  return PrincipalRef(std::move(table), now);
}

size_t Authenticator::size() const {
  absl::MutexLock lock(&mu_);
  return table_->size();
}

absl::Status CheckRole(const Principal& p, Roles needed, std::string_view method) {
  if ((p.roles & (needed | kAdmin)) != 0) return absl::OkStatus();
  return absl::PermissionDeniedError(std::string(method) + " needs role " +
                                     RolesToString(needed, " or ") + " (or admin); token \"" + p.name +
                                     "\" has role " + RolesToString(p.roles));
}

absl::Status CheckQueue(const Principal& p, std::string_view name, std::string_view what) {
  if (p.AllowsQueue(name)) return absl::OkStatus();
  return absl::PermissionDeniedError("token \"" + p.name + "\" may not use " + std::string(what) +
                                     " \"" + std::string(name) + "\" (its queue patterns: " +
                                     p.PatternsString() + ")");
}

}  // namespace errand::auth
