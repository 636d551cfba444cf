#include "server/http_endpoint.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "openssl/err.h"
#include "openssl/ssl.h"

namespace lizard::server {
namespace {

// Waits until `sock` is ready for `events` (true), or `deadline` passes or `stop_fd` becomes
// readable (false). A socket error or hang-up counts as ready: the recv/send then reports it.
bool WaitFor(int sock, short events, int stop_fd, absl::Time deadline) {
  for (;;) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return false;
    pollfd fds[2] = {{sock, events, 0}, {stop_fd, POLLIN, 0}};
    const int timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(left)) + 1;
    const int n = poll(fds, 2, timeout_ms);
    if (n < 0 && errno != EINTR) return false;
    if (n <= 0) continue;
    if (fds[1].revents != 0) return false;
    if (fds[0].revents != 0) return true;
  }
}

void SocketAddress(int sock, bool peer, std::string& ip, int& port) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  const int rc = peer ? getpeername(sock, reinterpret_cast<sockaddr*>(&address), &length)
                      : getsockname(sock, reinterpret_cast<sockaddr*>(&address), &length);
  if (rc != 0) return;
  char text[INET6_ADDRSTRLEN] = "";
  if (address.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(address);
    inet_ntop(AF_INET, &v4.sin_addr, text, sizeof(text));
    port = ntohs(v4.sin_port);
  } else if (address.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(address);
    inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof(text));
    port = ntohs(v6.sin6_port);
  }
  ip = text;
}

// One client connection: buffered reads, each request bounded in bytes and in time; writes
// that give up when the client stops reading for write_timeout. httplib parses through it.
class Connection final : public httplib::Stream {
 public:
  Connection(int sock, int stop_fd, const HttpEndpointOptions& options)
      : sock_(sock), stop_fd_(stop_fd), options_(options) {}
  ~Connection() override { SSL_free(ssl_); }

  // HTTPS: the TLS handshake, within request_timeout. From now on every byte goes through TLS
  // (the socket is non-blocking, as OpenSSL reads and writes it itself).
  bool StartTls(SSL_CTX* context) {
    ssl_ = SSL_new(context);
    if (ssl_ == nullptr || fcntl(sock_, F_SETFL, fcntl(sock_, F_GETFL) | O_NONBLOCK) != 0 ||
        SSL_set_fd(ssl_, sock_) != 1) {
      return false;
    }
    SSL_set_mode(ssl_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    const absl::Time deadline = absl::Now() + options_.request_timeout;
    for (;;) {
      const int rc = SSL_accept(ssl_);
      if (rc == 1) return true;
      const int error = SSL_get_error(ssl_, rc);
      if (error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();  // a client's failed handshake is its own business
        return false;
      }
      if (!WaitFor(sock_, error == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, stop_fd_, deadline)) {
        return false;
      }
    }
  }

  // Starts the next request: its deadline and byte budget.
  void BeginRequest() {
    deadline_ = absl::Now() + options_.request_timeout;
    budget_ = options_.max_header_bytes;
    over_budget_ = false;
  }
  // Whether a next request starts within the keep-alive timeout (bytes already buffered count).
  bool AwaitNextRequest() {
    reading_since_ = absl::ToUnixNanos(absl::Now());
    return Buffered() ||
           WaitFor(sock_, POLLIN, stop_fd_, absl::Now() + options_.keep_alive_timeout);
  }
  // The request's headers are in: from now on the connection is not idle.
  void HeadersRead() { reading_since_ = kNotReading; }
  // Since when the client has kept this connection waiting for a request (kNotReading if not).
  int64_t reading_since() const { return reading_since_; }
  // Ends the connection from another thread: its pending wait returns and the client gets EOF.
  // The caller guarantees that the socket is still open (HttpEndpoint::Server's registry).
  void Evict() {
    reading_since_ = kNotReading;
    shutdown(sock_, SHUT_RDWR);
  }
  static constexpr int64_t kNotReading = std::numeric_limits<int64_t>::max();

  // After the last response: stop sending, then drop what the client still sends until it
  // closes (for at most 1 s and 1 MiB). Closing a socket with unread bytes resets the connection,
  // and the reset can destroy the response before the client has read it.
  void Linger() {
    if (ssl_ != nullptr) SSL_shutdown(ssl_);  // close_notify, without waiting for the client's
    shutdown(sock_, SHUT_WR);
    reading_since_ = absl::ToUnixNanos(absl::Now());
    const absl::Time deadline = absl::Now() + absl::Seconds(1);
    for (int64_t left = int64_t{1} << 20;
         left > 0 && WaitFor(sock_, POLLIN, stop_fd_, deadline);) {
      const ssize_t n = recv(sock_, buffer_, sizeof(buffer_), MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return;
      if (n > 0) left -= n;
    }
  }
  // Whether the client closed its side: an end of stream (or an error) is waiting after what was
  // read so far.
  bool PeerClosed() const {
    pollfd fd = {sock_, POLLIN | POLLRDHUP, 0};
    if (poll(&fd, 1, 0) <= 0) return false;
    if ((fd.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) return true;
    char byte;
    return recv(sock_, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
  }
  // Whether reading stopped because the request was larger than max_header_bytes.
  bool over_budget() const { return over_budget_; }
  // Reads a body of exactly `length` bytes (within the request's deadline); false if the
  // client closed or was too slow.
  bool ReadBody(size_t length, std::string& body) {
    budget_ = static_cast<int64_t>(length);
    body.resize(length);
    for (size_t done = 0; done < length;) {
      const ssize_t n = read(body.data() + done, length - done);
      if (n <= 0) return false;
      done += static_cast<size_t>(n);
    }
    return true;
  }

  bool is_readable() const override {
    return Buffered() || WaitFor(sock_, POLLIN, stop_fd_, deadline_);
  }
  bool is_writable() const override {
    return WaitFor(sock_, POLLOUT, stop_fd_, absl::Now() + options_.write_timeout);
  }
  ssize_t read(char* ptr, size_t size) override {
    if (budget_ <= 0) {
      over_budget_ = true;
      return -1;
    }
    while (pos_ == end_) {
      if (!Buffered() && !WaitFor(sock_, POLLIN, stop_fd_, deadline_)) return -1;
      const ssize_t n = Receive(buffer_, sizeof(buffer_));
      if (n == 0) return 0;  // the client closed its side
      if (n < 0 && errno != EAGAIN && errno != EINTR) return -1;
      if (n > 0) pos_ = 0, end_ = static_cast<size_t>(n);
    }
    const size_t n =
        std::min({size, end_ - pos_, static_cast<size_t>(budget_)});
    std::memcpy(ptr, buffer_ + pos_, n);
    pos_ += n;
    budget_ -= static_cast<int64_t>(n);
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    for (;;) {
      if (!is_writable()) return -1;
      const ssize_t n = Send(ptr, size);
      if (n >= 0 || (errno != EAGAIN && errno != EINTR)) return n;
    }
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    SocketAddress(sock_, /*peer=*/true, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    SocketAddress(sock_, /*peer=*/false, ip, port);
  }
  socket_t socket() const override { return sock_; }

 private:
  // Whether bytes can be read without waiting: in our buffer, or decrypted and held by OpenSSL
  // (which the socket's readiness does not show).
  bool Buffered() const { return pos_ < end_ || (ssl_ != nullptr && SSL_pending(ssl_) > 0); }

  // recv() and send() without blocking, through TLS when it is on: n > 0 bytes, 0 at the
  // client's end of stream (reading), or -1 with errno (EAGAIN: not now).
  ssize_t Receive(char* data, size_t size) {
    if (ssl_ == nullptr) return recv(sock_, data, size, MSG_DONTWAIT);
    const int n = SSL_read(ssl_, data, static_cast<int>(std::min<size_t>(size, INT_MAX)));
    return n > 0 ? n : TlsFailure(n);
  }
  ssize_t Send(const char* data, size_t size) {
    if (ssl_ == nullptr) return send(sock_, data, size, MSG_DONTWAIT | MSG_NOSIGNAL);
    const int n = SSL_write(ssl_, data, static_cast<int>(std::min<size_t>(size, INT_MAX)));
    return n > 0 ? n : TlsFailure(n);
  }
  ssize_t TlsFailure(int rc) {
    const int error = SSL_get_error(ssl_, rc);
    ERR_clear_error();
    if (error == SSL_ERROR_ZERO_RETURN) return 0;
    errno = error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE ? EAGAIN : ECONNRESET;
    return -1;
  }

  const int sock_;
  const int stop_fd_;
  const HttpEndpointOptions& options_;
  SSL* ssl_ = nullptr;  // HTTPS
  absl::Time deadline_ = absl::InfiniteFuture();
  std::atomic<int64_t> reading_since_{absl::ToUnixNanos(absl::Now())};
  int64_t budget_ = 0;
  bool over_budget_ = false;
  char buffer_[4096];
  size_t pos_ = 0;  // unread bytes are buffer_[pos_, end_)
  size_t end_ = 0;
};

// What the route and error handlers know of the request being served on this thread.
struct Exchange {
  Connection* connection;
  bool last_request;   // httplib already answers it with "Connection: close"
  absl::Time start;    // the request's first bytes are in (or its connection was accepted)
  bool close = false;  // the handlers ask to close the connection after the response
  int body_status = 0;  // a POST whose body was refused or not received: its error status
};
thread_local Exchange* current_exchange = nullptr;

// Set while httplib's accept loop hands over a connection the pool has no room for.
thread_local bool shedding = false;

// httplib's task queue: `threads` workers serve one connection each. A new connection that finds
// no idle worker evicts the connection that has kept a worker waiting for a request the longest,
// and waits; the newest waiting connection is served first, and beyond `max_pending` waiting the
// oldest is closed unserved. So idle, half-sent or flooding connections cannot starve a client
// that sends its request at once (a scrape).
class ConnectionPool final : public httplib::TaskQueue {
 public:
  ConnectionPool(int threads, int max_pending, std::function<void()> evict_oldest_reader)
      : max_pending_(max_pending), evict_oldest_reader_(std::move(evict_oldest_reader)) {
    // std::thread stacks are RLIMIT_STACK-sized (8 MiB by default), ample beside the static
    // TLS of OpenBLAS (60 KiB) and cuBLAS (94 KiB) that overflowed civetweb's 100 KiB stacks.
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
  }

  void enqueue(std::function<void()> serve) override {
    std::function<void()> dropped;
    {
      absl::MutexLock lock(&mu_);
      if (static_cast<int>(jobs_.size()) >= idle_) evict_oldest_reader_();
      jobs_.push_back(std::move(serve));
      if (static_cast<int>(jobs_.size()) > max_pending_ + idle_) {
        dropped = std::move(jobs_.front());
        jobs_.pop_front();
      }
    }
    if (dropped) {
      shedding = true;
      dropped();  // closes the socket (process_and_close_socket)
      shedding = false;
    }
  }

  // Serves what is still queued (the stop signal makes that quick), then joins the workers.
  void shutdown() override {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    for (std::thread& thread : threads_) thread.join();
  }

 private:
  void Work() {
    for (;;) {
      std::function<void()> serve;
      {
        absl::MutexLock lock(&mu_);
        ++idle_;
        mu_.Await(absl::Condition(
            +[](ConnectionPool* pool) ABSL_EXCLUSIVE_LOCKS_REQUIRED(pool->mu_) {
              return pool->stopping_ || !pool->jobs_.empty();
            },
            this));
        --idle_;
        if (jobs_.empty()) return;
        serve = std::move(jobs_.back());
        jobs_.pop_back();
      }
      serve();
    }
  }

  const int max_pending_;
  const std::function<void()> evict_oldest_reader_;
  std::vector<std::thread> threads_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  int idle_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

// Checks the body a request announces: 0 and its Content-Length in `length` (0 when none) if it
// may be read, else an error status: 400 for a malformed length or a chunked body, 413 for one
// over `max_bytes`.
int RequestBodyStatus(const httplib::Request& req, int64_t max_bytes, uint64_t& length) {
  length = 0;
  if (req.has_header("Transfer-Encoding")) return 400;
  if (req.get_header_value_count("Content-Length") > 1) return 400;
  if (!req.has_header("Content-Length")) return 0;
  if (!absl::SimpleAtoi(req.get_header_value("Content-Length"), &length)) return 400;
  return length > static_cast<uint64_t>(max_bytes) ? 413 : 0;
}

// The reason phrase of the error statuses this endpoint answers with.
const char* ErrorText(int status) {
  switch (status) {
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 416: return "Range Not Satisfiable";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    default: return "Error";
  }
}

// The TLS context of `options`' certificate, key and client CA (SSL_CTX_free it); INVALID_ARGUMENT
// naming the file that cannot be used.
absl::StatusOr<SSL_CTX*> MakeTlsContext(const HttpEndpointOptions& options) {
  SSL_CTX* context = SSL_CTX_new(TLS_server_method());
  if (context == nullptr) return absl::InternalError("SSL_CTX_new failed");
  auto fail = [&](const std::string& what) {
    const unsigned long error = ERR_get_error();
    ERR_clear_error();
    SSL_CTX_free(context);
    return absl::InvalidArgumentError(
        absl::StrCat(what, error != 0 ? absl::StrCat(": ", ERR_reason_error_string(error)) : ""));
  };
  SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION);
  if (SSL_CTX_use_certificate_chain_file(context, options.tls_cert_file.c_str()) != 1) {
    return fail(absl::StrCat("TLS certificate ", options.tls_cert_file));
  }
  if (SSL_CTX_use_PrivateKey_file(context, options.tls_key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(context) != 1) {
    return fail(absl::StrCat("TLS key ", options.tls_key_file, " (or it does not match ",
                             options.tls_cert_file, ")"));
  }
  if (!options.tls_client_ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(context, options.tls_client_ca_file.c_str(), nullptr) != 1) {
      return fail(absl::StrCat("TLS client CA ", options.tls_client_ca_file));
    }
    SSL_CTX_set_verify(context, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  return context;
}

}  // namespace

class HttpEndpoint::Server final : public httplib::Server {
 public:
  Server(const HttpEndpointOptions& options, std::vector<Route> routes)
      : options_(options), stop_fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    for (Route& route : routes) routes_.emplace(route.path, std::move(route));
    // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which lets a second server bind
    // the same port and take half of the connections.
    set_socket_options([](socket_t sock) {
      const int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    });
    set_keep_alive_max_count(static_cast<size_t>(options.keep_alive_max_requests));
    set_keep_alive_timeout(absl::ToInt64Seconds(options.keep_alive_timeout));
    set_payload_max_length(0);
    new_task_queue = [this] {
      return new ConnectionPool(options_.threads, options_.max_pending,
                                [this] { EvictOldestReader(); });
    };
    set_pre_routing_handler(
        [this](const httplib::Request& req, httplib::Response& res) { return Dispatch(req, res); });
    set_error_handler(HandlerWithResponse(
        [this](const httplib::Request& req, httplib::Response& res) { return OnError(req, res); }));
    set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
      res.status = 500;
    });
  }
  ~Server() override {
    close(stop_fd_);
    SSL_CTX_free(tls_);
  }

  bool ok() const { return stop_fd_ >= 0; }
  // HTTPS with this context from now on (owned).
  void SetTls(SSL_CTX* context) { tls_ = context; }

  // httplib listens with a backlog of 5: a burst of more connections than that would see its
  // SYNs dropped and retried a second later. listen() again sets a new backlog.
  void ListenBacklog(int backlog) { ::listen(svr_sock_, backlog); }

  // Ends the accept loop and makes every connection's wait return at once.
  void Stop() {
    const uint64_t one = 1;
    (void)!::write(stop_fd_, &one, sizeof(one));
    stop();
  }

 private:
  // httplib's accept loop calls this (on a pool thread) for every connection.
  bool process_and_close_socket(socket_t sock) override {
    if (!shedding) Serve(sock);
    shutdown(sock, SHUT_RDWR);
    close(sock);
    return true;
  }

  void Serve(int sock) {
    Connection connection(sock, stop_fd_, options_);
    {
      absl::MutexLock lock(&connections_mu_);
      connections_.insert(&connection);
    }
    if (tls_ == nullptr || connection.StartTls(tls_)) {
      ServeRequests(connection);
      connection.Linger();
    }
    absl::MutexLock lock(&connections_mu_);
    connections_.erase(&connection);
  }

  void EvictOldestReader() {
    absl::MutexLock lock(&connections_mu_);
    Connection* oldest = nullptr;
    for (Connection* connection : connections_) {
      if (connection->reading_since() != Connection::kNotReading &&
          (oldest == nullptr || connection->reading_since() < oldest->reading_since())) {
        oldest = connection;
      }
    }
    if (oldest != nullptr) oldest->Evict();
  }

  void ServeRequests(Connection& connection) {
    for (int served = 0; served < options_.keep_alive_max_requests; ++served) {
      if (served > 0 && !connection.AwaitNextRequest()) return;
      connection.BeginRequest();
      Exchange exchange{&connection, served + 1 == options_.keep_alive_max_requests,
                        absl::Now()};
      current_exchange = &exchange;
      bool client_closes = false;
      const bool ok = process_request(
          connection, exchange.last_request, client_closes,
          [this, &exchange](httplib::Request& req) { PrepareRequest(req, exchange); });
      current_exchange = nullptr;
      if (!ok || client_closes || exchange.close) return;
    }
  }

  // Runs after the headers are parsed, before routing (httplib's setup hook).
  void PrepareRequest(httplib::Request& req, Exchange& exchange) {
    // Range requests are answered in full (RFC 9110 allows it): httplib would build one part
    // per range in memory, so a request of overlapping ranges made a response thousands of
    // times larger than the page.
    req.ranges.clear();
    exchange.connection->HeadersRead();
    const auto route = routes_.find(req.path);
    if (req.method != "POST" || route == routes_.end() || !route->second.post) return;
    // API responses are small JSON or event streams, which must not wait in a compressor.
    req.headers.erase("Accept-Encoding");
    uint64_t length = 0;
    exchange.body_status = RequestBodyStatus(req, options_.max_body_bytes, length);
    if (exchange.body_status != 0) return;
    // curl asks before sending a body over 1 KiB; answer before reading it (not after, as
    // httplib would).
    if (req.get_header_value("Expect") == "100-continue") {
      req.headers.erase("Expect");
      constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      if (exchange.connection->write(kContinue.data(), kContinue.size()) !=
          static_cast<ssize_t>(kContinue.size())) {
        exchange.body_status = 400;
        return;
      }
    }
    if (!exchange.connection->ReadBody(length, req.body)) exchange.body_status = 400;
  }

  HandlerResponse Dispatch(const httplib::Request& req, httplib::Response& res) {
    const auto found = routes_.find(req.path);
    if (found == routes_.end()) {
      res.status = 404;
      return HandlerResponse::Handled;
    }
    const Route& route = found->second;
    const bool get = (req.method == "GET" || req.method == "HEAD") && route.get;
    const bool post = req.method == "POST" && route.post;
    uint64_t length = 0;
    if (!get && !post) {
      res.status = 405;
      res.set_header("Allow", route.get && route.post ? "GET, HEAD, POST"
                              : route.post             ? "POST"
                                                       : "GET, HEAD");
    } else if (get && RequestBodyStatus(req, 0, length) != 0) {
      res.status = RequestBodyStatus(req, 0, length);
    } else if (post && current_exchange != nullptr && current_exchange->body_status != 0) {
      res.status = current_exchange->body_status;
    } else {
      (get ? route.get : route.post)(req, res);
    }
    return HandlerResponse::Handled;
  }

  // Every response with status >= 400: a short text body, and the connection is closed after
  // it (what follows an unread or malformed request cannot be trusted to be the next one).
  HandlerResponse OnError(const httplib::Request& req, httplib::Response& res) {
    Exchange* exchange = current_exchange;
    if (exchange != nullptr) {
      if (exchange->connection->over_budget()) res.status = 431;
      exchange->close = true;
      // httplib itself adds "Connection: close" in these two cases.
      if (!exchange->last_request && req.get_header_value("Connection") != "close") {
        res.set_header("Connection", "close");
      }
    }
    // A handler's own error body (e.g. an API's JSON error) is kept.
    if (res.body.empty() && !res.content_provider_) {
      const std::string message = absl::StrCat(res.status, " ", ErrorText(res.status));
      if (options_.error_body) {
        options_.error_body(res, message);
      } else {
        res.set_content(message + "\n", "text/plain");
      }
    }
    return HandlerResponse::Handled;
  }

  const HttpEndpointOptions options_;
  const int stop_fd_;
  SSL_CTX* tls_ = nullptr;  // HTTPS when set
  absl::flat_hash_map<std::string, Route> routes_;
  // The connections being served; a connection leaves before its socket is closed.
  absl::Mutex connections_mu_;
  absl::flat_hash_set<Connection*> connections_ ABSL_GUARDED_BY(connections_mu_);
};

absl::StatusOr<std::unique_ptr<HttpEndpoint>> HttpEndpoint::Start(
    const HttpEndpointOptions& options, std::vector<Route> routes) {
  std::unique_ptr<HttpEndpoint> endpoint(new HttpEndpoint());
  endpoint->server_ = std::make_unique<Server>(options, std::move(routes));
  Server& server = *endpoint->server_;
  if (!server.ok()) return absl::InternalError(absl::StrCat("eventfd: ", strerror(errno)));
  if (!options.tls_cert_file.empty() || !options.tls_key_file.empty()) {
    absl::StatusOr<SSL_CTX*> tls = MakeTlsContext(options);
    if (!tls.ok()) return tls.status();
    server.SetTls(*tls);
  }
  errno = 0;
  if (options.port == 0) {
    endpoint->port_ = server.bind_to_any_port(options.host);
  } else if (server.bind_to_port(options.host, options.port)) {
    endpoint->port_ = options.port;
  }
  if (endpoint->port_ <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.host, ":",
                                               options.port,
                                               errno != 0 ? absl::StrCat(": ", strerror(errno))
                                                          : std::string()));
  }
  server.ListenBacklog(options.listen_backlog);
  endpoint->listener_ = std::thread([&server] { server.listen_after_bind(); });
  // Stop() only ends an accept loop that has started.
  while (!server.is_running()) absl::SleepFor(absl::Milliseconds(1));
  return endpoint;
}

bool HttpEndpoint::ClientClosed() {
  return current_exchange != nullptr && current_exchange->connection->PeerClosed();
}

absl::Time HttpEndpoint::RequestStart() {
  return current_exchange != nullptr ? current_exchange->start : absl::Now();
}

HttpEndpoint::~HttpEndpoint() {
  if (listener_.joinable()) {
    server_->Stop();
    listener_.join();
  }
}

}  // namespace lizard::server
