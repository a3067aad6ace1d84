// Shows XConv on a ResNet-18 stage-1 layer (64 -> 64 channels, 3x3, 56x56 images): the bytes the
// layer keeps for backward, the weight-gradient error, and forward+backward time against the
// exact convolution, for a few probe counts.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "core/memory/cpu_memory_meter.h"
#include "core/xconv/weight_gradient.h"
#include "core/xconv/xconv_op.h"

namespace {

using xtrain::core::ConvGeometry;
using xtrain::core::CpuMemoryMeter;
using xtrain::core::XConvSettings;

constexpr int64_t kBatch = 32, kChannels = 64, kSide = 56;

struct Run {
  int64_t kept_bytes = 0;
  std::vector<double> seconds;
  torch::Tensor grad_weight;
};

// One forward+backward pass: records the bytes kept between them, the time and dW.
void Step(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& grad_output,
          const XConvSettings& settings, uint64_t seed, Run* run) {
  CpuMemoryMeter& meter = CpuMemoryMeter::Install();
  torch::Tensor w = weight.detach().requires_grad_(true);
  torch::Tensor y;
  const int64_t before = meter.current_bytes();
  const auto start = std::chrono::steady_clock::now();
  {
    const torch::Tensor x = input.clone();  // the layer's own input: dropped after forward
    y = xtrain::core::XConvNd(2, x, w, {}, ConvGeometry{{1}, {1}, {1}, 1}, settings, seed);
  }
  run->kept_bytes = meter.current_bytes() - before - static_cast<int64_t>(y.nbytes());
  y.backward(grad_output);
  run->seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  run->grad_weight = w.grad();
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

}  // namespace

int main() {
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(threads);
  torch::manual_seed(0);
  const torch::Tensor input = torch::relu(torch::randn({kBatch, kChannels, kSide, kSide}));
  const torch::Tensor weight = torch::randn({kChannels, kChannels, 3, 3}) * 0.05;
  // A regression step towards a teacher layer: G = dL/dY of 0.5 ||conv(x, W) - conv(x, W_teacher)||^2,
  // so the weight gradient carries signal, as in training.
  const torch::Tensor teacher = weight + torch::randn_like(weight) * 0.05;
  const torch::Tensor grad_output = torch::nn::functional::conv2d(
      input, weight - teacher, torch::nn::functional::Conv2dFuncOptions().padding(1));

  std::printf("xtrain XConv demo: conv %lld->%lld, 3x3, %lldx%lld images, batch %lld, float32, %d threads\n",
              static_cast<long long>(kChannels), static_cast<long long>(kChannels),
              static_cast<long long>(kSide), static_cast<long long>(kSide),
              static_cast<long long>(kBatch), threads);
  // Variants take turns in every round, so a machine whose speed drifts affects them alike.
  const std::vector<int64_t> probe_counts = {0, 8, 16, 64};
  std::vector<Run> runs(probe_counts.size());
  constexpr int kRounds = 5;
  for (int round = 0; round <= kRounds; ++round) {
    for (size_t i = 0; i < probe_counts.size(); ++i) {
      XConvSettings settings;
      settings.probes = probe_counts[i];
      Step(input, weight, grad_output, settings, 1000 + round, &runs[i]);
      if (round == 0) runs[i].seconds.clear();  // warm-up
    }
  }
  const Run& exact = runs[0];
  const double exact_seconds = Median(exact.seconds);
  std::printf("%-22s %12s %10s %10s %10s %14s\n", "", "kept bytes", "of exact", "time s", "of exact",
              "dW rel. error");
  std::printf("%-22s %12lld %10s %10.3f %10s %14s\n", "exact conv", static_cast<long long>(exact.kept_bytes),
              "1", exact_seconds, "1", "0");
  for (size_t i = 1; i < runs.size(); ++i) {
    const Run& run = runs[i];
    const double error =
        (run.grad_weight - exact.grad_weight).norm().item<double>() / exact.grad_weight.norm().item<double>();
    const double seconds = Median(run.seconds);
    char label[64];
    std::snprintf(label, sizeof(label), "xconv r=%lld", static_cast<long long>(probe_counts[i]));
    std::printf("%-22s %12lld %10.4f %10.3f %10.2f %14.3f\n", label, static_cast<long long>(run.kept_bytes),
                static_cast<double>(run.kept_bytes) / static_cast<double>(exact.kept_bytes), seconds,
                seconds / exact_seconds, error);
  }
  std::printf("XConv keeps a B x C x (r+1) sketch (r probes and each channel's mean) instead of the\n"
              "B x C x 56 x 56 input. Its weight gradient is an unbiased estimate whose error shrinks\n"
              "like 1/sqrt(r) and averages out over SGD steps.\n");
  return 0;
}
