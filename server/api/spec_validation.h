#pragma once

#include "absl/status/status.h"
#include "xtrain/v1/training_service.pb.h"

namespace xtrain::server {

// Every check of a JobSpec that needs no model, data or LibTorch (microseconds): ranges, enums,
// exclusive fields. InvalidArgument with a sentence that names the field and what to change. The
// worker checks the rest (model names, data files, shapes) when it plans the job.
absl::Status ValidateJobSpec(const xtrain::v1::JobSpec& spec);

}  // namespace xtrain::server
