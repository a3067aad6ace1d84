#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace torch::autograd {
struct Node;
}

namespace xtrain::core {

// One tensor storage an autograd node keeps for its backward.
struct SavedStorage {
  const void* key = nullptr;  // the StorageImpl: several saved views of one buffer share it
  int64_t bytes = 0;
  const void* producer = nullptr;  // the node that made the saved tensor (nullptr for a leaf)
  uint32_t output_nr = 0;
};

// What the memory model needs to know about one node of a backward graph.
struct GraphNode {
  std::shared_ptr<torch::autograd::Node> node;
  const void* self = nullptr;      // the node's address (identity within one graph)
  std::string type;                // Node::name(), e.g. "ConvolutionBackward0"
  std::vector<SavedStorage> saved;  // storages it keeps (parameters and buffers included)
  std::vector<std::pair<const void*, uint32_t>> inputs;  // (producer node, output number) per input
  bool known = true;               // false: a node type whose saved tensors we cannot read
  const void* weight_key = nullptr;  // convolution nodes: the weight's storage (maps node -> layer)
  bool transposed = false;         // convolution nodes: a transposed convolution
  int64_t groups = 1;              // convolution nodes
  bool input_requires_grad = true;  // convolution nodes: whether its input gets a gradient
  std::vector<int64_t> input_sizes;   // convolution nodes: the saved input's shape
  std::vector<int64_t> weight_sizes;  // convolution nodes
  int64_t output_numel = 0;        // ReLU and max-pool nodes: elements of the output
  int64_t pool_window = 0;         // max-pool nodes: elements per window
};

// Every node reachable from `root`'s grad_fn (root included), in discovery order. Saved tensors
// are read for the node types a CNN uses (convolution, ReLU, BatchNorm, pooling, linear, common
// activations and losses); other nodes come back with known = false.
std::vector<GraphNode> CollectGraph(const torch::Tensor& root);

// Node types that only reinterpret their input (a consumer of one of them uses the same storage).
bool IsViewNode(const std::string& type);

// The storage key of a tensor (nullptr for an undefined one).
const void* StorageKey(const torch::Tensor& tensor);

}  // namespace xtrain::core
