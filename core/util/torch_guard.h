#pragma once

// LibTorch exceptions stop at core's edge (STYLE.md 3): every public entry that runs LibTorch code
// runs it inside one of these guards, which turn the exception into a Status.

#include <exception>
#include <string>
#include <type_traits>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace xtrain::core {
namespace guard_internal {

// `context` is a string, or a callable returning one, called only when something was thrown (it
// may name state the body changed, such as the step reached).
template <typename Context>
std::string Text(const Context& context) {
  if constexpr (std::is_invocable_v<const Context&>) {
    return std::string(context());
  } else {
    return std::string(absl::string_view(context));
  }
}

}  // namespace guard_internal

// Runs `body` (returning absl::Status or absl::StatusOr<T>) and turns a c10::Error it throws into a
// Status with `code` and the message "<context>: <LibTorch's message without its backtrace>".
template <typename Context, typename Body>
auto GuardTorch(const Context& context, Body&& body, absl::StatusCode code = absl::StatusCode::kInternal)
    -> decltype(body()) {
  try {
    return body();
  } catch (const c10::Error& e) {
    return absl::Status(code, absl::StrCat(guard_internal::Text(context), ": ", e.what_without_backtrace()));
  }
}

// GuardTorch for code that parses a file someone else wrote (an uploaded weights file, a checkpoint
// on disk): LibTorch's readers also throw std::out_of_range and other std::exceptions on malformed
// archives, and those are the file's fault too, so they become `code` as well.
template <typename Context, typename Body>
auto GuardFileRead(const Context& context, Body&& body, absl::StatusCode code) -> decltype(body()) {
  try {
    return GuardTorch(context, std::forward<Body>(body), code);
  } catch (const std::exception& e) {
    return absl::Status(code, absl::StrCat(guard_internal::Text(context), ": ", e.what()));
  }
}

// GuardTorch that also turns any other std::exception into InternalError "<context>: <what()>".
// For the outermost entries (creating and running a Trainer, planning a job), which the worker calls
// and which nothing above catches.
template <typename Context, typename Body>
auto GuardExceptions(const Context& context, Body&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(guard_internal::Text(context), ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(guard_internal::Text(context), ": ", e.what()));
  }
}

}  // namespace xtrain::core
