// libFuzzer target: the checkpoint loader and the initial-weights loader (an uploaded file is the
// user's bytes). A file is refused with a status or read: Checkpoint::Read, then LoadModel and
// LoadOptimizer into the small model below, and LoadWeights (not strict) into it. A loaded model holds
// only finite or file-given values; nothing crashes or throws past the loaders.
//
// Seeds are written at run time by fuzz_checkpoint_seeds (a real checkpoint and a torch::save'd module
// of this model), so no binary archive lives in git.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/train/checkpoint.h"
#include "fuzz/core/checkpoint_fuzz_model.h"
#include "fuzz/core/fuzz_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = xtrain::fuzz::WriteFuzzFile("input.pt", data, size);
  xtrain::fuzz::FuzzModel model = xtrain::fuzz::MakeFuzzModel();
  absl::StatusOr<xtrain::core::Checkpoint> checkpoint = xtrain::core::Checkpoint::Read(path);
  if (checkpoint.ok()) {
    if (checkpoint->LoadModel(*model.net).ok()) {
      (void)checkpoint->LoadOptimizer(*model.optimizer);
    }
  }
  absl::StatusOr<xtrain::core::WeightsLoadReport> report =
      xtrain::core::LoadWeights(path, *model.net, /*strict=*/false);
  if (report.ok() && report->loaded.empty()) std::abort();  // documented: refused when nothing loads
  return 0;
}
