#pragma once

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace xtrain::core {

// Runs `body` (returning absl::Status or absl::StatusOr<T>) and turns a c10::Error it throws into
// a Status naming `context`, so no LibTorch exception leaves the data library.
template <typename Body>
auto GuardTorch(absl::string_view context, Body&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(context, ": ", e.what_without_backtrace()));
  }
}

}  // namespace xtrain::core
