#include "core/xconv/mask_relu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "core/util/memory_phase.h"

namespace xtrain::core {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kGrain = 1 << 14;  // bytes of mask per parallel task

torch::Tensor BitWeights(const torch::Device& device) {
  return torch::tensor({1, 2, 4, 8, 16, 32, 64, 128}, torch::TensorOptions().dtype(torch::kUInt8))
      .to(device);
}

class MaskReluFunction : public torch::autograd::Function<MaskReluFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input) {
    ctx->save_for_backward({PackPositiveMask(input)});
    return torch::relu(input);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return {ApplyPackedMask(grad_outputs[0], ctx->get_saved_variables()[0])};
  }
};

}  // namespace

torch::Tensor PackPositiveMask(const torch::Tensor& input) {
  const int64_t numel = input.numel();
  const int64_t bytes = (numel + 7) / 8;
  if (input.device().is_cpu()) {
    const torch::Tensor x = input.contiguous();
    torch::Tensor packed = torch::empty({bytes}, torch::TensorOptions().dtype(torch::kUInt8));
    uint8_t* out = packed.data_ptr<uint8_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "pack_mask", [&] {
      const scalar_t* in = x.data_ptr<scalar_t>();
      at::parallel_for(0, bytes, kGrain, [&](int64_t begin, int64_t end) {
        for (int64_t byte = begin; byte < end; ++byte) {
          const int64_t first = byte * 8;
          const int64_t last = std::min<int64_t>(first + 8, numel);
          uint8_t bits = 0;
          for (int64_t i = first; i < last; ++i) {
            bits |= static_cast<uint8_t>(static_cast<float>(in[i]) > 0.0f) << (i - first);
          }
          out[byte] = bits;
        }
      });
    });
    return packed;
  }
  // Other devices: the same layout from tensor ops.
  torch::Tensor positive = input.reshape({-1}).gt(0).to(torch::kUInt8);
  positive = torch::constant_pad_nd(positive, {0, bytes * 8 - numel});
  return positive.reshape({bytes, 8}).mul(BitWeights(input.device())).sum(1, false, torch::kUInt8);
}

torch::Tensor ApplyPackedMask(const torch::Tensor& grad, const torch::Tensor& packed) {
  const int64_t numel = grad.numel();
  if (grad.device().is_cpu()) {
    const torch::Tensor g = grad.contiguous();
    torch::Tensor out = torch::empty_like(g);
    const uint8_t* bits = packed.data_ptr<uint8_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g.scalar_type(), "apply_mask", [&] {
      const scalar_t* in = g.data_ptr<scalar_t>();
      scalar_t* dst = out.data_ptr<scalar_t>();
      at::parallel_for(0, numel, kGrain * 8, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          dst[i] = ((bits[i >> 3] >> (i & 7)) & 1) ? in[i] : scalar_t(0);
        }
      });
    });
    return out;
  }
  const torch::Tensor unpacked =
      packed.unsqueeze(1).bitwise_and(BitWeights(grad.device())).ne(0).reshape({-1}).slice(0, 0, numel);
  return grad * unpacked.reshape(grad.sizes()).to(grad.scalar_type());
}

torch::Tensor MaskRelu(const torch::Tensor& input) {
  // Without a gradient to compute there is nothing to keep.
  if (!torch::GradMode::is_enabled() || !input.requires_grad()) return torch::relu(input);
  torch::Tensor output = MaskReluFunction::apply(input);
  MarkForwardOutput(output);
  return output;
}

}  // namespace xtrain::core
