// Integration tests: the real lizard-server binary on the shipped model, driven over gRPC.
#include <chrono>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "lizard/v1/lizard.grpc.pb.h"
#include "tests/server/server_process.h"

namespace lizard {
namespace {

using testing::HttpGet;
using testing::MetricValue;
using testing::ServerProcess;

struct GenResult {
  grpc::Status status;
  std::vector<int32_t> tokens;
  std::string text;
  v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
  int messages = 0;
  int logprob_entries = 0;
  bool request_id_echoed = true;
};

GenResult Generate(v1::Lizard::Stub& stub, const v1::GenerateRequest& request) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = stub.Generate(&context, request);
  GenResult result;
  for (v1::GenerateResponse response; reader->Read(&response);) {
    ++result.messages;
    result.tokens.insert(result.tokens.end(), response.token_ids().begin(),
                         response.token_ids().end());
    result.text += response.text();
    result.logprob_entries += response.logprobs_size();
    result.request_id_echoed &= response.request_id() == request.request_id();
    if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      result.reason = response.finish_reason();
      result.usage = response.usage();
    }
  }
  result.status = reader->Finish();
  return result;
}

v1::GenerateRequest TokensRequest(const std::vector<int32_t>& input, int max_new_tokens,
                                  const std::string& session_id = "") {
  v1::GenerateRequest request;
  request.set_session_id(session_id);
  request.mutable_token_ids()->mutable_ids()->Assign(input.begin(), input.end());
  request.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  request.mutable_stopping()->set_ignore_eos(true);
  return request;
}

std::vector<int32_t> RandomTokens(std::mt19937& rng, int n) {
  std::uniform_int_distribution<int32_t> token(0, 500);  // below BOS/EOS (510, 511)
  std::vector<int32_t> out(n);
  for (int32_t& t : out) t = token(rng);
  return out;
}

std::vector<int32_t> Concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

v1::Session CreateSession(v1::Lizard::Stub& stub, const std::vector<int32_t>& prefix) {
  grpc::ClientContext context;
  v1::CreateSessionRequest request;
  if (!prefix.empty()) request.mutable_token_ids()->mutable_ids()->Assign(prefix.begin(), prefix.end());
  v1::Session session;
  grpc::Status status = stub.CreateSession(&context, request, &session);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return session;
}

grpc::Status GetSession(v1::Lizard::Stub& stub, const std::string& id, v1::Session* out) {
  grpc::ClientContext context;
  v1::GetSessionRequest request;
  request.set_session_id(id);
  return stub.GetSession(&context, request, out);
}

// One server for the tests below (each gtest process starts its own).
class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess({"--max-new-tokens-limit", "512", "--max-input-tokens", "256",
                                 "--max-session-ttl", "1h"});
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override {
    stub_ = v1::Lizard::NewStub(
        grpc::CreateChannel(server_->grpc_address(), grpc::InsecureChannelCredentials()));
  }

  static ServerProcess* server_;
  std::unique_ptr<v1::Lizard::Stub> stub_;
};
ServerProcess* ServerTest::server_ = nullptr;

TEST_F(ServerTest, StreamsTokensTextAndUsage) {
  v1::GenerateRequest request;
  request.set_text("Hello there, lizard!");
  request.mutable_stopping()->set_max_new_tokens(20);
  request.mutable_stopping()->set_ignore_eos(true);
  request.set_request_id("req-1");
  request.set_logprobs(3);
  GenResult r = Generate(*stub_, request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.tokens.size(), 20u);
  EXPECT_EQ(r.reason, v1::LENGTH);
  EXPECT_EQ(r.usage.generated_tokens(), 20);
  EXPECT_GT(r.usage.prompt_tokens(), 1);
  EXPECT_EQ(r.usage.session_tokens(), r.usage.prompt_tokens() + 20);
  EXPECT_EQ(r.logprob_entries, 20);
  EXPECT_TRUE(r.request_id_echoed);
  EXPECT_GT(r.messages, 1);  // streamed, not one final message

  // The streamed text deltas add up to the decoded non-special tokens.
  v1::DetokenizeRequest detok;
  for (int32_t t : r.tokens) {
    if (t < 510) detok.add_token_ids(t);
  }
  grpc::ClientContext context;
  v1::DetokenizeResponse decoded;
  ASSERT_TRUE(stub_->Detokenize(&context, detok, &decoded).ok());
  EXPECT_EQ(r.text, decoded.text());
}

TEST_F(ServerTest, ConcurrentStreamsMatchSequentialAndBatch) {
  constexpr int kStreams = 32;
  std::mt19937 rng(7);
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < kStreams; ++i) {
    v1::GenerateRequest request = TokensRequest(RandomTokens(rng, 5 + i), 24);
    if (i % 2 == 1) {  // seeded sampling must not depend on the batch either
      request.mutable_sampling()->set_temperature(0.8f);
      request.mutable_sampling()->set_top_p(0.9f);
      request.mutable_sampling()->set_seed(1000 + i);
    }
    requests.push_back(request);
  }
  std::vector<GenResult> sequential;
  for (const auto& request : requests) sequential.push_back(Generate(*stub_, request));

  std::vector<GenResult> concurrent(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] { concurrent[i] = Generate(*stub_, requests[i]); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(sequential[i].status.ok()) << sequential[i].status.error_message();
    ASSERT_TRUE(concurrent[i].status.ok()) << concurrent[i].status.error_message();
    EXPECT_EQ(sequential[i].tokens.size(), 24u);
    EXPECT_EQ(sequential[i].tokens, concurrent[i].tokens) << "stream " << i;
  }

  const std::string page = HttpGet(server_->metrics_port(), "/metrics");
  const double steps = MetricValue(page, "lizard_batch_size_count");
  const double single = MetricValue(page, "lizard_batch_size_bucket{le=\"1\"}");
  EXPECT_GT(steps - single, 0) << "no engine step ran more than one sequence\n" << page;
  EXPECT_GE(MetricValue(page, "lizard_generated_tokens_total"), 2 * kStreams * 24);
  EXPECT_GE(MetricValue(page, "lizard_requests_total{code=\"OK\",rpc=\"Generate\"}"),
            2 * kStreams);
}

TEST_F(ServerTest, SlowReaderDoesNotStallOthers) {
  // A stream nobody reads for a while must not hold up the engine for the others, and must
  // still deliver every token (merged into fewer messages if its writes back up).
  grpc::ClientContext slow_context;
  v1::GenerateRequest slow_request = TokensRequest({1, 2, 3}, 500);
  slow_request.set_logprobs(20);
  auto slow = stub_->Generate(&slow_context, slow_request);

  const auto start = std::chrono::steady_clock::now();
  GenResult fast = Generate(*stub_, TokensRequest({4, 5, 6}, 20));
  ASSERT_TRUE(fast.status.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));

  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  std::vector<int32_t> tokens;
  int logprobs = 0;
  for (v1::GenerateResponse r; slow->Read(&r);) {
    tokens.insert(tokens.end(), r.token_ids().begin(), r.token_ids().end());
    logprobs += r.logprobs_size();
  }
  grpc::Status slow_status = slow->Finish();
  EXPECT_TRUE(slow_status.ok()) << slow_status.error_message();
  EXPECT_EQ(tokens, Generate(*stub_, slow_request).tokens);
  EXPECT_EQ(logprobs, 500);
}

TEST_F(ServerTest, TwoSessionTurnsEqualOneShot) {
  std::mt19937 rng(11);
  const std::vector<int32_t> prefix = RandomTokens(rng, 30), a = RandomTokens(rng, 7),
                             b = RandomTokens(rng, 9);
  v1::Session session = CreateSession(*stub_, prefix);
  EXPECT_EQ(session.num_tokens(), 30);

  GenResult turn1 = Generate(*stub_, TokensRequest(a, 12, session.session_id()));
  ASSERT_TRUE(turn1.status.ok()) << turn1.status.error_message();
  GenResult turn2 = Generate(*stub_, TokensRequest(b, 12, session.session_id()));
  ASSERT_TRUE(turn2.status.ok()) << turn2.status.error_message();
  EXPECT_EQ(turn2.usage.session_tokens(), 30 + 7 + 12 + 9 + 12);

  GenResult one_shot = Generate(*stub_, TokensRequest(Concat({prefix, a, turn1.tokens, b}), 12));
  ASSERT_TRUE(one_shot.status.ok());
  EXPECT_EQ(turn2.tokens, one_shot.tokens);

  v1::Session after;
  ASSERT_TRUE(GetSession(*stub_, session.session_id(), &after).ok());
  EXPECT_EQ(after.num_tokens(), 30 + 7 + 12 + 9 + 12);
  EXPECT_EQ(after.location(), v1::DEVICE);
  EXPECT_GT(after.state_bytes(), 0);
  EXPECT_GE(after.last_used_at().seconds(), after.created_at().seconds());
  EXPECT_GT(after.expires_at().seconds(), after.last_used_at().seconds());
}

TEST_F(ServerTest, ForkCopiesState) {
  std::mt19937 rng(13);
  const std::vector<int32_t> prefix = RandomTokens(rng, 20), x = RandomTokens(rng, 5);
  v1::Session original = CreateSession(*stub_, prefix);
  grpc::ClientContext context;
  v1::ForkSessionRequest fork_request;
  fork_request.set_session_id(original.session_id());
  v1::Session fork;
  ASSERT_TRUE(stub_->ForkSession(&context, fork_request, &fork).ok());
  EXPECT_NE(fork.session_id(), original.session_id());
  EXPECT_EQ(fork.num_tokens(), 20);

  GenResult on_fork = Generate(*stub_, TokensRequest(x, 10, fork.session_id()));
  GenResult on_original = Generate(*stub_, TokensRequest(x, 10, original.session_id()));
  ASSERT_TRUE(on_fork.status.ok() && on_original.status.ok());
  EXPECT_EQ(on_fork.tokens, on_original.tokens);
  GenResult one_shot = Generate(*stub_, TokensRequest(Concat({prefix, x}), 10));
  EXPECT_EQ(on_fork.tokens, one_shot.tokens);
}

TEST_F(ServerTest, DeleteFreesSession) {
  v1::Session session = CreateSession(*stub_, {1, 2, 3});
  v1::DeleteSessionRequest request;
  request.set_session_id(session.session_id());
  v1::DeleteSessionResponse response;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub_->DeleteSession(&context, request, &response).ok());
  }
  v1::Session out;
  EXPECT_EQ(GetSession(*stub_, session.session_id(), &out).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Generate(*stub_, TokensRequest({4}, 2, session.session_id())).status.error_code(),
            grpc::StatusCode::NOT_FOUND);
  grpc::ClientContext context;
  EXPECT_EQ(stub_->DeleteSession(&context, request, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServerTest, ConcurrentUseOfSessionIsAborted) {
  v1::Session session = CreateSession(*stub_, {1, 2, 3});
  grpc::ClientContext long_context;
  auto reader = stub_->Generate(&long_context, TokensRequest({4, 5}, 500, session.session_id()));
  v1::GenerateResponse first;
  ASSERT_TRUE(reader->Read(&first));

  GenResult second = Generate(*stub_, TokensRequest({6}, 2, session.session_id()));
  EXPECT_EQ(second.status.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_NE(second.status.error_message().find("session busy"), std::string::npos);

  long_context.TryCancel();
  for (v1::GenerateResponse r; reader->Read(&r);) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(ServerTest, DeletingABusySessionCancelsItsStream) {
  v1::Session session = CreateSession(*stub_, {1, 2, 3});
  grpc::ClientContext context;
  auto reader = stub_->Generate(&context, TokensRequest({4}, 500, session.session_id()));
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  {
    grpc::ClientContext delete_context;
    v1::DeleteSessionRequest request;
    request.set_session_id(session.session_id());
    v1::DeleteSessionResponse deleted;
    ASSERT_TRUE(stub_->DeleteSession(&delete_context, request, &deleted).ok());
  }
  int tokens = response.token_ids_size();
  v1::FinishReason reason = response.finish_reason();
  while (reader->Read(&response)) {
    tokens += response.token_ids_size();
    reason = response.finish_reason();
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(reason, v1::CANCELLED);
  EXPECT_LT(tokens, 500);
  v1::Session out;
  EXPECT_EQ(GetSession(*stub_, session.session_id(), &out).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServerTest, DeadlineStopsGeneration) {
  v1::Session session = CreateSession(*stub_, {1, 2, 3});
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(50));
    auto reader = stub_->Generate(&context, TokensRequest({4}, 512, session.session_id()));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // not reading: deadline hits
    for (v1::GenerateResponse r; reader->Read(&r);) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  // The generation stopped: the session is free again and holds fewer than 512 new tokens.
  GenResult next;
  for (int attempt = 0; attempt < 200; ++attempt) {
    next = Generate(*stub_, TokensRequest({5}, 1, session.session_id()));
    if (next.status.error_code() != grpc::StatusCode::ABORTED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_LT(next.usage.session_tokens(), 3 + 1 + 512 + 1 + 1);
}

TEST_F(ServerTest, CancelledStreamLeavesConsistentSession) {
  std::mt19937 rng(17);
  const std::vector<int32_t> prefix = RandomTokens(rng, 16), x = RandomTokens(rng, 4);
  // What the session would generate without a cancel (greedy).
  GenResult full = Generate(*stub_, TokensRequest(prefix, 400));
  ASSERT_TRUE(full.status.ok());

  v1::Session session = CreateSession(*stub_, {});
  std::vector<int32_t> received;
  {
    grpc::ClientContext context;
    auto reader = stub_->Generate(&context, TokensRequest(prefix, 400, session.session_id()));
    v1::GenerateResponse response;
    while (received.size() < 3 && reader->Read(&response)) {
      received.insert(received.end(), response.token_ids().begin(), response.token_ids().end());
    }
    context.TryCancel();
    while (reader->Read(&response)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  ASSERT_GE(received.size(), 3u);
  EXPECT_EQ(received, std::vector<int32_t>(full.tokens.begin(),
                                           full.tokens.begin() + received.size()));

  // The session holds the prefix and some (at least the streamed) part of the continuation.
  GenResult next;
  for (int attempt = 0; attempt < 200; ++attempt) {  // the cancel lands within one step
    next = Generate(*stub_, TokensRequest(x, 8, session.session_id()));
    if (next.status.error_code() != grpc::StatusCode::ABORTED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(next.status.ok()) << next.status.error_message();
  const int64_t kept = next.usage.session_tokens() - 16 - 4 - 8;
  ASSERT_GE(kept, static_cast<int64_t>(received.size()));
  ASSERT_LT(kept, 400);
  const std::vector<int32_t> continuation(full.tokens.begin(), full.tokens.begin() + kept);
  GenResult reference = Generate(*stub_, TokensRequest(Concat({prefix, continuation, x}), 8));
  EXPECT_EQ(next.tokens, reference.tokens);
}

TEST_F(ServerTest, BadInputGetsStatusAndServerKeepsServing) {
  struct Case {
    std::string name;
    v1::GenerateRequest request;
    grpc::StatusCode code;
    std::string message_part;
  };
  std::vector<Case> cases;
  auto add = [&](std::string name, v1::GenerateRequest r, grpc::StatusCode code,
                 std::string part) { cases.push_back({name, r, code, part}); };
  v1::GenerateRequest no_input;
  add("no input", no_input, grpc::StatusCode::INVALID_ARGUMENT, "empty");
  v1::GenerateRequest empty_text;
  empty_text.set_text("");
  add("empty text", empty_text, grpc::StatusCode::INVALID_ARGUMENT, "empty");
  add("token id >= vocab", TokensRequest({1, 512}, 4), grpc::StatusCode::INVALID_ARGUMENT,
      "vocabulary");
  add("negative token id", TokensRequest({-1}, 4), grpc::StatusCode::INVALID_ARGUMENT,
      "vocabulary");
  v1::GenerateRequest r = TokensRequest({1}, 4);
  r.mutable_sampling()->set_temperature(-0.5f);
  add("temperature < 0", r, grpc::StatusCode::INVALID_ARGUMENT, "temperature");
  r = TokensRequest({1}, 4);
  r.mutable_sampling()->set_top_p(0.0f);
  add("top_p = 0", r, grpc::StatusCode::INVALID_ARGUMENT, "top_p");
  r.mutable_sampling()->set_top_p(1.5f);
  add("top_p > 1", r, grpc::StatusCode::INVALID_ARGUMENT, "top_p");
  add("max_new_tokens over the limit", TokensRequest({1}, 513),
      grpc::StatusCode::INVALID_ARGUMENT, "max_new_tokens");
  add("input over the limit", TokensRequest(std::vector<int32_t>(257, 1), 4),
      grpc::StatusCode::INVALID_ARGUMENT, "max-input-tokens");
  r = TokensRequest({1}, 4);
  r.mutable_stopping()->add_stop_token_ids(9999);
  add("stop token id >= vocab", r, grpc::StatusCode::INVALID_ARGUMENT, "stop_token_ids");
  v1::GenerateRequest bad_utf8;
  bad_utf8.set_text(std::string("ab\xff\xfe", 4));  // the C++ client sends it (with a log line)
  add("malformed UTF-8", bad_utf8, grpc::StatusCode::INVALID_ARGUMENT, "UTF-8");
  add("unknown session", TokensRequest({1}, 4, "0123456789abcdef0123456789abcdef"),
      grpc::StatusCode::NOT_FOUND, "no session");

  for (const Case& c : cases) {
    GenResult result = Generate(*stub_, c.request);
    EXPECT_EQ(result.status.error_code(), c.code) << c.name;
    EXPECT_NE(result.status.error_message().find(c.message_part), std::string::npos)
        << c.name << ": " << result.status.error_message();
    EXPECT_TRUE(result.tokens.empty()) << c.name;
  }

  grpc::ClientContext ttl_context;
  v1::CreateSessionRequest too_long;
  too_long.set_ttl_seconds(7200);
  v1::Session session;
  grpc::Status ttl_status = stub_->CreateSession(&ttl_context, too_long, &session);
  EXPECT_EQ(ttl_status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(ttl_status.error_message().find("ttl_seconds"), std::string::npos);

  grpc::ClientContext fork_context;
  v1::ForkSessionRequest fork;
  fork.set_session_id("nope");
  EXPECT_EQ(stub_->ForkSession(&fork_context, fork, &session).error_code(),
            grpc::StatusCode::NOT_FOUND);

  grpc::ClientContext detok_context;
  v1::DetokenizeRequest detok;
  detok.add_token_ids(100000);
  v1::DetokenizeResponse detok_out;
  EXPECT_EQ(stub_->Detokenize(&detok_context, detok, &detok_out).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  GenResult ok = Generate(*stub_, TokensRequest({1, 2, 3}, 5));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.tokens.size(), 5u);
}

TEST(SessionExpiryTest, IdleSessionExpiresAndLimitApplies) {
  ServerProcess server({"--session-ttl", "1s", "--max-sessions", "2"});
  auto stub = v1::Lizard::NewStub(
      grpc::CreateChannel(server.grpc_address(), grpc::InsecureChannelCredentials()));
  v1::Session a = CreateSession(*stub, {1, 2});
  v1::Session b = CreateSession(*stub, {3});
  {
    grpc::ClientContext context;
    v1::Session c;
    grpc::Status status = stub->CreateSession(&context, v1::CreateSessionRequest(), &c);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  v1::Session out;
  EXPECT_TRUE(GetSession(*stub, a.session_id(), &out).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(1800));
  EXPECT_EQ(GetSession(*stub, a.session_id(), &out).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(GetSession(*stub, b.session_id(), &out).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(MetricValue(HttpGet(server.metrics_port(), "/metrics"), "lizard_sessions"), 0);
  CreateSession(*stub, {4});  // room again
}

TEST(StateSpillTest, SpillAndRestoreGiveSameTokens) {
  // 4 device slots for 10 sessions: idle sessions move to host memory and come back.
  ServerProcess server({"--device-state-slots", "4", "--max-running", "4"});
  auto stub = v1::Lizard::NewStub(
      grpc::CreateChannel(server.grpc_address(), grpc::InsecureChannelCredentials()));
  std::mt19937 rng(23);
  constexpr int kSessions = 10;
  std::vector<std::vector<int32_t>> history(kSessions);
  std::vector<std::string> ids;
  for (int i = 0; i < kSessions; ++i) {
    history[i] = RandomTokens(rng, 10 + i);
    ids.push_back(CreateSession(*stub, history[i]).session_id());
  }
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < kSessions; ++i) {
      const std::vector<int32_t> x = RandomTokens(rng, 3);
      GenResult turn = Generate(*stub, TokensRequest(x, 6, ids[i]));
      ASSERT_TRUE(turn.status.ok()) << turn.status.error_message();
      history[i] = Concat({history[i], x});
      GenResult one_shot = Generate(*stub, TokensRequest(history[i], 6));
      ASSERT_TRUE(one_shot.status.ok()) << one_shot.status.error_message();
      EXPECT_EQ(turn.tokens, one_shot.tokens) << "session " << i << " round " << round;
      history[i] = Concat({history[i], turn.tokens});
    }
  }
  const std::string page = HttpGet(server.metrics_port(), "/metrics");
  EXPECT_GT(MetricValue(page, "lizard_state_evictions_total"), 0) << page;
  EXPECT_GT(MetricValue(page, "lizard_state_restores_total"), 0) << page;
  v1::Session first;
  ASSERT_TRUE(GetSession(*stub, ids[0], &first).ok());
  EXPECT_EQ(first.location(), v1::HOST);  // least recently used: spilled
}

}  // namespace
}  // namespace lizard
