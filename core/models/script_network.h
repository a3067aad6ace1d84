#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <torch/script.h>
#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/models/network.h"

namespace xtrain::core {

// A user's TorchScript module (torch.jit.save) as a zoo network, so the memory model, the planner,
// Convert, the trainer and checkpoints treat it like any zoo net (DESIGN.md §3, "bring your own model").
//
// Load inlines the module's forward graph and binds three kinds of its nodes to registered C++
// modules at the paths the module names them by: each 2-D/3-D convolution whose weight (and bias) is
// an attribute of one submodule becomes a torch::nn::Conv2d/Conv3d at that submodule's path
// ("layer1.0.conv1"), sharing the module's tensors, which Convert turns into XConv with the plan's
// probes; each ReLU and max pool becomes a ReLU or MaxPool module under "xtrain_lean", which Convert
// turns into the lean layers. forward() interprets the graph: bound nodes call their (possibly
// converted) module, every other node runs its own TorchScript operator unchanged, and each value is
// dropped after its last use. Parameters and buffers are registered under the module's own names
// ("layer1.0.bn1.running_mean") and are the script module's tensors, so training updates the script
// module in place and Save writes it back as plain TorchScript.
class ScriptNetworkImpl : public NetworkImpl {
 public:
  // Loads spec.script_path. If spec.classes > 0 and the module's head (its last linear layer or
  // convolution) has another output count, the head is replaced by a fresh one with spec.classes
  // outputs, initialised like PyTorch's from spec.seed. InvalidArgument: not a TorchScript module,
  // a forward that does not take one tensor and return one, no 2-D/3-D convolution, an op this
  // interpreter cannot run (calls it could not inline, fork).
  static absl::StatusOr<std::shared_ptr<ScriptNetworkImpl>> Load(const ModelSpec& spec);

  torch::Tensor forward(const torch::Tensor& input) override;
  void train(bool on = true) override;

  // Writes the module as TorchScript (loads in plain PyTorch, no xtrain needed) with this network's
  // current parameters and buffers, in eval mode. The write is atomic (a temporary file, renamed).
  absl::Status Save(const std::string& path);

  // What the binding left as it was, one sentence each: convolutions that stay torch convolutions
  // (and why), ReLUs and max pools that keep their exact form, a replaced head.
  const std::vector<std::string>& notes() const { return notes_; }
  // Paths of the convolutions bound to modules (the layers a plan can convert), in graph order.
  const std::vector<std::string>& conv_paths() const { return conv_paths_; }

 private:
  struct Instr;
  struct Frame;
  explicit ScriptNetworkImpl(ModelSpec spec) : NetworkImpl(std::move(spec)) {}

  absl::Status Bind();
  absl::Status Compile(torch::jit::Block* block);
  void ComputeFrees(torch::jit::Block* block);
  std::vector<c10::IValue> RunBlock(torch::jit::Block* block, Frame& frame);
  void Exec(torch::jit::Node* node, Frame& frame);

  torch::jit::Module script_;
  std::shared_ptr<torch::jit::Graph> graph_;
  std::unordered_map<const torch::jit::Node*, std::shared_ptr<Instr>> instrs_;
  std::unordered_map<const torch::jit::Node*, std::vector<const torch::jit::Value*>> frees_;
  std::vector<std::string> notes_;
  std::vector<std::string> conv_paths_;
};

}  // namespace xtrain::core
