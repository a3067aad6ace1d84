// Writes fuzz_checkpoint's seeds into the folder given: a checkpoint after one SGD step (with momentum
// state) and a torch::save'd module, both of FuzzModel. scripts/run-fuzzers.sh runs it first.
#include <cstdio>
#include <string>

#include "core/train/checkpoint.h"
#include "fuzz/core/checkpoint_fuzz_model.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s FOLDER\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  xtrain::fuzz::FuzzModel model = xtrain::fuzz::MakeFuzzModel();
  model.optimizer->zero_grad();
  model.net->forward(torch::ones({2, 1, 4, 4})).sum().backward();
  model.optimizer->step();
  xtrain::core::CheckpointState state;
  state.model_name = "fuzz";
  state.step = 1;
  state.global_generator_state = torch::zeros({8}, torch::kByte);
  state.task_generator_state = torch::zeros({8}, torch::kByte);
  state.xconv_layers.push_back({"0", {}});
  const absl::Status written = xtrain::core::Checkpoint::Write(dir + "/checkpoint-1.pt", *model.net,
                                                               *model.optimizer, state);
  if (!written.ok()) {
    std::fprintf(stderr, "%s\n", written.ToString().c_str());
    return 1;
  }
  torch::save(model.net, dir + "/module.pt");
  return 0;
}
