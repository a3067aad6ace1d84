// Shows XConv on a ResNet-18 stage-1 layer (64 -> 64 channels, 3x3, 56x56 images): the bytes the
// layer keeps for backward, the weight-gradient error, and forward+backward time against the
// exact convolution, for a few probe counts.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <thread>

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
  double seconds = 0;
  torch::Tensor grad_weight;
};

Run Measure(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& grad_output,
            const XConvSettings& settings, int reps) {
  CpuMemoryMeter& meter = CpuMemoryMeter::Install();
  const ConvGeometry geometry{{1}, {1}, {1}, 1};
  Run run;
  std::vector<double> times;
  for (int rep = 0; rep < reps + 1; ++rep) {  // the first one warms up
    torch::Tensor w = weight.detach().requires_grad_(true);
    torch::Tensor y;
    const int64_t before = meter.current_bytes();
    const auto start = std::chrono::steady_clock::now();
    {
      const torch::Tensor x = input.clone();  // the layer's own input: dropped after forward
      y = xtrain::core::XConvNd(2, x, w, {}, geometry, settings, 1000 + rep);
    }
    run.kept_bytes = meter.current_bytes() - before - static_cast<int64_t>(y.nbytes());
    y.backward(grad_output);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (rep > 0) times.push_back(seconds);
    run.grad_weight = w.grad();
  }
  std::sort(times.begin(), times.end());
  run.seconds = times[times.size() / 2];
  return run;
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
  XConvSettings exact_settings;
  exact_settings.probes = 0;
  const Run exact = Measure(input, weight, grad_output, exact_settings, 3);
  std::printf("%-22s %12s %10s %10s %10s %14s\n", "", "kept bytes", "of exact", "time s", "of exact",
              "dW rel. error");
  std::printf("%-22s %12lld %10s %10.3f %10s %14s\n", "exact conv", static_cast<long long>(exact.kept_bytes),
              "1", exact.seconds, "1", "0");
  for (int64_t probes : {8, 16, 64}) {
    XConvSettings settings;
    settings.probes = probes;
    const Run run = Measure(input, weight, grad_output, settings, 3);
    const double error =
        (run.grad_weight - exact.grad_weight).norm().item<double>() / exact.grad_weight.norm().item<double>();
    char label[64];
    std::snprintf(label, sizeof(label), "xconv r=%lld", static_cast<long long>(probes));
    std::printf("%-22s %12lld %10.4f %10.3f %10.2f %14.3f\n", label, static_cast<long long>(run.kept_bytes),
                static_cast<double>(run.kept_bytes) / static_cast<double>(exact.kept_bytes), run.seconds,
                run.seconds / exact.seconds, error);
  }
  std::printf("XConv keeps a B x C x r sketch instead of the B x C x 56 x 56 input. Its weight gradient is\n"
              "an unbiased estimate whose error shrinks like 1/sqrt(r) and averages out over SGD steps.\n");
  return 0;
}
