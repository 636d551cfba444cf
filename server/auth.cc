#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <tuple>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/descriptor.h"
#include "grpc/grpc.h"
#include "grpc/grpc_security.h"
#include "lizard/v1/lizard.grpc.pb.h"

namespace lizard::server {
namespace {

// Debian's Abseil has its own string_view type.
absl::string_view AbslView(std::string_view s) { return absl::string_view(s.data(), s.size()); }

absl::StatusOr<std::string> ReadFile(const char* flag, const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(flag, " ", path, ": cannot open (", std::strerror(errno), ")"));
  }
  absl::Cleanup close = [file] { std::fclose(file); };
  std::string contents;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file)) > 0) contents.append(buffer, n);
  if (std::ferror(file)) {
    return absl::FailedPreconditionError(
        absl::StrCat(flag, " ", path, ": cannot read (", std::strerror(errno), ")"));
  }
  return contents;
}

using X509Ptr = std::unique_ptr<X509, decltype(&X509_free)>;

// The first certificate of a PEM text; null if there is none.
X509Ptr FirstCertificate(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509Ptr cert(PEM_read_bio_X509(bio, nullptr, nullptr, nullptr), X509_free);
  BIO_free(bio);
  return cert;
}

// Checks the PEM files' contents, so that a wrong file stops startup with its name instead of
// failing every TLS handshake later.
absl::Status CheckTlsFiles(const SecurityOptions& options, const std::string& cert_pem,
                           const std::string& key_pem, const std::string& client_ca_pem) {
  const X509Ptr cert = FirstCertificate(cert_pem);
  if (cert == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-cert ", options.tls_cert_file, ": no PEM certificate in it"));
  }
  BIO* bio = BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
  const std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr), EVP_PKEY_free);
  BIO_free(bio);
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key ", options.tls_key_file, ": no unencrypted PEM private key in it"));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("--tls-key ", options.tls_key_file,
                                                   " is not the key of --tls-cert ",
                                                   options.tls_cert_file));
  }
  if (!options.tls_client_ca_file.empty() && FirstCertificate(client_ca_pem) == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-client-ca ", options.tls_client_ca_file, ": no PEM certificate in it"));
  }
  return absl::OkStatus();
}

// What ProcessAuthMetadata works with; owned by the credentials.
struct KeyCheck {
  ApiKeys keys;
  OnUnauthenticated on_unauthenticated;
};

// "Generate" for "/lizard.v1.Lizard/Generate"; empty for a path of no lizard.v1.Lizard method.
std::string_view LizardMethod(std::string_view path) {
  static const google::protobuf::ServiceDescriptor* const service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
          v1::Lizard::service_full_name());
  static const std::string prefix = absl::StrCat("/", service->full_name(), "/");
  if (!absl::StartsWith(AbslView(path), prefix)) return {};
  const google::protobuf::MethodDescriptor* method =
      service->FindMethodByName(std::string(path.substr(prefix.size())));
  if (method == nullptr) return {};
  return method->name();
}

// Runs in gRPC's server auth filter for every call, before any handler: the one place API keys
// are checked. gRPC C++ 1.51 offers no other such place: a server interceptor cannot fail a call,
// and grpc::InsecureServerCredentials() refuses an AuthMetadataProcessor; the C API attaches one
// to insecure and TLS credentials alike.
void ProcessAuthMetadata(void* state, grpc_auth_context* /*context*/, const grpc_metadata* md,
                         size_t num_md, grpc_process_auth_metadata_done_cb done, void* user_data) {
  const KeyCheck& check = *static_cast<const KeyCheck*>(state);
  auto view = [](const grpc_slice& s) {
    return std::string_view(reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(s)),
                            GRPC_SLICE_LENGTH(s));
  };
  std::string_view path;
  const grpc_metadata* authorization = nullptr;
  for (size_t i = 0; i < num_md; ++i) {
    const std::string_view key = view(md[i].key);
    if (key == ":path") path = view(md[i].value);
    if (key == "authorization") authorization = &md[i];
  }
  if (!RequiresApiKey(path)) {
    done(user_data, nullptr, 0, nullptr, 0, GRPC_STATUS_OK, nullptr);
    return;
  }
  const absl::Status status =
      check.keys.Check(authorization != nullptr ? view(authorization->value) : std::string_view());
  if (status.ok()) {
    // Consumed: gRPC removes it from the metadata handlers see, so it cannot reach a log.
    done(user_data, authorization, 1, nullptr, 0, GRPC_STATUS_OK, nullptr);
  } else {
    if (const std::string_view rpc = LizardMethod(path); !rpc.empty()) {
      check.on_unauthenticated(rpc);
    }
    const std::string message(status.message());
    done(user_data, nullptr, 0, nullptr, 0, GRPC_STATUS_UNAUTHENTICATED, message.c_str());
  }
}

// grpc::ServerCredentials around credentials made with the C API (see ProcessAuthMetadata),
// written against gRPC 1.51's interface (Debian 12).
class CoreServerCredentials final : public grpc::ServerCredentials {
 public:
  // `make` runs once the base class has initialized gRPC; its result is owned.
  explicit CoreServerCredentials(absl::FunctionRef<grpc_server_credentials*()> make)
      : creds_(make()) {}
  ~CoreServerCredentials() override { grpc_server_credentials_release(creds_); }

  grpc_server_credentials* c_creds() const { return creds_; }

  // The processor is attached through the C API (MakeServerCredentials); nothing calls this.
  void SetAuthMetadataProcessor(const std::shared_ptr<grpc::AuthMetadataProcessor>&) override {}

 private:
  int AddPortToServer(const std::string& addr, grpc_server* server) override {
    return grpc_server_add_http2_port(server, addr.c_str(), creds_);
  }

  grpc_server_credentials* const creds_;
};

}  // namespace

absl::StatusOr<ApiKeys> ApiKeys::Parse(std::string_view contents) {
  ApiKeys keys;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(AbslView(contents), '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    for (const char c : line) {
      if (c <= ' ' || c > '~') {
        // The key itself stays out of the message (it may end up in a log).
        return absl::InvalidArgumentError(
            absl::StrCat("line ", line_number, ": a key must be printable ASCII without spaces"));
      }
    }
    keys.digests_.push_back(Sha256(std::string_view(line.data(), line.size())));
  }
  if (keys.digests_.empty()) return absl::InvalidArgumentError("no key in it");
  return keys;
}

absl::StatusOr<ApiKeys> ApiKeys::FromFile(const std::string& path) {
  absl::StatusOr<std::string> contents = ReadFile("--api-keys-file", path);
  if (!contents.ok()) return contents.status();
  absl::StatusOr<ApiKeys> keys = Parse(*contents);
  if (!keys.ok()) {
    return absl::Status(keys.status().code(),
                        absl::StrCat("--api-keys-file ", path, ": ", keys.status().message()));
  }
  return keys;
}

ApiKeys::Digest ApiKeys::Sha256(std::string_view data) {
  Digest digest;
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest.data());
  return digest;
}

absl::Status ApiKeys::Check(std::string_view authorization) const {
  // The scheme is case-insensitive (RFC 7235).
  constexpr std::string_view kScheme = "Bearer ";
  if (authorization.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(AbslView(authorization.substr(0, kScheme.size())),
                              AbslView(kScheme))) {
    return absl::UnauthenticatedError(
        "this server needs an API key: send the metadata \"authorization: Bearer <key>\"");
  }
  // Digests of equal size, compared in constant time with every key: how long the comparison
  // takes tells nothing about how close the presented key came to one of ours.
  const Digest presented = Sha256(authorization.substr(kScheme.size()));
  int matches = 0;
  for (const Digest& key : digests_) {
    matches |= static_cast<int>(CRYPTO_memcmp(presented.data(), key.data(), key.size()) == 0);
  }
  if (matches == 0) return absl::UnauthenticatedError("invalid API key");
  return absl::OkStatus();
}

bool RequiresApiKey(std::string_view method_path) {
  return !absl::StartsWith(AbslView(method_path), "/grpc.health.v1.Health/") &&
         !absl::StartsWith(AbslView(method_path), "/grpc.reflection.v1alpha.ServerReflection/") &&
         !absl::StartsWith(AbslView(method_path), "/grpc.reflection.v1.ServerReflection/");
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const SecurityOptions& options, OnUnauthenticated on_unauthenticated) {
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  const bool tls = !options.tls_cert_file.empty();
  if (!tls && !options.tls_client_ca_file.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
  }
  std::string cert, key, client_ca;
  for (auto [flag, path, out] :
       {std::tuple("--tls-cert", &options.tls_cert_file, &cert),
        std::tuple("--tls-key", &options.tls_key_file, &key),
        std::tuple("--tls-client-ca", &options.tls_client_ca_file, &client_ca)}) {
    if (path->empty()) continue;
    absl::StatusOr<std::string> contents = ReadFile(flag, *path);
    if (!contents.ok()) return contents.status();
    *out = *std::move(contents);
  }
  if (tls) {
    if (absl::Status s = CheckTlsFiles(options, cert, key, client_ca); !s.ok()) return s;
  }
  std::unique_ptr<KeyCheck> check;
  if (!options.api_keys_file.empty()) {
    absl::StatusOr<ApiKeys> keys = ApiKeys::FromFile(options.api_keys_file);
    if (!keys.ok()) return keys.status();
    check = std::make_unique<KeyCheck>(KeyCheck{*std::move(keys), std::move(on_unauthenticated)});
  }

  auto credentials = std::make_shared<CoreServerCredentials>([&]() -> grpc_server_credentials* {
    if (!tls) return grpc_insecure_server_credentials_create();
    // gRPC copies the PEM strings.
    const grpc_ssl_pem_key_cert_pair pair = {key.c_str(), cert.c_str()};
    grpc_ssl_server_certificate_config* config = grpc_ssl_server_certificate_config_create(
        client_ca.empty() ? nullptr : client_ca.c_str(), &pair, 1);
    return grpc_ssl_server_credentials_create_with_options(
        grpc_ssl_server_credentials_create_options_using_config(
            client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                              : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY,
            config));
  });
  if (check != nullptr) {
    grpc_auth_metadata_processor processor;
    processor.process = ProcessAuthMetadata;
    processor.destroy = [](void* state) { delete static_cast<KeyCheck*>(state); };
    processor.state = check.release();
    grpc_server_credentials_set_auth_metadata_processor(credentials->c_creds(), processor);
  }
  return credentials;
}

std::string DescribeSecurity(const SecurityOptions& options) {
  std::string text = options.tls_cert_file.empty()        ? "plaintext"
                     : options.tls_client_ca_file.empty() ? "TLS"
                                                          : "TLS with client certificates";
  absl::StrAppend(&text, options.api_keys_file.empty()
                             ? ", no API keys"
                             : absl::StrCat(", API keys from ", options.api_keys_file));
  return text;
}

}  // namespace lizard::server
