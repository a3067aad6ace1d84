#pragma once

#include "absl/status/statusor.h"
#include "core/train/train_options.h"
#include "xtrain/worker/v1/worker.pb.h"

namespace xtrain::server {

// The trainer's options for a job (DESIGN.md §3, xtrain-worker): the data sets loaded (every path
// checked again inside the data roots when it is opened, so a symlink swapped in after the server's
// check cannot escape), the model spec completed from the data (channels, classes), the training,
// memory and checkpoint settings with the spec's defaults filled in. InvalidArgument or NotFound
// with a sentence that names the spec field to change.
absl::StatusOr<core::TrainOptions> TrainOptionsFor(const xtrain::worker::v1::JobContext& context);

}  // namespace xtrain::server
