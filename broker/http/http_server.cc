#include "http/http_server.h"

#include <asio/post.hpp>
#include <asio/read_until.hpp>
#include <asio/steady_timer.hpp>
#include <asio/streambuf.hpp>
#include <asio/write.hpp>
#include <cctype>
#include <sstream>

namespace errand::http {
namespace {

const char* Reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
  }
}

Response Plain(int status, std::string body) {
  Response r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

}  // namespace

// One accepted connection: read the head, answer, close. Owned by the
// handlers it has in flight (shared_ptr).
class HttpServer::Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(HttpServer* server, asio::ip::tcp::socket socket)
      : server_(server),
        socket_(std::move(socket)),
        timer_(server->io_),
        buffer_(server->options_.max_request_bytes) {
    server_->connections_.insert(this);
  }
  ~Connection() { server_->connections_.erase(this); }

  // Ends the connection: pending reads, writes and the timer complete with
  // operation_aborted.
  void Close() {
    asio::error_code ignored;
    socket_.close(ignored);
    timer_.cancel();
  }

  void Start() {
    auto self = shared_from_this();
    timer_.expires_after(server_->options_.timeout);
    timer_.async_wait([self](const asio::error_code& ec) {
      if (!ec) {
        asio::error_code ignored;
        self->socket_.close(ignored);
      }
    });
    asio::async_read_until(socket_, buffer_, "\r\n\r\n",
                           [self](const asio::error_code& ec, size_t n) { self->OnHead(ec, n); });
  }

 private:
  void OnHead(const asio::error_code& ec, size_t n) {
    Response r;
    bool head_only = false;
    if (ec == asio::error::not_found) {  // the buffer filled without a blank line
      r = Plain(431, "request head larger than " +
                         std::to_string(server_->options_.max_request_bytes) + " bytes\n");
    } else if (ec) {
      timer_.cancel();
      return;  // closed, timed out, or reset: nothing to answer
    } else {
      std::string head(asio::buffers_begin(buffer_.data()),
                       asio::buffers_begin(buffer_.data()) + static_cast<std::ptrdiff_t>(n));
      r = Route(server_->routes_, head, &head_only);
    }
    std::ostringstream out;
    out << "HTTP/1.1 " << r.status << " " << Reason(r.status) << "\r\n"
        << "Content-Type: " << r.content_type << "\r\n"
        << "Content-Length: " << r.body.size() << "\r\n"
        << "Cache-Control: no-store\r\n";
    if (r.status == 405) out << "Allow: GET, HEAD\r\n";
    out << "Connection: close\r\n\r\n";
    response_ = out.str();
    if (!head_only) response_ += r.body;
    auto self = shared_from_this();
    asio::async_write(socket_, asio::buffer(response_), [self](const asio::error_code&, size_t) {
      asio::error_code ignored;
      self->socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
      self->socket_.close(ignored);
      self->timer_.cancel();
    });
  }

  HttpServer* const server_;
  asio::ip::tcp::socket socket_;
  asio::steady_timer timer_;
  asio::streambuf buffer_;
  std::string response_;
};

HttpServer::HttpServer(std::map<std::string, Handler> routes, Options options)
    : routes_(std::move(routes)), options_(options) {}

absl::StatusOr<asio::ip::tcp::endpoint> HttpServer::ParseEndpoint(const std::string& listen) {
  auto bad = [&] {
    return absl::InvalidArgumentError("\"" + listen +
                                      "\" is not IP:PORT (e.g. 127.0.0.1:7601 or [::1]:7601)");
  };
  std::string host, port;
  if (!listen.empty() && listen.front() == '[') {
    size_t close = listen.find(']');
    if (close == std::string::npos || close + 1 >= listen.size() || listen[close + 1] != ':') {
      return bad();
    }
    host = listen.substr(1, close - 1);
    port = listen.substr(close + 2);
  } else {
    size_t colon = listen.rfind(':');
    if (colon == std::string::npos) return bad();
    host = listen.substr(0, colon);
    port = listen.substr(colon + 1);
    if (host.find(':') != std::string::npos) return bad();  // IPv6 needs brackets
  }
  if (port.empty() || port.size() > 5) return bad();
  for (char c : port) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return bad();
  }
  int p = std::stoi(port);
  if (p > 65535) return bad();
  asio::error_code ec;
  auto address = asio::ip::make_address(host, ec);
  if (ec) return bad();
  return asio::ip::tcp::endpoint(address, static_cast<uint16_t>(p));
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(
    const std::string& listen, std::map<std::string, Handler> routes, Options options) {
  auto endpoint = ParseEndpoint(listen);
  if (!endpoint.ok()) return endpoint.status();
  std::unique_ptr<HttpServer> s(new HttpServer(std::move(routes), options));
  asio::error_code ec;
  s->acceptor_.open(endpoint->protocol(), ec);
  if (!ec) s->acceptor_.set_option(asio::ip::tcp::acceptor::reuse_address(true), ec);
  if (!ec) s->acceptor_.bind(*endpoint, ec);
  if (!ec) s->acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return absl::UnavailableError("cannot listen on " + listen + ": " + ec.message());
  s->port_ = s->acceptor_.local_endpoint(ec).port();
  s->Accept();
  HttpServer* raw = s.get();
  s->thread_ = std::thread([raw] { raw->io_.run(); });
  return s;
}

void HttpServer::Accept() {
  acceptor_.async_accept([this](const asio::error_code& ec, asio::ip::tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
    if (!ec) {
      if (connections_.size() >= options_.max_connections) {
        asio::error_code ignored;
        socket.close(ignored);
      } else {
        std::make_shared<Connection>(this, std::move(socket))->Start();
      }
    }
    Accept();
  });
}

Response HttpServer::Route(const std::map<std::string, Handler>& routes, const std::string& head,
                           bool* head_only) {
  *head_only = false;
  size_t eol = head.find("\r\n");
  std::string line = head.substr(0, eol);
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string::npos ? std::string::npos : line.find(' ', sp1 + 1);
  if (sp1 == std::string::npos || sp2 == std::string::npos ||
      line.find(' ', sp2 + 1) != std::string::npos) {
    return Plain(400, "malformed request line\n");
  }
  std::string method = line.substr(0, sp1);
  std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string version = line.substr(sp2 + 1);
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    return Plain(400, "unsupported HTTP version\n");
  }
  if (target.empty() || target.front() != '/') return Plain(400, "malformed request target\n");
  std::string path = target.substr(0, target.find('?'));
  auto it = routes.find(path);
  if (it == routes.end()) return Plain(404, "not found: " + path + "\n");
  if (method == "HEAD") {
    *head_only = true;
  } else if (method != "GET") {
    return Plain(405, "method " + method + " not allowed; use GET\n");
  }
  return it->second();
}

void HttpServer::Stop() {
  if (stopped_) return;
  stopped_ = true;
  // Closing the listener and every connection leaves the io_context without
  // work, so its thread returns once the aborted handlers ran.
  asio::post(io_, [this] {
    asio::error_code ignored;
    acceptor_.close(ignored);
    for (Connection* c : connections_) c->Close();
  });
  if (thread_.joinable()) thread_.join();
}

HttpServer::~HttpServer() { Stop(); }

}  // namespace errand::http
