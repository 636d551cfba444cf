// ApiKeys (key file parsing, the bearer check), which methods need a key, and the security flag
// combinations MakeServerCredentials refuses. The real server with keys and TLS is tested by
// test_security.py.
#include "server/auth.h"

#include <cstdio>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace lizard::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kKey[] = "k3y-0123456789abcdef";

TEST(ApiKeysTest, ParseSkipsCommentsBlankLinesAndWhitespace) {
  absl::StatusOr<ApiKeys> keys =
      ApiKeys::Parse("# production keys\n\n   \n  first-key  \n\tsecond-key\r\n#third-key\nlast");
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(keys->size(), 3u);
  EXPECT_TRUE(keys->Check("Bearer first-key").ok());
  EXPECT_TRUE(keys->Check("Bearer second-key").ok());   // the \r of a CRLF file is not part of it
  EXPECT_TRUE(keys->Check("Bearer last").ok());         // no newline at the end
  EXPECT_FALSE(keys->Check("Bearer #third-key").ok());  // a comment, not a key
  EXPECT_FALSE(keys->Check("Bearer  first-key").ok());
}

TEST(ApiKeysTest, ParseRefusesNoKeyAndKeysAMetadataValueCannotCarry) {
  for (const char* contents : {"", "\n\n", "# only a comment\n  # another\n"}) {
    absl::StatusOr<ApiKeys> keys = ApiKeys::Parse(contents);
    EXPECT_EQ(keys.status().code(), absl::StatusCode::kInvalidArgument) << contents;
    EXPECT_THAT(keys.status().message(), HasSubstr("no key")) << contents;
  }
  for (const char* bad : {"two words", "tab\there", "caf\xc3\xa9", "bell\a"}) {
    absl::StatusOr<ApiKeys> keys = ApiKeys::Parse(std::string("good-key\n# x\n") + bad + "\n");
    EXPECT_EQ(keys.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(keys.status().message(), HasSubstr("line 3")) << bad;
    EXPECT_THAT(keys.status().message(), Not(HasSubstr(bad))) << "the key is never echoed";
  }
}

TEST(ApiKeysTest, CheckAcceptsExactlyTheKeys) {
  absl::StatusOr<ApiKeys> keys = ApiKeys::Parse(std::string(kKey) + "\nx\n");
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_TRUE(keys->Check(std::string("Bearer ") + kKey).ok());
  EXPECT_TRUE(keys->Check(std::string("bearer ") + kKey).ok());  // the scheme ignores case
  EXPECT_TRUE(keys->Check(std::string("BEARER ") + kKey).ok());
  EXPECT_TRUE(keys->Check("Bearer x").ok());

  const std::string key = kKey;
  std::string flipped = key;
  flipped.back() ^= 1;
  for (const std::string& wrong :
       {flipped, key.substr(0, key.size() - 1), key + "0", std::string("0") + key, std::string("y"),
        std::string("xx"), std::string(1000, 'k')}) {
    const absl::Status status = keys->Check("Bearer " + wrong);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << wrong;
    EXPECT_EQ(status.message(), "invalid API key");
  }
}

TEST(ApiKeysTest, CheckWantsTheBearerScheme) {
  absl::StatusOr<ApiKeys> keys = ApiKeys::Parse(kKey);
  ASSERT_TRUE(keys.ok()) << keys.status();
  for (const std::string& header : {std::string(), std::string(kKey), std::string("Bearer"),
                                    std::string("Bearer "), std::string("Basic ") + kKey,
                                    std::string("Bearer:") + kKey, std::string("Bearer") + kKey}) {
    const absl::Status status = keys->Check(header);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << header;
    EXPECT_THAT(status.message(), HasSubstr("authorization: Bearer <key>")) << header;
    EXPECT_THAT(status.message(), Not(HasSubstr(kKey)));
  }
}

TEST(ApiKeysTest, FromFileNamesTheFile) {
  const std::string missing = ::testing::TempDir() + "/no-such-keys-file";
  absl::StatusOr<ApiKeys> keys = ApiKeys::FromFile(missing);
  EXPECT_FALSE(keys.ok());
  EXPECT_THAT(keys.status().message(), HasSubstr("--api-keys-file " + missing + ": cannot open"));

  const std::string path = ::testing::TempDir() + "/auth_test_keys";
  std::FILE* file = std::fopen(path.c_str(), "w");
  ASSERT_NE(file, nullptr);
  std::fputs("# nothing yet\n", file);
  std::fclose(file);
  keys = ApiKeys::FromFile(path);
  EXPECT_THAT(keys.status().message(), HasSubstr("--api-keys-file " + path + ": no key in it"));
  std::remove(path.c_str());
}

TEST(RequiresApiKeyTest, OnlyHealthAndReflectionAreOpen) {
  EXPECT_FALSE(RequiresApiKey("/grpc.health.v1.Health/Check"));
  EXPECT_FALSE(RequiresApiKey("/grpc.health.v1.Health/Watch"));
  EXPECT_FALSE(RequiresApiKey("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"));
  EXPECT_FALSE(RequiresApiKey("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
  EXPECT_TRUE(RequiresApiKey("/lizard.v1.Lizard/Generate"));
  EXPECT_TRUE(RequiresApiKey("/lizard.v1.Lizard/GetModelInfo"));
  EXPECT_TRUE(RequiresApiKey("/grpc.health.v1.HealthX/Check"));
  EXPECT_TRUE(RequiresApiKey("/no.such.Service/Method"));
  EXPECT_TRUE(RequiresApiKey(""));  // no path: refused, not let through
}

TEST(MakeServerCredentialsTest, RefusesIncompleteTlsFlags) {
  SecurityOptions cert_alone;
  cert_alone.tls_cert_file = "server.pem";
  SecurityOptions key_alone;
  key_alone.tls_key_file = "server.key";
  for (const SecurityOptions& options : {cert_alone, key_alone}) {
    EXPECT_THAT(MakeServerCredentials(options, nullptr).status().message(),
                HasSubstr("--tls-cert and --tls-key go together"));
  }
  SecurityOptions ca_alone;
  ca_alone.tls_client_ca_file = "ca.pem";
  EXPECT_THAT(MakeServerCredentials(ca_alone, nullptr).status().message(),
              HasSubstr("--tls-client-ca needs --tls-cert and --tls-key"));
}

TEST(MakeServerCredentialsTest, PlaintextWithoutFlags) {
  EXPECT_TRUE(MakeServerCredentials(SecurityOptions(), nullptr).ok());
  EXPECT_EQ(DescribeSecurity(SecurityOptions()), "plaintext, no API keys");
}

}  // namespace
}  // namespace lizard::server
