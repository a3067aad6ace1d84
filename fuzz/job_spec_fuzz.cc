// libFuzzer target: a JobSpec's wire bytes, as SubmitJob and PlanJob receive them, through the server's
// validation. Any bytes protobuf accepts must be validated without a crash (NaN, huge and negative
// values, unknown enum numbers, long strings and maps included).
#include <cstddef>
#include <cstdint>

#include "server/api/spec_validation.h"
#include "xtrain/v1/training_service.pb.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  xtrain::v1::JobSpec spec;
  if (spec.ParseFromArray(data, static_cast<int>(size))) (void)xtrain::server::ValidateJobSpec(spec);
  return 0;
}
