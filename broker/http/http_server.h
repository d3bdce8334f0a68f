#pragma once

#include <absl/status/statusor.h>

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>

namespace errand::http {

// What a handler answers.
struct Response {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

// A small HTTP/1.1 server for operators' endpoints (/metrics, /healthz,
// /readyz) on standalone Asio, with its own io_context and thread.
//
// It serves GET (and HEAD) of fixed paths, one request per connection
// (`Connection: close`): 404 for an unknown path, 405 for another method,
// 400 for a malformed request, 431 when the request head exceeds
// max_request_bytes, and it closes a connection that has not sent its whole
// request head, or not taken its answer, within `timeout`. The query string
// is ignored.
//
// Thread: Start and Stop from one thread; handlers run on the server's
// thread, one at a time, and may block it briefly (they must not wait on
// anything that waits on the server).
class HttpServer {
 public:
  using Handler = std::function<Response()>;

  struct Options {
    // Longest request head (request line and headers). Default: 8 KiB.
    size_t max_request_bytes = 8192;
    // Time a connection gets to send its request and read the answer.
    // Default: 10s.
    std::chrono::milliseconds timeout{10000};
    // Most connections open at once; more are closed at accept. Default: 64.
    size_t max_connections = 64;
  };

  // Listens on `listen` ("IP:PORT", "[IPv6]:PORT"; port 0 picks one) and
  // starts serving `routes` (path -> handler). Errors: INVALID_ARGUMENT for a
  // malformed address, UNAVAILABLE when it cannot listen.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& listen,
                                                           std::map<std::string, Handler> routes,
                                                           Options options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The bound port.
  int port() const { return port_; }

  // Closes the listener and every connection and joins the thread.
  // Idempotent.
  void Stop();

  // Parses "IP:PORT" or "[IPv6]:PORT". Errors: INVALID_ARGUMENT naming the
  // text.
  static absl::StatusOr<asio::ip::tcp::endpoint> ParseEndpoint(const std::string& listen);

  // The answer to one request head (everything up to the blank line) from
  // `routes`: 400/404/405, or the route's handler. `head_only` is set for
  // HEAD. Exposed for tests.
  static Response Route(const std::map<std::string, Handler>& routes, const std::string& head,
                        bool* head_only);

 private:
  class Connection;
  HttpServer(std::map<std::string, Handler> routes, Options options);
  void Accept();

  const std::map<std::string, Handler> routes_;
  const Options options_;
  asio::io_context io_{1};
  asio::ip::tcp::acceptor acceptor_{io_};
  std::thread thread_;
  std::set<Connection*> connections_;  // open ones; Thread: the server's
  int port_ = 0;
  bool stopped_ = false;
};

}  // namespace errand::http
