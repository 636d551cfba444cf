#include "server/reflection_v1.h"

#include <utility>

#include "grpcpp/generic/generic_stub.h"

namespace lizard::server {
namespace {

constexpr char kV1Method[] = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
constexpr char kV1AlphaMethod[] = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

// Answers a call at once with `status`.
class Refusal final : public grpc::ServerGenericBidiReactor {
 public:
  explicit Refusal(grpc::Status status) { Finish(std::move(status)); }
  void OnDone() override { delete this; }
};

}  // namespace

// One v1 call relayed to v1alpha, lock-step so that each buffer has one user at a time: a
// request is read from the client, then written upstream, then the next one read; a response
// is read from upstream, then written to the client, then the next one read. The upstream call
// is started on from the client's reactions, so it holds two holds (gRPC's rule), one per
// direction, released when that direction is over; only then can the upstream call end, and
// its status finishes the client's call with nothing of the client's call in flight.
class ReflectionV1Relay::Call final : public grpc::ServerGenericBidiReactor {
 public:
  explicit Call(const std::shared_ptr<grpc::Channel>& channel) : upstream_(this) {
    grpc::GenericStub stub(channel);
    stub.PrepareBidiStreamingCall(&upstream_context_, kV1AlphaMethod, grpc::StubOptions(),
                                  &upstream_);
    upstream_.AddMultipleHolds(2);
    upstream_.StartRead(&response_);
    upstream_.StartCall();
    StartRead(&request_);
  }

  // The client's side.
  void OnReadDone(bool ok) override {
    if (ok) {
      upstream_.StartWrite(&request_);
    } else {
      upstream_.StartWritesDone();  // the client asks no more (or is gone)
      upstream_.RemoveHold();       // requests are over
    }
  }
  void OnWriteDone(bool ok) override {
    if (ok) {
      upstream_.StartRead(&response_);
    } else {
      upstream_context_.TryCancel();  // the client is gone
      upstream_.RemoveHold();         // responses are over
    }
  }
  void OnCancel() override { upstream_context_.TryCancel(); }
  void OnDone() override { delete this; }  // after Finish, which the upstream's end calls

 private:
  // The upstream side: the call to v1alpha.
  class Upstream final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    explicit Upstream(Call* call) : call_(call) {}
    void OnReadDone(bool ok) override {
      if (ok) {
        call_->StartWrite(&call_->response_);
      } else {
        RemoveHold();  // responses are over
      }
    }
    void OnWriteDone(bool ok) override {
      if (ok) {
        call_->StartRead(&call_->request_);
      } else {
        RemoveHold();  // requests are over
      }
    }
    void OnDone(const grpc::Status& status) override { call_->Finish(status); }

   private:
    Call* const call_;
  };

  grpc::ClientContext upstream_context_;
  Upstream upstream_;
  grpc::ByteBuffer request_;   // from the client, to upstream
  grpc::ByteBuffer response_;  // from upstream, to the client
};

void ReflectionV1Relay::Attach(grpc::Server* server) {
  std::shared_ptr<grpc::Channel> channel = server->InProcessChannel(grpc::ChannelArguments());
  absl::MutexLock lock(&mu_);
  channel_ = std::move(channel);
}

grpc::ServerGenericBidiReactor* ReflectionV1Relay::CreateReactor(
    grpc::GenericCallbackServerContext* context) {
  if (context->method() != kV1Method) {
    return new Refusal(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, ""));
  }
  std::shared_ptr<grpc::Channel> channel;
  {
    absl::MutexLock lock(&mu_);
    channel = channel_;
  }
  if (channel == nullptr) {
    return new Refusal(grpc::Status(grpc::StatusCode::UNAVAILABLE, "starting"));
  }
  return new Call(channel);
}

}  // namespace lizard::server
