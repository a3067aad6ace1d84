#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace xtrain::server {

// The one place an absl::Status becomes a grpc::Status (same canonical code, same message).
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace xtrain::server
