#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/descriptor.h"
#include "xtrain/v1/training_service.pb.h"

namespace xtrain::client {

// "512MiB", "1.5GB", "4g", "1000000" -> bytes. Binary units (KiB, MiB, GiB, TiB) and decimal ones
// (K or KB, M or MB, G or GB, T or TB), case-insensitive; InvalidArgument for anything else.
absl::StatusOr<int64_t> ParseByteSize(absl::string_view text);

enum class SpecFormat { kJson, kYaml };

// A JobSpec from text. JSON is the proto's JSON mapping, parsed as it is. YAML holds the same fields
// (snake_case or lowerCamelCase), is checked against the spec's fields (an unknown one is named with
// its line) and converted to that JSON; in YAML, enum values may also be lower-case and without their
// prefix (probes: auto, kind: synthetic) and *_bytes fields may carry units (budget_bytes: 64MiB).
// `source` names the text in error messages.
absl::StatusOr<xtrain::v1::JobSpec> ParseJobSpec(absl::string_view text, SpecFormat format, absl::string_view source);
// Reads a spec file: *.json is JSON, anything else YAML.
absl::StatusOr<xtrain::v1::JobSpec> LoadJobSpecFile(const std::string& path);

// Sets the spec field at `path` ("training.lr", "labels.team", "memory.keep_exact") from text, as
// --set does: numbers, booleans, enums as in YAML, a repeated field gets `value` appended, a map
// field's key is the path's last part. InvalidArgument naming the path for an unknown field or a
// value of the wrong kind.
absl::Status SetSpecField(absl::string_view path, absl::string_view value, xtrain::v1::JobSpec& spec);

// An enum value's number from its name, in any case, with or without the type's prefix ("running",
// "auto" for PROBES_AUTO), or its number; InvalidArgument listing the names otherwise.
absl::StatusOr<int> ParseEnum(const google::protobuf::EnumDescriptor* type, absl::string_view text);

// --budget: bytes with units ("64MiB"), or a share of the device ("50%"); sets one and clears the other.
absl::Status SetBudget(absl::string_view text, xtrain::v1::JobSpec& spec);
// --probes: "auto", "exact" or a fixed count ("16").
absl::Status SetProbes(absl::string_view text, xtrain::v1::JobSpec& spec);

}  // namespace xtrain::client
