// libFuzzer target: the server's tokens file (auth.h), which an operator edits and SIGHUP rereads. A file
// either parses into a table whose every entry answers its own token's hash, or is refused with a line
// number; it never crashes.
#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "server/api/auth.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<xtrain::server::TokenTable> table = xtrain::server::TokenTable::Parse(text, "fuzz");
  if (table.ok()) (void)table->Find(text);
  return 0;
}
