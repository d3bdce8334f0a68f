#include "auth/authenticator.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <string>

#include "support/test_support.h"

namespace errand::auth {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

void Write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::trunc) << text;
  ::chmod(path.c_str(), 0600);
}

class AuthenticatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.path() + "/tokens.conf";
    Write(path_,
          "prod producer prod-token-0123456789\n"
          "work worker work-token-0123456789 jobs-*\n");
    auto a = Authenticator::Open(path_);
    ASSERT_TRUE(a.ok()) << a.status();
    auth_ = std::move(*a);
  }

  errand::testing::TempDir dir_;
  std::string path_;
  std::unique_ptr<Authenticator> auth_;
};

TEST_F(AuthenticatorTest, AcceptsABearerTokenAnyCase) {
  auto p = auth_->Authenticate("Bearer prod-token-0123456789");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->name, "prod");
  p = auth_->Authenticate("bearer   work-token-0123456789");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)->name, "work");
}

TEST_F(AuthenticatorTest, MissingMalformedOrUnknownTokensAreUnauthenticated) {
  auto p = auth_->Authenticate("");
  EXPECT_EQ(p.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(p.status().message(), HasSubstr("authorization: Bearer <token>"));
  p = auth_->Authenticate("Basic cHJvZDpwcm9k");
  EXPECT_EQ(p.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(p.status().message(), HasSubstr("must be \"Bearer <token>\""));
  p = auth_->Authenticate("Bearer nope-token-0123456789");
  EXPECT_EQ(p.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(p.status().message(), Not(HasSubstr("nope-token")));
}

TEST_F(AuthenticatorTest, ReloadSwapsTheTableAndKeepsHeldPrincipalsAlive) {
  auto held = auth_->Authenticate("Bearer work-token-0123456789");
  ASSERT_TRUE(held.ok());
  Write(path_, "prod producer prod-token-0123456789\n");
  ASSERT_TRUE(auth_->Reload().ok());
  EXPECT_EQ(auth_->size(), 1u);
  EXPECT_EQ(auth_->Authenticate("Bearer work-token-0123456789").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(auth_->Authenticate("Bearer prod-token-0123456789").ok());
  // A call that authenticated before the reload still sees its principal.
  EXPECT_EQ((*held)->name, "work");
  EXPECT_TRUE((*held)->AllowsQueue("jobs-1"));
}

TEST_F(AuthenticatorTest, RefreshFollowsTheTokenAcrossReloads) {
  auto held = auth_->Authenticate("Bearer work-token-0123456789");
  ASSERT_TRUE(held.ok());
  uint64_t gen = auth_->generation();
  // Same token, new name, roles and patterns.
  Write(path_, "crew worker,producer work-token-0123456789 other-*\n");
  ASSERT_TRUE(auth_->Reload().ok());
  EXPECT_EQ(auth_->generation(), gen + 1);
  auto now = auth_->Refresh(**held);
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_EQ((*now)->name, "crew");
  EXPECT_EQ((*now)->roles, kWorker | kProducer);
  EXPECT_FALSE((*now)->AllowsQueue("jobs-1"));
  EXPECT_TRUE((*now)->AllowsQueue("other-1"));
  // Removed: UNAUTHENTICATED naming the token's old name only.
  Write(path_, "prod producer prod-token-0123456789\n");
  ASSERT_TRUE(auth_->Reload().ok());
  now = auth_->Refresh(**held);
  EXPECT_EQ(now.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(now.status().message(), "the token of \"work\" was removed from the token file");
  // A failed reload does not count.
  gen = auth_->generation();
  Write(path_, "bad\n");
  EXPECT_FALSE(auth_->Reload().ok());
  EXPECT_EQ(auth_->generation(), gen);
}

TEST_F(AuthenticatorTest, BadReloadKeepsTheCurrentTable) {
  Write(path_, "prod producer prod-token-0123456789\nbroken line\n");
  absl::Status s = auth_->Reload();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tokens.conf:2:"));
  EXPECT_EQ(auth_->size(), 2u);
  EXPECT_TRUE(auth_->Authenticate("Bearer work-token-0123456789").ok());
  ::unlink(path_.c_str());
  s = auth_->Reload();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("cannot read token file"));
  EXPECT_TRUE(auth_->Authenticate("Bearer work-token-0123456789").ok());
}

TEST_F(AuthenticatorTest, OpenFailsOnAMissingOrBadFile) {
  EXPECT_EQ(Authenticator::Open(dir_.path() + "/none").status().code(),
            absl::StatusCode::kNotFound);
  Write(path_, "x admins tok-0123456789abcdef\n");
  auto a = Authenticator::Open(path_);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(a.status().message(), HasSubstr("unknown role \"admins\""));
}

TEST(CheckRoleTest, NamesTheMethodTheNeededRolesAndTheTokensRoles) {
  Principal p{"w", kWorker, {}};
  EXPECT_TRUE(CheckRole(p, kWorker, "errand.v1.Workers/Lease").ok());
  absl::Status s = CheckRole(p, kProducer | kSubscriber, "errand.v1.Jobs/GetJob");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(s.message(),
            "errand.v1.Jobs/GetJob needs role producer or subscriber (or admin); token \"w\" has "
            "role worker");
  Principal admin{"a", kAdmin, {}};
  EXPECT_TRUE(CheckRole(admin, kWorker, "errand.v1.Workers/Lease").ok());
  EXPECT_TRUE(CheckRole(admin, kProducer, "errand.v1.Jobs/Enqueue").ok());
}

TEST(CheckQueueTest, NamesTheQueueAndThePatterns) {
  Principal p{"b", kProducer, {"billing-*", "invoices"}};
  EXPECT_TRUE(CheckQueue(p, "billing-1", "queue").ok());
  absl::Status s = CheckQueue(p, "emails", "queue");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(s.message(),
            "token \"b\" may not use queue \"emails\" (its queue patterns: billing-*,invoices)");
  EXPECT_THAT(CheckQueue(p, "news", "topic").message(), HasSubstr("topic \"news\""));
}

}  // namespace
}  // namespace errand::auth
