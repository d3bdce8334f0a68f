#include "http/http_server.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

namespace errand::http {
namespace {

using ::testing::HasSubstr;

// Route() is the whole routing decision; sockets are covered by the
// end-to-end tests against the real broker.
class RouteTest : public ::testing::Test {
 protected:
  RouteTest() {
    routes_["/metrics"] = [] { return Response{200, "text/plain", "m\n"}; };
    routes_["/readyz"] = [] { return Response{503, "text/plain", "not ready\n"}; };
  }
  Response Handle(const std::string& head, bool* head_only = nullptr) {
    bool ignored;
    return HttpServer::Route(routes_, head, head_only ? head_only : &ignored);
  }
  std::map<std::string, HttpServer::Handler> routes_;
};

TEST_F(RouteTest, RoutesGetByPathIgnoringTheQuery) {
  Response r = Handle("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "m\n");
  EXPECT_EQ(Handle("GET /metrics?name[]=x HTTP/1.0\r\n\r\n").status, 200);
  EXPECT_EQ(Handle("GET /readyz HTTP/1.1\r\n\r\n").status, 503);
}

TEST_F(RouteTest, HeadAnswersWithoutBody) {
  bool head_only = false;
  Response r = Handle("HEAD /metrics HTTP/1.1\r\n\r\n", &head_only);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(head_only);
}

TEST_F(RouteTest, UnknownPathIs404AndOtherMethodsAre405) {
  Response r = Handle("GET /nope HTTP/1.1\r\n\r\n");
  EXPECT_EQ(r.status, 404);
  EXPECT_THAT(r.body, HasSubstr("/nope"));
  r = Handle("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(r.status, 405);
  EXPECT_THAT(r.body, HasSubstr("POST"));
}

TEST_F(RouteTest, MalformedRequestsAre400) {
  EXPECT_EQ(Handle("GET\r\n\r\n").status, 400);
  EXPECT_EQ(Handle("GET /metrics\r\n\r\n").status, 400);
  EXPECT_EQ(Handle("GET /metrics HTTP/2\r\n\r\n").status, 400);
  EXPECT_EQ(Handle("GET metrics HTTP/1.1\r\n\r\n").status, 400);
  EXPECT_EQ(Handle("GET /a b HTTP/1.1\r\n\r\n").status, 400);
}

TEST(HttpServerTest, ParsesListenAddresses) {
  auto v4 = HttpServer::ParseEndpoint("127.0.0.1:7601");
  ASSERT_TRUE(v4.ok());
  EXPECT_EQ(v4->port(), 7601);
  EXPECT_TRUE(v4->address().is_v4());
  auto v6 = HttpServer::ParseEndpoint("[::1]:0");
  ASSERT_TRUE(v6.ok());
  EXPECT_TRUE(v6->address().is_v6());
  for (const char* bad : {"", "7601", "localhost:7601", "127.0.0.1:", "127.0.0.1:99999",
                          "::1:7601", "[::1]7601", "127.0.0.1:7a"}) {
    auto r = HttpServer::ParseEndpoint(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_THAT(std::string(r.status().message()), HasSubstr("IP:PORT"));
    }
  }
}

}  // namespace
}  // namespace errand::http
