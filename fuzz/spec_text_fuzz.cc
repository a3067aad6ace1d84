// libFuzzer target: a job spec file's text (YAML and the proto's JSON mapping), as xtrainctl reads what a
// user wrote, then the server's validation of whatever spec comes out. Neither may crash, hang or leak;
// errors are values.
#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "client/spec_file.h"
#include "server/api/spec_validation.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  for (auto format : {xtrain::client::SpecFormat::kYaml, xtrain::client::SpecFormat::kJson}) {
    absl::StatusOr<xtrain::v1::JobSpec> spec = xtrain::client::ParseJobSpec(text, format, "fuzz");
    if (spec.ok()) (void)xtrain::server::ValidateJobSpec(*spec);
  }
  return 0;
}
