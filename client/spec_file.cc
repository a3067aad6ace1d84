#include "client/spec_file.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/reflection.h>
#include <google/protobuf/util/json_util.h>
#include <yaml-cpp/yaml.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace xtrain::client {
namespace v1 = ::xtrain::v1;
namespace pb = ::google::protobuf;

namespace {

// A field of `message` by its proto name (batch_size) or JSON name (batchSize).
const pb::FieldDescriptor* FindField(const pb::Descriptor* message, absl::string_view name) {
  const std::string key(name);
  if (const pb::FieldDescriptor* field = message->FindFieldByName(key)) return field;
  for (int i = 0; i < message->field_count(); ++i) {
    if (message->field(i)->json_name() == key) return message->field(i);
  }
  return nullptr;
}

std::string FieldNames(const pb::Descriptor* message) {
  std::vector<std::string> names;
  for (int i = 0; i < message->field_count(); ++i) names.push_back(message->field(i)->name());
  return absl::StrJoin(names, ", ");
}

std::string EnumNames(const pb::EnumDescriptor* type) {
  std::vector<std::string> names;
  for (int i = 0; i < type->value_count(); ++i) names.push_back(type->value(i)->name());
  return absl::StrJoin(names, ", ");
}

// An enum value by its name, its name in any case, its name without the type's prefix ("auto" for
// PROBES_AUTO) or its number.
const pb::EnumValueDescriptor* FindEnumValue(const pb::EnumDescriptor* type, absl::string_view text) {
  const std::string upper = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(text));
  if (upper.empty()) return nullptr;
  if (const pb::EnumValueDescriptor* value = type->FindValueByName(upper)) return value;
  const pb::EnumValueDescriptor* found = nullptr;
  for (int i = 0; i < type->value_count(); ++i) {
    if (absl::EndsWith(type->value(i)->name(), absl::StrCat("_", upper))) {
      if (found != nullptr) return nullptr;  // ambiguous
      found = type->value(i);
    }
  }
  if (found != nullptr) return found;
  int number = 0;
  if (absl::SimpleAtoi(upper, &number)) return type->FindValueByNumber(number);
  return nullptr;
}

absl::StatusOr<bool> ParseBool(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  if (lower == "true" || lower == "yes" || lower == "on" || lower == "1") return true;
  if (lower == "false" || lower == "no" || lower == "off" || lower == "0") return false;
  return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a boolean; use true or false"));
}

// An integer field's value; *_bytes fields also take units.
absl::StatusOr<int64_t> ParseInteger(const pb::FieldDescriptor* field, absl::string_view text) {
  const absl::string_view stripped = absl::StripAsciiWhitespace(text);
  int64_t value = 0;
  if (!absl::SimpleAtoi(stripped, &value)) {
    if (!absl::EndsWith(field->name(), "_bytes")) {
      return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not an integer"));
    }
    absl::StatusOr<int64_t> bytes = ParseByteSize(stripped);
    if (!bytes.ok()) return bytes.status();
    value = *bytes;
  }
  int64_t low = std::numeric_limits<int64_t>::min(), high = std::numeric_limits<int64_t>::max();
  switch (field->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
      low = std::numeric_limits<int32_t>::min();
      high = std::numeric_limits<int32_t>::max();
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT32:
      low = 0;
      high = std::numeric_limits<uint32_t>::max();
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      low = 0;
      break;
    default:
      break;
  }
  if (value < low || value > high) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is out of range (", low, " to ", high, ")"));
  }
  return value;
}

absl::StatusOr<double> ParseReal(absl::string_view text) {
  double value = 0;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(text), &value) || !std::isfinite(value)) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a finite number"));
  }
  return value;
}

std::string JsonQuote(absl::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppendFormat(&out, "\\u%04x", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  out += "\"";
  return out;
}

// A scalar of `field`'s type as a JSON token of the proto's JSON mapping.
absl::StatusOr<std::string> ScalarToJson(const pb::FieldDescriptor* field, absl::string_view text) {
  switch (field->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_STRING:
      return JsonQuote(text);
    case pb::FieldDescriptor::CPPTYPE_BOOL: {
      absl::StatusOr<bool> value = ParseBool(text);
      if (!value.ok()) return value.status();
      return std::string(*value ? "true" : "false");
    }
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      const pb::EnumValueDescriptor* value = FindEnumValue(field->enum_type(), text);
      if (value == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("'", text, "' is not one of ", EnumNames(field->enum_type())));
      }
      return JsonQuote(value->name());
    }
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
    case pb::FieldDescriptor::CPPTYPE_DOUBLE: {
      absl::StatusOr<double> value = ParseReal(text);
      if (!value.ok()) return value.status();
      return absl::StrFormat("%.17g", *value);
    }
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      return absl::InvalidArgumentError("a single value was given where a mapping of fields belongs");
    default: {
      absl::StatusOr<int64_t> value = ParseInteger(field, text);
      if (!value.ok()) return value.status();
      if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_UINT64) {
        return JsonQuote(absl::StrCat(static_cast<uint64_t>(*value)));
      }
      return JsonQuote(absl::StrCat(*value));  // 64-bit integers are strings in the JSON mapping
    }
  }
}

// Converts YAML to the proto's JSON mapping, guided by the message's fields.
class YamlConverter {
 public:
  explicit YamlConverter(absl::string_view source) : source_(source) {}

  absl::Status Message(const YAML::Node& node, const pb::Descriptor* type, const std::string& where, std::string& out) {
    if (node.IsNull()) {
      out += "{}";
      return absl::OkStatus();
    }
    if (!node.IsMap()) return Error(node, where, absl::StrCat("must be a mapping of the fields ", FieldNames(type)));
    out += "{";
    bool first = true;
    for (const auto& item : node) {
      if (!item.first.IsScalar()) return Error(item.first, where, "has a key that is not a name");
      const std::string key = item.first.Scalar();
      const pb::FieldDescriptor* field = FindField(type, key);
      const std::string path = where.empty() ? key : absl::StrCat(where, ".", key);
      if (field == nullptr) {
        return Error(item.first, where.empty() ? "the spec" : where,
                     absl::StrCat("has no field '", key, "'; its fields are ", FieldNames(type)));
      }
      if (item.second.IsNull()) continue;  // "key:" with nothing: the default
      if (!first) out += ",";
      first = false;
      absl::StrAppend(&out, JsonQuote(field->name()), ":");
      absl::Status status;
      if (field->is_map()) {
        status = Map(item.second, field, path, out);
      } else if (field->is_repeated()) {
        status = Repeated(item.second, field, path, out);
      } else {
        status = Value(item.second, field, path, out);
      }
      if (!status.ok()) return status;
    }
    out += "}";
    return absl::OkStatus();
  }

 private:
  absl::Status Value(const YAML::Node& node, const pb::FieldDescriptor* field, const std::string& path,
                     std::string& out) {
    if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      return Message(node, field->message_type(), path, out);
    }
    if (!node.IsScalar()) return Error(node, path, "must be a single value");
    absl::StatusOr<std::string> json = ScalarToJson(field, node.Scalar());
    if (!json.ok()) return Error(node, path, json.status().message());
    out += *json;
    return absl::OkStatus();
  }

  absl::Status Repeated(const YAML::Node& node, const pb::FieldDescriptor* field, const std::string& path,
                        std::string& out) {
    out += "[";
    if (node.IsSequence()) {
      for (size_t i = 0; i < node.size(); ++i) {
        if (i > 0) out += ",";
        if (absl::Status s = Value(node[i], field, absl::StrCat(path, "[", i, "]"), out); !s.ok()) return s;
      }
    } else if (absl::Status s = Value(node, field, path, out); !s.ok()) {  // one value: a list of one
      return s;
    }
    out += "]";
    return absl::OkStatus();
  }

  absl::Status Map(const YAML::Node& node, const pb::FieldDescriptor* field, const std::string& path,
                   std::string& out) {
    if (!node.IsMap()) return Error(node, path, "must be a mapping of keys to values");
    const pb::FieldDescriptor* value_field = field->message_type()->map_value();
    out += "{";
    bool first = true;
    for (const auto& item : node) {
      if (!item.first.IsScalar()) return Error(item.first, path, "has a key that is not a single value");
      if (!first) out += ",";
      first = false;
      absl::StrAppend(&out, JsonQuote(item.first.Scalar()), ":");
      if (absl::Status s = Value(item.second, value_field, absl::StrCat(path, ".", item.first.Scalar()), out);
          !s.ok()) {
        return s;
      }
    }
    out += "}";
    return absl::OkStatus();
  }

  absl::Status Error(const YAML::Node& node, const std::string& where, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, " line ", node.Mark().line + 1, ": ",
                                                   where.empty() ? "the spec" : where, " ", what));
  }

  const std::string source_;
};

absl::Status SetScalar(pb::Message& message, const pb::FieldDescriptor* field, absl::string_view text) {
  const pb::Reflection* r = message.GetReflection();
  const bool add = field->is_repeated();
  switch (field->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_STRING:
      add ? r->AddString(&message, field, std::string(text)) : r->SetString(&message, field, std::string(text));
      return absl::OkStatus();
    case pb::FieldDescriptor::CPPTYPE_BOOL: {
      absl::StatusOr<bool> value = ParseBool(text);
      if (!value.ok()) return value.status();
      add ? r->AddBool(&message, field, *value) : r->SetBool(&message, field, *value);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      const pb::EnumValueDescriptor* value = FindEnumValue(field->enum_type(), text);
      if (value == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not one of ", EnumNames(field->enum_type())));
      }
      add ? r->AddEnum(&message, field, value) : r->SetEnum(&message, field, value);
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
    case pb::FieldDescriptor::CPPTYPE_DOUBLE: {
      absl::StatusOr<double> value = ParseReal(text);
      if (!value.ok()) return value.status();
      if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_FLOAT) {
        add ? r->AddFloat(&message, field, static_cast<float>(*value))
            : r->SetFloat(&message, field, static_cast<float>(*value));
      } else {
        add ? r->AddDouble(&message, field, *value) : r->SetDouble(&message, field, *value);
      }
      return absl::OkStatus();
    }
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      return absl::InvalidArgumentError("is a group of fields; set one of them");
    default:
      break;
  }
  absl::StatusOr<int64_t> value = ParseInteger(field, text);
  if (!value.ok()) return value.status();
  switch (field->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
      add ? r->AddInt32(&message, field, static_cast<int32_t>(*value))
          : r->SetInt32(&message, field, static_cast<int32_t>(*value));
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT32:
      add ? r->AddUInt32(&message, field, static_cast<uint32_t>(*value))
          : r->SetUInt32(&message, field, static_cast<uint32_t>(*value));
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      add ? r->AddUInt64(&message, field, static_cast<uint64_t>(*value))
          : r->SetUInt64(&message, field, static_cast<uint64_t>(*value));
      break;
    default:
      add ? r->AddInt64(&message, field, *value) : r->SetInt64(&message, field, *value);
      break;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<int64_t> ParseByteSize(absl::string_view text) {
  const absl::string_view stripped = absl::StripAsciiWhitespace(text);
  size_t split = 0;
  while (split < stripped.size() &&
         (absl::ascii_isdigit(static_cast<unsigned char>(stripped[split])) || stripped[split] == '.')) {
    ++split;
  }
  const absl::string_view number = stripped.substr(0, split);
  const std::string unit = absl::AsciiStrToLower(absl::StripAsciiWhitespace(stripped.substr(split)));
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1},        {"b", 1},        {"k", 1e3},     {"kb", 1e3},           {"m", 1e6},
      {"mb", 1e6},    {"g", 1e9},      {"gb", 1e9},    {"t", 1e12},           {"tb", 1e12},
      {"kib", 1024.0}, {"mib", 1048576.0}, {"gib", 1073741824.0}, {"tib", 1099511627776.0}};
  double scale = 0;
  for (const auto& [name, factor] : kUnits) {
    if (unit == name) scale = factor;
  }
  double value = 0;
  if (scale == 0 || number.empty() || !absl::SimpleAtod(number, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not a byte size; use a number with an optional unit such as 64MiB, 1.5GB or 1000000"));
  }
  const double bytes = std::round(value * scale);
  if (bytes >= 9.2e18) return absl::InvalidArgumentError(absl::StrCat("'", text, "' is too large a byte size"));
  return static_cast<int64_t>(bytes);
}

absl::StatusOr<v1::JobSpec> ParseJobSpec(absl::string_view text, SpecFormat format, absl::string_view source) {
  std::string json;
  if (format == SpecFormat::kJson) {
    json = std::string(text);
  } else {
    YAML::Node root;
    try {
      root = YAML::Load(std::string(text));
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(source, " line ", e.mark.line + 1, ": not valid YAML: ", e.msg));
    }
    YamlConverter converter(source);
    if (absl::Status s = converter.Message(root, v1::JobSpec::descriptor(), "", json); !s.ok()) return s;
  }
  v1::JobSpec spec;
  pb::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = pb::util::JsonStringToMessage(json, &spec, options);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a job spec in the proto's JSON mapping: ",
                                                   std::string(status.message())));
  }
  return spec;
}

absl::StatusOr<v1::JobSpec> LoadJobSpecFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the spec file ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  const SpecFormat format = absl::EndsWith(absl::AsciiStrToLower(path), ".json") ? SpecFormat::kJson : SpecFormat::kYaml;
  return ParseJobSpec(buffer.str(), format, path);
}

absl::StatusOr<int> ParseEnum(const pb::EnumDescriptor* type, absl::string_view text) {
  const pb::EnumValueDescriptor* value = FindEnumValue(type, text);
  if (value == nullptr) return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not one of ", EnumNames(type)));
  return value->number();
}

absl::Status SetSpecField(absl::string_view path, absl::string_view value, v1::JobSpec& spec) {
  const std::vector<std::string> parts = absl::StrSplit(path, '.');
  pb::Message* message = &spec;
  for (size_t i = 0; i < parts.size(); ++i) {
    const pb::Descriptor* type = message->GetDescriptor();
    const pb::FieldDescriptor* field = FindField(type, parts[i]);
    const std::string where = absl::StrJoin(parts.begin(), parts.begin() + static_cast<long>(i) + 1, ".");
    if (field == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "spec field '", where, "' does not exist; ", i == 0 ? "the spec's" : "its", " fields are ", FieldNames(type)));
    }
    const pb::Reflection* r = message->GetReflection();
    if (field->is_map()) {
      if (i + 2 != parts.size()) {
        return absl::InvalidArgumentError(absl::StrCat("spec field '", where, "' is a map; set a key: ", where, ".KEY=VALUE"));
      }
      const pb::FieldDescriptor* key_field = field->message_type()->map_key();
      const pb::FieldDescriptor* value_field = field->message_type()->map_value();
      pb::Message* entry = nullptr;
      for (int j = 0; j < r->FieldSize(*message, field); ++j) {
        pb::Message* candidate = r->MutableRepeatedMessage(message, field, j);
        if (candidate->GetReflection()->GetString(*candidate, key_field) == parts[i + 1]) entry = candidate;
      }
      if (entry == nullptr) {
        entry = r->AddMessage(message, field);
        entry->GetReflection()->SetString(entry, key_field, parts[i + 1]);
      }
      if (absl::Status s = SetScalar(*entry, value_field, value); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("spec field '", path, "': ", s.message()));
      }
      return absl::OkStatus();
    }
    if (i + 1 < parts.size()) {
      if (field->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE || field->is_repeated()) {
        return absl::InvalidArgumentError(absl::StrCat("spec field '", where, "' has no fields of its own"));
      }
      message = r->MutableMessage(message, field);
      continue;
    }
    if (absl::Status s = SetScalar(*message, field, value); !s.ok()) {
      std::string hint;
      if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
        hint = absl::StrCat(" (", FieldNames(field->message_type()), ")");
      }
      return absl::InvalidArgumentError(absl::StrCat("spec field '", path, "' ", s.message(), hint));
    }
  }
  return absl::OkStatus();
}

absl::Status SetBudget(absl::string_view text, v1::JobSpec& spec) {
  const absl::string_view stripped = absl::StripAsciiWhitespace(text);
  v1::MemorySpec& memory = *spec.mutable_memory();
  if (absl::EndsWith(stripped, "%")) {
    double percent = 0;
    if (!absl::SimpleAtod(stripped.substr(0, stripped.size() - 1), &percent) || !(percent > 0 && percent <= 100)) {
      return absl::InvalidArgumentError(absl::StrCat("budget '", text, "' is not a share of the device in (0%, 100%]"));
    }
    memory.set_device_share(percent / 100);
    memory.set_budget_bytes(0);
    return absl::OkStatus();
  }
  absl::StatusOr<int64_t> bytes = ParseByteSize(stripped);
  if (!bytes.ok()) return bytes.status();
  memory.set_budget_bytes(*bytes);
  memory.set_device_share(0);
  return absl::OkStatus();
}

absl::Status SetProbes(absl::string_view text, v1::JobSpec& spec) {
  const std::string lower = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  v1::MemorySpec& memory = *spec.mutable_memory();
  if (lower == "auto") {
    memory.set_probes(v1::MemorySpec::PROBES_AUTO);
    memory.set_fixed_probes(0);
  } else if (lower == "exact") {
    memory.set_probes(v1::MemorySpec::PROBES_EXACT);
    memory.set_fixed_probes(0);
  } else {
    int64_t probes = 0;
    if (!absl::SimpleAtoi(lower, &probes) || probes < 1) {
      return absl::InvalidArgumentError(absl::StrCat("probes '", text, "' is not auto, exact or a positive count"));
    }
    memory.set_probes(v1::MemorySpec::PROBES_FIXED);
    memory.set_fixed_probes(probes);
  }
  return absl::OkStatus();
}

}  // namespace xtrain::client
