#include "server/api/grpc_metrics.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "xtrain/v1/training_service.pb.h"

namespace xtrain::server {
namespace {

using grpc::experimental::InterceptionHookPoints;

// One call: its start, and at PRE_SEND_STATUS its code and (unary calls) its duration.
class GrpcMetricsInterceptor : public grpc::experimental::Interceptor {
 public:
  GrpcMetricsInterceptor(Metrics::RpcMethod* method, bool unary)
      : method_(method), unary_(unary), start_(std::chrono::steady_clock::now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const double seconds =
          unary_ ? std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count() : -1;
      method_->Record(static_cast<int>(methods->GetSendStatus().error_code()), seconds);
    }
    methods->Proceed();
  }

 private:
  Metrics::RpcMethod* const method_;
  const bool unary_;
  const std::chrono::steady_clock::time_point start_;
};

}  // namespace

GrpcMetricsFactory::GrpcMetricsFactory(Metrics& metrics, const std::vector<std::string>& methods)
    : unknown_(metrics.Method("unknown")) {
  for (const std::string& name : methods) methods_[name] = metrics.Method(name);
}

grpc::experimental::Interceptor* GrpcMetricsFactory::CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) {
  const char* name = info->method();
  auto it = name == nullptr ? methods_.end() : methods_.find(absl::string_view(name));
  return new GrpcMetricsInterceptor(it == methods_.end() ? unknown_ : it->second,
                                    info->type() == grpc::experimental::ServerRpcInfo::Type::UNARY);
}

std::vector<std::string> GrpcMetricsFactory::ServedMethods() {
  std::vector<std::string> names;
  const google::protobuf::ServiceDescriptor* service =
      xtrain::v1::PlanJobRequest::descriptor()->file()->FindServiceByName("TrainingService");
  for (int i = 0; i < service->method_count(); ++i) {
    names.push_back(absl::StrCat("/", service->full_name(), "/", service->method(i)->name()));
  }
  for (const char* name : {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
                           "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"}) {
    names.push_back(name);
  }
  return names;
}

}  // namespace xtrain::server
