// gRPC server reflection v1 (grpc.reflection.v1.ServerReflection) for a gRPC library that serves
// only v1alpha (Debian 12's 1.51). The two versions' messages are the same on the wire; only the
// service name differs. So each v1 call is relayed, message by message, to the server's own
// v1alpha service over its in-process channel: one descriptor pool, one implementation.
#pragma once

#include <memory>

#include "absl/synchronization/mutex.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/grpcpp.h"

namespace lizard::server {

// Register with ServerBuilder::RegisterCallbackGenericService (it receives every method no
// registered service has: those other than v1 reflection get UNIMPLEMENTED, as without it), and
// Attach the server once it is built.
class ReflectionV1Relay final : public grpc::CallbackGenericService {
 public:
  // `server` outlives every call; before Attach, calls get UNAVAILABLE.
  void Attach(grpc::Server* server);

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context)
      override;

 private:
  class Call;
  absl::Mutex mu_;  // calls may arrive before Attach
  std::shared_ptr<grpc::Channel> channel_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lizard::server
