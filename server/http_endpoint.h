// HttpEndpoint: a small HTTP/1.1 server for untrusted clients. Debian's cpp-httplib parses
// requests and writes responses; the threads, sockets, limits and timeouts are ours, so that no
// request, slow or hostile, can crash it, hold it for long, or make it buffer without bound.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "httplib.h"

namespace lizard::server {

struct HttpEndpointOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0: any free port (see HttpEndpoint::port())
  int threads = 8;      // connections served at once
  int max_pending = 8;  // accepted connections waiting for a thread; more are closed unserved
  int listen_backlog = 128;  // connections the kernel queues before they are accepted
  absl::Duration request_timeout = absl::Seconds(5);     // to receive one whole request
  absl::Duration write_timeout = absl::Seconds(5);       // for a blocked write to make progress
  absl::Duration keep_alive_timeout = absl::Seconds(5);  // idle time between two requests
  int keep_alive_max_requests = 100;                     // per connection
  int64_t max_header_bytes = 16 << 10;  // request line and headers; more: 431 and close
  int64_t max_body_bytes = 0;  // of a POST request (Content-Length); more: 413 and close
  // HTTPS: PEM certificate chain and private key (both, or neither for plain HTTP), and
  // optionally CA certificates a client's certificate must be signed by (mutual TLS). The TLS
  // handshake must end within request_timeout. The process must ignore SIGPIPE (OpenSSL writes
  // to the socket without MSG_NOSIGNAL).
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  // Writes the body of an error response that has none (e.g. "404 Not Found" for an unknown
  // path); unset: that text, as text/plain.
  std::function<void(httplib::Response& res, const std::string& message)> error_body;
};

// Answers GET and HEAD (and POST where a route has a post handler) of the routes' exact paths
// (a query string is allowed); any other method on them 405 with Allow, any other path 404.
// A GET with a body is 400 (413 when its length is over 0); a POST needs a Content-Length of at
// most max_body_bytes (else 413; none: an empty body; chunked bodies are 400), read whole within
// request_timeout before the handler runs. Malformed requests are 400. Every error response
// closes the connection.
class HttpEndpoint {
 public:
  // Fills `res` (status 200 unless set); for a HEAD the body is left out. A POST handler finds
  // the body in req.body. A handler may answer with res.set_chunked_content_provider: it runs on
  // the connection's thread, and each write gives up after write_timeout without progress.
  using Handler = std::function<void(const httplib::Request& req, httplib::Response& res)>;
  struct Route {
    std::string path;
    Handler get;   // GET and HEAD; may be empty when `post` is set
    Handler post;  // may be empty
  };

  // Serving when this returns; UNAVAILABLE when the address cannot be bound, INVALID_ARGUMENT
  // when the TLS files cannot be used.
  static absl::StatusOr<std::unique_ptr<HttpEndpoint>> Start(const HttpEndpointOptions& options,
                                                             std::vector<Route> routes);
  // Closes the listening socket and every connection at once, then joins the threads.
  ~HttpEndpoint();

  int port() const { return port_; }

  // On a handler's thread: whether the client has closed (or half-closed) its connection, so
  // that a long handler can stop working for nobody. Bytes of a next request do not count.
  static bool ClientClosed();
  // On a handler's thread: when the request being handled started to arrive.
  static absl::Time RequestStart();

 private:
  class Server;
  HttpEndpoint() = default;

  std::unique_ptr<Server> server_;
  std::thread listener_;  // httplib's accept loop
  int port_ = 0;
};

}  // namespace lizard::server
