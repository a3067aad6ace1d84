#include "core/train/fidelity_probe.h"

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <mutex>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/util/generator_state.h"
#include "core/util/mix_seed.h"
#include "core/util/status_macros.h"
#include "core/util/torch_guard.h"
#include "core/xconv/modules.h"

namespace xtrain::core {
namespace {

// Salt of the probe stream telemetry draws from (far from any training stream).
constexpr uint64_t kTelemetrySalt = 0xf1de11e7c0ffee00ull;

const XConvSettings* SettingsOf(torch::nn::Module& module) {
  if (auto* x = dynamic_cast<XConv2dImpl*>(&module)) return &x->settings();
  if (auto* x = dynamic_cast<XConv3dImpl*>(&module)) return &x->settings();
  return nullptr;
}

void SetSettings(torch::nn::Module& module, const XConvSettings& settings) {
  if (auto* x = dynamic_cast<XConv2dImpl*>(&module)) x->set_settings(settings);
  if (auto* x = dynamic_cast<XConv3dImpl*>(&module)) x->set_settings(settings);
}

Batch Slice(const Batch& batch, int64_t start, int64_t length) {
  Batch slice;
  slice.input = batch.input.narrow(0, start, length);
  slice.target = batch.target.narrow(0, start, length);
  if (batch.mask.defined()) slice.mask = batch.mask.narrow(0, start, length);
  return slice;
}

// Puts back, on destruction, what a measurement changes: buffers, layer settings, the global
// generator. Runs on every exit, exceptions included.
class StateGuard {
 public:
  explicit StateGuard(torch::nn::Module& model) {
    torch::NoGradGuard no_grad;
    for (const torch::Tensor& buffer : model.buffers()) {
      if (buffer.defined()) buffers_.emplace_back(buffer, buffer.clone());
    }
  }
  void KeepSettings(torch::nn::Module* module, const XConvSettings& settings) {
    settings_.emplace_back(module, settings);
  }
  ~StateGuard() {
    torch::NoGradGuard no_grad;
    for (auto& [buffer, saved] : buffers_) buffer.copy_(saved);
    for (auto& [module, settings] : settings_) SetSettings(*module, settings);
  }
  StateGuard(const StateGuard&) = delete;
  StateGuard& operator=(const StateGuard&) = delete;

 private:
  GlobalGeneratorScope generator_;  // declared first: restored last
  std::vector<std::pair<torch::Tensor, torch::Tensor>> buffers_;
  std::vector<std::pair<torch::nn::Module*, XConvSettings>> settings_;
};

double SquaredDistance(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor da = a.defined() ? a.to(torch::kDouble) : torch::zeros_like(b, torch::kDouble);
  const torch::Tensor db = b.defined() ? b.to(torch::kDouble) : torch::zeros_like(a, torch::kDouble);
  return (da - db).pow(2).sum().item<double>();
}

}  // namespace

FidelityProbe::FidelityProbe(std::shared_ptr<torch::nn::Module> model, LossFn loss)
    : model_(std::move(model)), loss_(std::move(loss)) {
  for (const auto& item : model_->named_modules("", /*include_self=*/true)) {
    if (SettingsOf(*item.value()) == nullptr) continue;
    torch::Tensor weight = item.value()->named_parameters(false)["weight"];
    if (!weight.requires_grad()) continue;
    layers_.push_back({item.key(), item.value(), weight, item.value()->named_buffers(false)["xconv_seed"]});
  }
}

std::vector<std::string> FidelityProbe::paths() const {
  std::vector<std::string> paths;
  for (const Layer& layer : layers_) paths.push_back(layer.path);
  return paths;
}

absl::StatusOr<FidelityReport> FidelityProbe::Measure(const Batch& batch, int64_t micro_batch,
                                                      uint64_t salt) {
  const auto start = std::chrono::steady_clock::now();
  const int64_t n = batch.input.size(0);
  if (micro_batch < 1 || 2 * micro_batch > n) {
    return absl::InvalidArgumentError(absl::StrCat("fidelity: micro-batch ", micro_batch,
                                                   " does not fit twice in a batch of ", n));
  }
  std::vector<const Layer*> active;
  for (const Layer& layer : layers_) {
    if (SettingsOf(*layer.module)->probes > 0) active.push_back(&layer);
  }
  FidelityReport report;
  report.micro_batch = micro_batch;
  if (active.empty()) return report;
  XTRAIN_RETURN_IF_ERROR(GuardTorch("fidelity: a measurement pass failed", [&]() -> absl::Status {
    std::vector<torch::Tensor> weights, g1;
    for (const Layer* layer : active) {
      if (!layer->weight.grad().defined()) {
        return absl::FailedPreconditionError(
            absl::StrCat("fidelity: layer ", layer->path, " has no gradient; call after backward"));
      }
      weights.push_back(layer->weight);
      g1.push_back(layer->weight.grad().detach().clone());
    }
    StateGuard guard(*model_);
    std::vector<XConvSettings> planned;
    {
      torch::NoGradGuard no_grad;
      for (const Layer* layer : active) {
        const XConvSettings settings = *SettingsOf(*layer->module);
        planned.push_back(settings);
        guard.KeepSettings(layer->module.get(), settings);
        const uint64_t seed = static_cast<uint64_t>(layer->seed.item<int64_t>());
        layer->seed.fill_(static_cast<int64_t>(MixSeed(seed ^ kTelemetrySalt, salt)));
      }
    }
    // The same batch and weights with fresh probes; autograd::grad leaves .grad untouched.
    const std::vector<torch::Tensor> g2 =
        torch::autograd::grad({loss_(batch)}, weights, {}, false, false, /*allow_unused=*/true);
    for (const Layer* layer : active) {
      XConvSettings exact = *SettingsOf(*layer->module);
      exact.probes = 0;
      SetSettings(*layer->module, exact);
    }
    const std::vector<torch::Tensor> ga = torch::autograd::grad(
        {loss_(Slice(batch, 0, micro_batch))}, weights, {}, false, false, true);
    const std::vector<torch::Tensor> gb = torch::autograd::grad(
        {loss_(Slice(batch, micro_batch, micro_batch))}, weights, {}, false, false, true);
    const double m = static_cast<double>(micro_batch);
    for (size_t i = 0; i < active.size(); ++i) {
      LayerFidelity layer;
      layer.path = active[i]->path;
      layer.probes = planned[i].probes;
      layer.xconv_variance = SquaredDistance(g1[i], g2[i]) / 2.0;
      layer.sgd_variance = m * SquaredDistance(ga[i], gb[i]) / 2.0 / static_cast<double>(n);
      layer.ratio = layer.xconv_variance / layer.sgd_variance;
      report.xconv_variance += layer.xconv_variance;
      report.sgd_variance += layer.sgd_variance;
      report.layers.push_back(std::move(layer));
    }
    report.ratio = report.xconv_variance / report.sgd_variance;
    return absl::OkStatus();
  }));
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace xtrain::core
