#include "auth/token_table.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

namespace errand::auth {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr const char* kFile = R"(# errand tokens
  ci-producer   producer             prod-token-0123456789          # all queues
billing        producer,subscriber  billing-token-0123456789   billing-*,invoices
ops	admin	ops-token-abcdefghijkl	*

reader subscriber reader-token-0123456789 q?
)";

TokenTable MustParse(const std::string& text) {
  auto t = TokenTable::Parse(text, "tokens.conf");
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : TokenTable();
}

std::string ParseError(const std::string& text) {
  auto t = TokenTable::Parse(text, "tokens.conf");
  EXPECT_FALSE(t.ok()) << text;
  return t.ok() ? "" : std::string(t.status().message());
}

TEST(TokenTableTest, ParsesNamesRolesAndPatterns) {
  TokenTable t = MustParse(kFile);
  EXPECT_EQ(t.size(), 4u);
  const Principal* p = t.Find("prod-token-0123456789");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->name, "ci-producer");
  EXPECT_EQ(p->roles, kProducer);
  EXPECT_FALSE(p->restricted());

  p = t.Find("billing-token-0123456789");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->roles, kProducer | kSubscriber);
  EXPECT_TRUE(p->restricted());
  EXPECT_EQ(p->PatternsString(), "billing-*,invoices");

  p = t.Find("ops-token-abcdefghijkl");  // tab-separated, "*" = all queues
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->roles, kAdmin);
  EXPECT_FALSE(p->restricted());
}

TEST(TokenTableTest, FindNeedsTheWholeToken) {
  TokenTable t = MustParse(kFile);
  EXPECT_EQ(t.Find(""), nullptr);
  EXPECT_EQ(t.Find("prod-token-012345678"), nullptr);    // a prefix
  EXPECT_EQ(t.Find("prod-token-01234567890"), nullptr);  // longer
  EXPECT_EQ(t.Find("Prod-token-0123456789"), nullptr);   // case matters
  EXPECT_EQ(t.Find("ci-producer"), nullptr);             // a name is not a token
}

TEST(TokenTableTest, QueuePatternsMatchWholeNamesWithWildcards) {
  TokenTable t = MustParse(kFile);
  const Principal* billing = t.Find("billing-token-0123456789");
  ASSERT_NE(billing, nullptr);
  EXPECT_TRUE(billing->AllowsQueue("billing-eu"));
  EXPECT_TRUE(billing->AllowsQueue("billing-"));
  EXPECT_TRUE(billing->AllowsQueue("invoices"));
  EXPECT_FALSE(billing->AllowsQueue("invoices2"));
  EXPECT_FALSE(billing->AllowsQueue("xbilling-eu"));
  EXPECT_FALSE(billing->AllowsQueue("emails"));
  EXPECT_FALSE(billing->AllowsQueue(std::string(600, 'b')));
  const Principal* reader = t.Find("reader-token-0123456789");
  ASSERT_NE(reader, nullptr);
  EXPECT_TRUE(reader->AllowsQueue("q1"));
  EXPECT_FALSE(reader->AllowsQueue("q12"));
  EXPECT_FALSE(reader->AllowsQueue("q"));
  const Principal* all = t.Find("prod-token-0123456789");
  EXPECT_TRUE(all->AllowsQueue("anything/at:all"));
}

TEST(TokenTableTest, EmptyFileHasNoTokens) {
  EXPECT_EQ(MustParse("").size(), 0u);
  EXPECT_EQ(MustParse("# nothing\n\n   \n").size(), 0u);
}

TEST(TokenTableTest, BadLinesNameTheLineAndTheProblem) {
  EXPECT_THAT(ParseError("a producer\n"), HasSubstr("tokens.conf:1: expected <name> <roles>"));
  EXPECT_THAT(ParseError("# c\na producer tok-0123456789abcdef q extra\n"),
              HasSubstr("tokens.conf:2: expected"));
  EXPECT_THAT(ParseError("a prodcer tok-0123456789abcdef\n"),
              HasSubstr("tokens.conf:1: unknown role \"prodcer\""));
  EXPECT_THAT(ParseError("a producer,,worker tok-0123456789abcdef\n"),
              HasSubstr("unknown role \"\""));
  EXPECT_THAT(ParseError("a producer short\n"), HasSubstr("has 5 characters; tokens have 16"));
  EXPECT_THAT(ParseError("a producer " + std::string(513, 'x') + "\n"),
              HasSubstr("has 513 characters"));
  EXPECT_THAT(ParseError("a@b producer tok-0123456789abcdef\n"),
              HasSubstr("name \"a@b\" has a character outside"));
  EXPECT_THAT(ParseError("a producer tok-0123456789abcdef\na worker tok-fedcba9876543210\n"),
              HasSubstr("tokens.conf:2: name \"a\" is used twice"));
  EXPECT_THAT(ParseError("a producer tok-0123456789abcdef q,,r\n"),
              HasSubstr("empty queue pattern"));
  EXPECT_THAT(ParseError("a producer tok-0123456789abcdef q[1]\n"),
              HasSubstr("queue pattern \"q[1]\" has a character outside"));
  EXPECT_THAT(ParseError("a producer tok-0123456789abcdef q,*\n"), HasSubstr("\"*\" alone"));
}

TEST(TokenTableTest, ErrorsNeverQuoteATokenButNameItsOwner) {
  std::string e = ParseError(
      "first producer same-token-0123456789\nsecond worker same-token-0123456789\n");
  EXPECT_THAT(e, HasSubstr("tokens.conf:2: the token of \"second\" is also the token of \"first\""));
  EXPECT_THAT(e, Not(HasSubstr("same-token")));
  e = ParseError("a producer bad\x01token-0123456789\n");
  EXPECT_THAT(e, HasSubstr("not printable ASCII"));
  EXPECT_THAT(e, Not(HasSubstr("token-0123456789")));
}

TEST(TokenTableTest, CarriageReturnsAreIgnored) {
  TokenTable t = MustParse("a producer tok-0123456789abcdef q1\r\n");
  const Principal* p = t.Find("tok-0123456789abcdef");
  ASSERT_NE(p, nullptr);
  EXPECT_TRUE(p->AllowsQueue("q1"));
}

TEST(TokenTableTest, RolesToStringListsRolesInOrder) {
  EXPECT_EQ(RolesToString(kAdmin | kProducer), "producer,admin");
  EXPECT_EQ(RolesToString(kProducer | kSubscriber, " or "), "producer or subscriber");
  EXPECT_EQ(RolesToString(0), "none");
}

}  // namespace
}  // namespace errand::auth
