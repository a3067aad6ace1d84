#pragma once

#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/memory/memory_model.h"

namespace xtrain::core::testing {

// A small network for the memory tests: how to build it, run it and feed it.
struct TestNet {
  std::string name;
  ModelFactory factory;
  ForwardFn forward;
  std::vector<int64_t> sample_sizes;
  LossKind loss = LossKind::kCrossEntropy;
};

// gtest (and so CTest's test names) print a net by its name.
inline void PrintTo(const TestNet& net, std::ostream* os) { *os << net.name; }

// Plain conv-ReLU stack; residual net with BatchNorm; U-Net with skips and a transposed conv;
// a 3-D net; a net with strided, grouped and depthwise convs; a net with reflect- and
// replicate-padded convs (which XConv cannot run). Seeded, deterministic.
std::vector<TestNet> MemoryTestNets();
// DnCNN-style: `depth` 3x3 conv-ReLU layers of `width` channels at full resolution.
TestNet DnCnnNet(int64_t depth, int64_t width, int64_t size);
// Board-game-style: `depth` 3x3 conv-ReLU layers of `width` channels on 8x8 boards of `planes`
// input planes, then global pooling and a linear head (small spatial maps).
TestNet BoardNet(int64_t planes, int64_t width, int64_t depth);
// 3-D, every conv stride 2: activations shrink 8x per layer, so the first layer dominates.
TestNet Strided3dNet();

}  // namespace xtrain::core::testing
