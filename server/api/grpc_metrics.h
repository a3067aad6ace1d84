#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/support/server_interceptor.h>

#include "absl/container/flat_hash_map.h"
#include "server/metrics/metrics.h"

namespace xtrain::server {

// Counts every gRPC call by service, method and status code and times the unary ones
// (xtrain_grpc_requests_total, xtrain_grpc_request_duration_seconds). An interceptor sees every call,
// the health and reflection services' and the ones refused before a handler runs included. The methods
// are looked up in a table made at start (read-only, no lock); a method not in it counts as
// "unknown", so the label set stays bounded.
class GrpcMetricsFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  // `methods`: fully qualified names ("/xtrain.v1.TrainingService/GetJob").
  GrpcMetricsFactory(Metrics& metrics, const std::vector<std::string>& methods);
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;

  // The methods of xtrain.v1.TrainingService, grpc.health.v1.Health and the reflection service.
  static std::vector<std::string> ServedMethods();

 private:
  absl::flat_hash_map<std::string, Metrics::RpcMethod*> methods_;
  Metrics::RpcMethod* unknown_;
};

}  // namespace xtrain::server
