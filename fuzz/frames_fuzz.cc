// libFuzzer target: the worker protocol's decoder, as the server reads a worker's socket. The input is
// fed in pieces whose sizes come from its first bytes; every whole frame is parsed as a WorkerMessage.
// The decoder must never crash, never hold more than it was fed, and keep refusing once it has refused.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "absl/strings/string_view.h"
#include "server/protocol/frame.h"
#include "xtrain/worker/v1/worker.pb.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const size_t piece = 1 + data[0] % 64;
  absl::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  xtrain::server::FrameDecoder decoder;
  size_t fed = 0;
  bool refused = false;
  while (!rest.empty()) {
    const absl::string_view chunk = rest.substr(0, piece);
    rest.remove_prefix(chunk.size());
    decoder.Feed(chunk);
    fed += chunk.size();
    for (;;) {
      absl::StatusOr<std::optional<std::string>> frame = decoder.Next();
      if (!frame.ok()) {
        refused = true;
        break;
      }
      if (refused) std::abort();  // a refused stream stays refused
      if (!frame->has_value()) break;
      xtrain::worker::v1::WorkerMessage message;
      (void)xtrain::server::ParseFrame(**frame, message);
    }
    if (decoder.pending() > fed) std::abort();  // it holds only what it was fed
  }
  return 0;
}
