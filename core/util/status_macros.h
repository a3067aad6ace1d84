#pragma once

// Passing a failed absl::Status up to the caller in one line.

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Evaluates `expr` (an absl::Status) and returns it from the enclosing function unless it is OK.
#define XTRAIN_RETURN_IF_ERROR(expr)                                       \
  do {                                                                     \
    if (::absl::Status xtrain_status_ = (expr); !xtrain_status_.ok()) {    \
      return xtrain_status_;                                               \
    }                                                                      \
  } while (false)

// Evaluates `expr` (an absl::StatusOr<T>); returns its status unless OK, else moves its value into
// `lhs` (a declaration such as `Batch batch` or an existing variable; no unbracketed commas).
#define XTRAIN_ASSIGN_OR_RETURN(lhs, expr) \
  XTRAIN_ASSIGN_OR_RETURN_IMPL_(XTRAIN_STATUS_CONCAT_(xtrain_statusor_, __LINE__), lhs, expr)

#define XTRAIN_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                   \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = *std::move(statusor)

#define XTRAIN_STATUS_CONCAT_(a, b) XTRAIN_STATUS_CONCAT_INNER_(a, b)
#define XTRAIN_STATUS_CONCAT_INNER_(a, b) a##b
