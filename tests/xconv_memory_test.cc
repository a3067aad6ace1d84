// What a layer keeps between forward and backward, counted exactly by the CPU meter.
#include <gtest/gtest.h>

#include "core/memory/cpu_memory_meter.h"
#include "core/xconv/mask_relu.h"
#include "core/xconv/xconv_op.h"

namespace xtrain::core {
namespace {

constexpr int64_t kBatch = 8, kChannels = 16, kSide = 32, kProbes = 8;

torch::Tensor Weight() {
  return torch::randn({kChannels, kChannels, 3, 3}).div_(10).requires_grad_(true);
}

torch::Tensor Conv(const torch::Tensor& x, const torch::Tensor& w, const XConvSettings& s, uint64_t seed) {
  return XConvNd(2, x, w, {}, ConvGeometry{{1}, {1}, {1}, 1}, s, seed);
}

// Bytes still allocated after `forward` ran on a fresh input whose only reference was dropped,
// not counting the returned output.
int64_t KeptBytes(const std::function<torch::Tensor(const torch::Tensor&)>& forward, torch::Tensor* out) {
  CpuMemoryMeter& meter = CpuMemoryMeter::Install();
  const int64_t before = meter.current_bytes();
  {
    torch::Tensor x = torch::randn({kBatch, kChannels, kSide, kSide});
    *out = forward(x);
  }
  return meter.current_bytes() - before - static_cast<int64_t>(out->nbytes());
}

TEST(XConvMemory, ConvertedLayerKeepsTheSketchNotTheInput) {
  CpuMemoryMeter::Install();
  const torch::Tensor w = Weight();
  const int64_t s = 4;  // float32
  struct Case {
    ProbeMode mode;
    bool center;
    int64_t expected;
  };
  const int64_t means = s * kBatch * kChannels;  // centring keeps B x C_in means
  for (const Case& c : {Case{ProbeMode::kIndependent, false, s * kBatch * kChannels * kProbes},
                        Case{ProbeMode::kIndependent, true, s * kBatch * kChannels * kProbes + means},
                        Case{ProbeMode::kMultiChannel, false, s * kBatch * kProbes},
                        Case{ProbeMode::kMultiChannel, true, s * kBatch * kProbes + means},
                        Case{ProbeMode::kOrthogonal, false, s * kBatch * kProbes},
                        Case{ProbeMode::kOrthogonal, true, s * kBatch * kProbes + means}}) {
    XConvSettings settings;
    settings.probes = kProbes;
    settings.mode = c.mode;
    settings.center = c.center;
    torch::Tensor y;
    const int64_t kept = KeptBytes([&](const torch::Tensor& x) { return Conv(x, w, settings, 3); }, &y);
    EXPECT_EQ(kept, c.expected) << ProbeModeName(c.mode) << " center " << c.center;
    y.backward(torch::ones_like(y));  // the graph is whole: backward runs on what was kept
    EXPECT_TRUE(w.grad().defined());
    w.mutable_grad() = torch::Tensor();
  }
  XConvSettings exact;
  exact.probes = 0;
  torch::Tensor y;
  EXPECT_EQ(KeptBytes([&](const torch::Tensor& x) { return Conv(x, w, exact, 0); }, &y),
            s * kBatch * kChannels * kSide * kSide);
}

TEST(XConvMemory, ConvMaskReluConvStackKeepsSketchesAndOneBitMasks) {
  CpuMemoryMeter::Install();
  const torch::Tensor w1 = Weight(), w2 = Weight();
  const int64_t activations = kBatch * kChannels * kSide * kSide;
  XConvSettings settings;
  settings.probes = kProbes;
  torch::Tensor y;
  const int64_t kept = KeptBytes(
      [&](const torch::Tensor& x) { return Conv(MaskRelu(Conv(x, w1, settings, 1)), w2, settings, 2); },
      &y);
  const int64_t sketch = 4 * kBatch * kChannels * (kProbes + 1);  // centred: r columns + the mean
  EXPECT_EQ(kept, 2 * sketch + (activations + 7) / 8);

  // The exact stack keeps the input and the ReLU's output (which the second conv keeps too).
  settings.probes = 0;
  y = torch::Tensor();  // free the first graph before measuring the second
  const int64_t exact_kept = KeptBytes(
      [&](const torch::Tensor& x) { return Conv(torch::relu(Conv(x, w1, settings, 1)), w2, settings, 2); },
      &y);
  EXPECT_EQ(exact_kept, 2 * 4 * activations);
}

}  // namespace
}  // namespace xtrain::core
