// Optional security of the gRPC API: API keys (bearer tokens listed in a file) and TLS or mutual
// TLS from PEM files. See docs/server.md, "Security".
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/security/server_credentials.h"

namespace lizard::server {

// File paths from the command line; empty = off. Without any, the API is open and plaintext.
struct SecurityOptions {
  std::string api_keys_file;       // --api-keys-file: every call but health/reflection needs a key
  std::string tls_cert_file;       // --tls-cert: server certificate chain (with tls_key_file)
  std::string tls_key_file;        // --tls-key: its private key
  std::string tls_client_ca_file;  // --tls-client-ca: clients need a certificate signed by it
};

// The API keys a server accepts. Only their SHA-256 digests are kept, so Check compares values of
// one fixed size, in constant time, whatever the length or content of the presented key. Meant
// for any API of the server (gRPC metadata or an HTTP header carry the same value).
class ApiKeys {
 public:
  // One key per line; whitespace around a key is ignored, blank lines and lines starting with
  // '#' are skipped. A key is printable ASCII without spaces (what a metadata value can carry).
  static absl::StatusOr<ApiKeys> Parse(std::string_view contents);
  static absl::StatusOr<ApiKeys> FromFile(const std::string& path);

  // `authorization` is the value of the `authorization` metadata or header: "Bearer <key>".
  // UNAUTHENTICATED unless <key> is one of the keys; the message never contains what was sent.
  absl::Status Check(std::string_view authorization) const;

  size_t size() const { return digests_.size(); }

 private:
  using Digest = std::array<uint8_t, 32>;
  static Digest Sha256(std::string_view data);

  std::vector<Digest> digests_;
};

// Whether a call of the method with this HTTP/2 path ("/lizard.v1.Lizard/Generate") needs an API
// key: health checks and server reflection stay open for probes and tools.
bool RequiresApiKey(std::string_view method_path);

// Told of each call refused for its API key, with the lizard.v1.Lizard method it called
// ("Generate"); calls of other paths are not reported, so what an attacker sends cannot grow a
// metric's label set.
using OnUnauthenticated = std::function<void(std::string_view rpc)>;

// The gRPC listening port's credentials for `options`: TLS (mutual with a client CA) or
// plaintext, and with API keys, a check of every call before it reaches a handler. Reads and
// checks every file, so a bad one fails startup with a message that names it.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const SecurityOptions& options, OnUnauthenticated on_unauthenticated);

// For the startup log, e.g. "TLS with client certificates, API keys from /etc/lizard/keys".
std::string DescribeSecurity(const SecurityOptions& options);

}  // namespace lizard::server
