#include "server/reflection_v1.h"

#include <utility>

#include "absl/synchronization/mutex.h"
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

// One v1 call relayed to v1alpha. Lock-step, so that each buffer has one user at a time: a
// request is read from the client, then written upstream, then the next one read; a response
// is read from upstream, then written to the client, then the next one read. The upstream
// call's status finishes the client's call (once no write to the client is in flight).
class ReflectionV1Relay::Call final : public grpc::ServerGenericBidiReactor {
 public:
  explicit Call(const std::shared_ptr<grpc::Channel>& channel) : upstream_(this) {
    grpc::GenericStub stub(channel);
    stub.PrepareBidiStreamingCall(&upstream_context_, kV1AlphaMethod, grpc::StubOptions(),
                                  &upstream_);
    upstream_.StartRead(&response_);
    upstream_.StartCall();
    StartRead(&request_);
  }

  // The client's side.
  void OnReadDone(bool ok) override {
    if (ok) {
      upstream_.StartWrite(&request_);
    } else {
      upstream_.StartWritesDone();  // the client asks no more
    }
  }
  void OnWriteDone(bool ok) override {
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!upstream_done_) {
        if (ok) {
          upstream_.StartRead(&response_);
        } else {
          upstream_context_.TryCancel();  // the client is gone
        }
        return;
      }
      status = upstream_status_;
    }
    Finish(status);  // last: OnDone may delete this at once
  }
  void OnCancel() override { upstream_context_.TryCancel(); }
  void OnDone() override { delete this; }  // after Finish, which follows the upstream's end

 private:
  // The upstream side: the call to v1alpha.
  class Upstream final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    explicit Upstream(Call* call) : call_(call) {}
    void OnReadDone(bool ok) override {
      if (!ok) return;  // no more responses; OnDone follows
      absl::MutexLock lock(&call_->mu_);
      call_->writing_ = true;
      call_->StartWrite(&call_->response_);
    }
    void OnWriteDone(bool ok) override {
      if (ok) call_->StartRead(&call_->request_);
    }
    void OnDone(const grpc::Status& status) override {
      {
        absl::MutexLock lock(&call_->mu_);
        call_->upstream_status_ = status;
        call_->upstream_done_ = true;
        if (call_->writing_) return;  // the write's end finishes the call
      }
      call_->Finish(status);  // last: OnDone may delete the call at once
    }

   private:
    Call* const call_;
  };

  grpc::ClientContext upstream_context_;
  Upstream upstream_;
  grpc::ByteBuffer request_;   // from the client, to upstream
  grpc::ByteBuffer response_;  // from upstream, to the client
  absl::Mutex mu_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;  // a response is being written to the client
  bool upstream_done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status upstream_status_ ABSL_GUARDED_BY(mu_);
};

void ReflectionV1Relay::Attach(grpc::Server* server) {
  channel_ = server->InProcessChannel(grpc::ChannelArguments());
}

grpc::ServerGenericBidiReactor* ReflectionV1Relay::CreateReactor(
    grpc::GenericCallbackServerContext* context) {
  if (context->method() != kV1Method) {
    return new Refusal(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, ""));
  }
  if (channel_ == nullptr) {
    return new Refusal(grpc::Status(grpc::StatusCode::UNAVAILABLE, "starting"));
  }
  return new Call(channel_);
}

}  // namespace lizard::server
