#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "config.h"

namespace errand {
namespace {

using ::testing::HasSubstr;

TEST(ConfigSecurityTest, LoopbackAddresses) {
  for (const char* a : {"127.0.0.1:7600", "127.1.2.3:0", "localhost:7600", "[::1]:7600",
                        "ipv4:127.0.0.1:1", "unix:/tmp/errand.sock"}) {
    EXPECT_TRUE(IsLoopbackAddress(a)) << a;
  }
  for (const char* a : {"0.0.0.0:7600", "[::]:7600", "10.0.0.1:7600", "broker:7600",
                        "127.example.com:7600", ":7600", "[::1:7600"}) {
    EXPECT_FALSE(IsLoopbackAddress(a)) << a;
  }
}

TEST(ConfigSecurityTest, NonLoopbackNeedsATokenFileOrInsecure) {
  Config c;
  EXPECT_TRUE(c.ValidateSecurity().ok());
  c.listen = "0.0.0.0:7600";
  absl::Status s = c.ValidateSecurity();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("refusing to listen on 0.0.0.0:7600 without --token-file"));
  EXPECT_THAT(s.message(), HasSubstr("--insecure"));
  c.insecure = true;
  EXPECT_TRUE(c.ValidateSecurity().ok());
  c.insecure = false;
  c.token_file = "tokens.conf";
  EXPECT_TRUE(c.ValidateSecurity().ok());
}

TEST(ConfigSecurityTest, TlsFilesComeTogether) {
  Config c;
  c.tls_cert = "cert.pem";
  EXPECT_THAT(c.ValidateSecurity().message(), HasSubstr("--tls-cert and --tls-key"));
  c.tls_cert.clear();
  c.tls_key = "key.pem";
  EXPECT_THAT(c.ValidateSecurity().message(), HasSubstr("--tls-cert and --tls-key"));
  c.tls_key.clear();
  c.tls_client_ca = "ca.pem";
  EXPECT_THAT(c.ValidateSecurity().message(), HasSubstr("--tls-client-ca (mutual TLS) needs"));
  c.tls_cert = "cert.pem";
  c.tls_key = "key.pem";
  EXPECT_TRUE(c.ValidateSecurity().ok());
}

}  // namespace
}  // namespace errand
