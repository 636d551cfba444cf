// Fuzzes the HTTP endpoint that serves /metrics (and a POST route) with arbitrary request bytes, sent over a real
// 127.0.0.1 connection (so the endpoint's own socket reading, limits and keep-alive loop are
// exercised, not only httplib's parser). The server must answer with one of the statuses it is
// meant to use, or close without answering, and never crash; ASan/UBSan check its memory.
// Note: Debian's libcpp-httplib is not instrumented, so coverage guidance sees our code only.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "server/http_endpoint.h"

namespace {

int Port() {
  // Kept reachable (not leaked) for as long as the process runs.
  static lizard::server::HttpEndpoint* const endpoint = [] {
    lizard::server::HttpEndpointOptions options;
    options.request_timeout = absl::Seconds(1);  // inputs are half-closed: never waited on
    options.max_body_bytes = 4096;
    auto endpoint = lizard::server::HttpEndpoint::Start(
        options, {{"/metrics",
                   [](const httplib::Request&, httplib::Response& res) {
                     res.set_content("# TYPE up gauge\nup 1\n", "text/plain; version=0.0.4");
                   }},
                  // POST bodies (Content-Length, Expect: 100-continue, the size limit).
                  {"/echo", nullptr, [](const httplib::Request& req, httplib::Response& res) {
                     res.set_content(req.body, "application/octet-stream");
                   }}});
    if (!endpoint.ok()) {
      std::fprintf(stderr, "%s\n", endpoint.status().ToString().c_str());
      std::abort();
    }
    return endpoint->release();
  }();
  return endpoint->port();
}

// Sends `data`, half-closes, and returns what the server sent until it closed.
std::string Exchange(const uint8_t* data, size_t size) {
  const int sock = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(Port()));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const timeval timeout{10, 0};
  setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  // libFuzzer's timer signal interrupts a connect in progress, which then goes on (EALREADY).
  while (connect(sock, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 &&
         errno != EISCONN) {
    if (errno != EINTR && errno != EALREADY) {
      std::fprintf(stderr, "connect: %s\n", std::strerror(errno));
      std::abort();
    }
    usleep(1000);
  }
  for (size_t sent = 0; sent < size;) {
    const ssize_t n = send(sock, data + sent, size - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server closed early (a limit); what it answered still counts
    sent += static_cast<size_t>(n);
  }
  shutdown(sock, SHUT_WR);
  std::string response;
  char buffer[65536];
  for (;;) {
    const ssize_t n = recv(sock, buffer, sizeof(buffer), 0);
    if (n <= 0) break;
    response.append(buffer, static_cast<size_t>(n));
  }
  // Reset rather than close: ~2000 connections a second would otherwise use up the ephemeral
  // ports in TIME_WAIT.
  const linger reset{1, 0};
  setsockopt(sock, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
  close(sock);
  return response;
}

bool AllowedStatus(int status) {
  switch (status) {
    case 100: case 200: case 400: case 404: case 405: case 413: case 414: case 416: case 431:
      return true;
    default:
      return false;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string response = Exchange(data, size);
  if (response.empty()) return 0;  // closed without a response (e.g. no request line)
  int status = 0;
  if (std::sscanf(response.c_str(), "HTTP/1.1 %3d ", &status) != 1 || !AllowedStatus(status)) {
    std::fprintf(stderr, "unexpected response: %.200s\n", response.c_str());
    std::abort();
  }
  return 0;
}
