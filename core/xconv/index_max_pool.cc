#include "core/xconv/index_max_pool.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

#include "core/util/memory_phase.h"

namespace xtrain::core {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Geometry as 3-D (a 2-D pool has depth 1) with the input and output spatial sizes.
struct Geometry3 {
  int64_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1};
  int64_t k[3] = {1, 1, 1}, s[3] = {1, 1, 1}, p[3] = {0, 0, 0}, d[3] = {1, 1, 1};
  int64_t in_volume() const { return in[0] * in[1] * in[2]; }
  int64_t out_volume() const { return out[0] * out[1] * out[2]; }
};

Geometry3 Normalize(torch::IntArrayRef input_sizes, torch::IntArrayRef output_sizes,
                    const PoolGeometry& g) {
  Geometry3 n;
  const size_t dims = g.kernel.size();
  const size_t skip = 3 - dims;
  for (size_t i = 0; i < dims; ++i) {
    n.in[skip + i] = input_sizes[input_sizes.size() - dims + i];
    n.out[skip + i] = output_sizes[output_sizes.size() - dims + i];
    n.k[skip + i] = g.kernel[i];
    n.s[skip + i] = g.stride[i];
    n.p[skip + i] = g.padding[i];
    n.d[skip + i] = g.dilation[i];
  }
  return n;
}

constexpr int64_t kGrainElements = 1 << 14;

int64_t Grain(int64_t per_plane) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(per_plane, 1)); }

// Calls f(i, plane, od, oh, ow) for every output element, i its flat index, planes in parallel
// (one thread owns a plane, so writes into that plane's input gradient do not race).
template <typename F>
void ForEachOutput(const Geometry3& g, int64_t planes, const F& f) {
  const int64_t volume = g.out_volume();
  at::parallel_for(0, planes, Grain(volume), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      int64_t i = plane * volume;
      for (int64_t od = 0; od < g.out[0]; ++od) {
        for (int64_t oh = 0; oh < g.out[1]; ++oh) {
          for (int64_t ow = 0; ow < g.out[2]; ++ow, ++i) f(i, plane, od, oh, ow);
        }
      }
    }
  });
}

// Window positions of the outputs along each axis, shaped to broadcast over (N, C, D, H, W).
torch::Tensor Origins(const Geometry3& g, int axis, const torch::TensorOptions& options) {
  std::vector<int64_t> shape = {1, 1, 1, 1, 1};
  shape[2 + axis] = g.out[axis];
  return (torch::arange(g.out[axis], options) * g.s[axis] - g.p[axis]).view(shape);
}

torch::Tensor As5d(const torch::Tensor& t, const Geometry3& g, bool input) {
  const int64_t* sizes = input ? g.in : g.out;
  return t.reshape({t.size(0), t.size(1), sizes[0], sizes[1], sizes[2]});
}

// LibTorch's pooled size along `axis` (pooling_output_shape): with ceil_mode the last window must
// start inside the input or its left padding.
int64_t PooledSize(int64_t in, const PoolGeometry& g, size_t axis) {
  const int64_t k = g.kernel[axis], s = g.stride[axis], p = g.padding[axis], d = g.dilation[axis];
  const int64_t span = in + 2 * p - d * (k - 1) - 1 + (g.ceil_mode ? s - 1 : 0);
  int64_t out = (span >= 0 ? span / s : -((-span + s - 1) / s)) + 1;
  if (g.ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

// 2-D CPU max pooling that writes the window offsets directly (no int64 indices, which are twice
// the output's size in float32). The window walk and the comparison are LibTorch's (cpu_max_pool):
// the first maximum wins, a NaN replaces it, so outputs and chosen elements are the same.
std::pair<torch::Tensor, torch::Tensor> MaxPool2dWithOffsets(const torch::Tensor& input, const PoolGeometry& geometry) {
  torch::Tensor output = torch::empty({input.size(0), input.size(1), PooledSize(input.size(2), geometry, 0),
                                       PooledSize(input.size(3), geometry, 1)},
                                      input.options());
  torch::Tensor offsets = torch::empty(output.sizes(), input.options().dtype(torch::kUInt8));
  const Geometry3 g = Normalize(input.sizes(), output.sizes(), geometry);
  const int64_t in_volume = g.in_volume(), out_volume = g.out_volume();
  const int64_t planes = input.size(0) * input.size(1);
  uint8_t* offset_data = offsets.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "index_max_pool_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in_data = input.data_ptr<scalar_t>();
    scalar_t* out_data = output.data_ptr<scalar_t>();
    at::parallel_for(0, planes, Grain(out_volume), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* in = in_data + plane * in_volume;
        scalar_t* out = out_data + plane * out_volume;
        uint8_t* off = offset_data + plane * out_volume;
        for (int64_t oh = 0; oh < g.out[1]; ++oh) {
          const int64_t h0 = oh * g.s[1] - g.p[1];
          const int64_t h1 = std::min(h0 + (g.k[1] - 1) * g.d[1] + 1, g.in[1]);
          int64_t hs = h0;
          while (hs < 0) hs += g.d[1];
          for (int64_t ow = 0; ow < g.out[2]; ++ow) {
            const int64_t w0 = ow * g.s[2] - g.p[2];
            const int64_t w1 = std::min(w0 + (g.k[2] - 1) * g.d[2] + 1, g.in[2]);
            int64_t ws = w0;
            while (ws < 0) ws += g.d[2];
            int64_t best_h = hs, best_w = ws;
            acc_t best = -std::numeric_limits<acc_t>::infinity();
            for (int64_t ih = hs; ih < h1; ih += g.d[1]) {
              for (int64_t iw = ws; iw < w1; iw += g.d[2]) {
                const acc_t value = static_cast<acc_t>(in[ih * g.in[2] + iw]);
                if (value > best || std::isnan(value)) {
                  best = value;
                  best_h = ih;
                  best_w = iw;
                }
              }
            }
            const int64_t o = oh * g.out[2] + ow;
            out[o] = static_cast<scalar_t>(best);
            off[o] = static_cast<uint8_t>((best_h - h0) / g.d[1] * g.k[2] + (best_w - w0) / g.d[2]);
          }
        }
      }
    });
  });
  return {output, offsets};
}

class IndexMaxPoolFunction : public torch::autograd::Function<IndexMaxPoolFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input, const PoolGeometry& geometry) {
    torch::Tensor output, offsets;
    if (geometry.kernel.size() == 2 && input.device().is_cpu() && input.scalar_type() != torch::kHalf) {
      std::tie(output, offsets) = MaxPool2dWithOffsets(input, geometry);
    } else {
      torch::Tensor indices;
      std::tie(output, indices) =
          geometry.kernel.size() == 2
              ? at::max_pool2d_with_indices(input, geometry.kernel, geometry.stride, geometry.padding,
                                            geometry.dilation, geometry.ceil_mode)
              : at::max_pool3d_with_indices(input, geometry.kernel, geometry.stride, geometry.padding,
                                            geometry.dilation, geometry.ceil_mode);
      offsets = WindowOffsets(indices, input.sizes(), geometry);
    }
    ctx->save_for_backward({PackOffsets(offsets, OffsetBits(geometry))});
    ctx->saved_data["input_sizes"] = input.sizes().vec();
    ctx->saved_data["kernel"] = geometry.kernel;
    ctx->saved_data["stride"] = geometry.stride;
    ctx->saved_data["padding"] = geometry.padding;
    ctx->saved_data["dilation"] = geometry.dilation;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    PoolGeometry geometry;
    geometry.kernel = ctx->saved_data["kernel"].toIntVector();
    geometry.stride = ctx->saved_data["stride"].toIntVector();
    geometry.padding = ctx->saved_data["padding"].toIntVector();
    geometry.dilation = ctx->saved_data["dilation"].toIntVector();
    const std::vector<int64_t> input_sizes = ctx->saved_data["input_sizes"].toIntVector();
    return {IndexMaxPoolBackward(grad_outputs[0], ctx->get_saved_variables()[0], input_sizes, geometry),
            torch::Tensor()};
  }
};

}  // namespace

int OffsetBits(int64_t window) { return window <= 2 ? 1 : window <= 4 ? 2 : window <= 16 ? 4 : 8; }

int OffsetBits(const PoolGeometry& geometry) {
  int64_t window = 1;
  for (int64_t k : geometry.kernel) window *= k;
  return OffsetBits(window);
}

torch::Tensor PackOffsets(const torch::Tensor& offsets, int bits) {
  const int64_t per_byte = 8 / bits;
  const int64_t numel = offsets.numel();
  const int64_t bytes = (numel + per_byte - 1) / per_byte;
  const torch::Tensor flat = offsets.reshape({-1});
  if (bits == 8) return flat.clone();
  if (!offsets.device().is_cpu()) {
    const torch::Tensor padded = torch::constant_pad_nd(flat, {0, bytes * per_byte - numel}).reshape({bytes, per_byte});
    const torch::Tensor shifts = torch::arange(per_byte, offsets.options().dtype(torch::kLong)).mul(bits);
    return padded.to(torch::kLong).bitwise_left_shift(shifts).sum(1).to(torch::kUInt8);
  }
  const torch::Tensor in = flat.contiguous();
  torch::Tensor packed = torch::empty({bytes}, offsets.options());
  const uint8_t* src = in.data_ptr<uint8_t>();
  uint8_t* dst = packed.data_ptr<uint8_t>();
  at::parallel_for(0, bytes, kGrainElements, [&](int64_t begin, int64_t end) {
    for (int64_t byte = begin; byte < end; ++byte) {
      uint8_t value = 0;
      for (int64_t j = 0; j < per_byte && byte * per_byte + j < numel; ++j) {
        value |= static_cast<uint8_t>(src[byte * per_byte + j] << (j * bits));
      }
      dst[byte] = value;
    }
  });
  return packed;
}

namespace {

// The offsets back as uint8 shaped `sizes` (tensor ops; the CPU backward reads the bits in place).
torch::Tensor UnpackOffsets(const torch::Tensor& packed, int bits, torch::IntArrayRef sizes) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  if (bits == 8) return packed.reshape(sizes);
  const int64_t per_byte = 8 / bits;
  const torch::Tensor shifts = torch::arange(per_byte, packed.options().dtype(torch::kLong)).mul(bits);
  return packed.to(torch::kLong)
      .unsqueeze(1)
      .bitwise_right_shift(shifts)
      .bitwise_and((1 << bits) - 1)
      .reshape({-1})
      .slice(0, 0, numel)
      .to(torch::kUInt8)
      .reshape(sizes);
}

}  // namespace

torch::Tensor WindowOffsets(const torch::Tensor& indices, torch::IntArrayRef input_sizes,
                            const PoolGeometry& geometry) {
  const Geometry3 g = Normalize(input_sizes, indices.sizes(), geometry);
  if (!indices.device().is_cpu()) {
    const torch::Tensor flat = As5d(indices, g, false);
    const torch::Tensor iw = flat.remainder(g.in[2]);
    const torch::Tensor ih = flat.div(g.in[2], "floor").remainder(g.in[1]);
    const torch::Tensor id = flat.div(g.in[1] * g.in[2], "floor");
    const auto o = indices.options();
    const torch::Tensor kd = (id - Origins(g, 0, o)).div(g.d[0], "floor");
    const torch::Tensor kh = (ih - Origins(g, 1, o)).div(g.d[1], "floor");
    const torch::Tensor kw = (iw - Origins(g, 2, o)).div(g.d[2], "floor");
    return ((kd * g.k[1] + kh) * g.k[2] + kw).to(torch::kUInt8).view(indices.sizes());
  }
  const torch::Tensor idx = indices.contiguous();
  torch::Tensor offsets = torch::empty(idx.sizes(), idx.options().dtype(torch::kUInt8));
  const int64_t volume = g.out_volume();
  const int64_t planes = volume == 0 ? 0 : idx.numel() / volume;
  const int64_t* in = idx.data_ptr<int64_t>();
  uint8_t* out = offsets.data_ptr<uint8_t>();
  ForEachOutput(g, planes, [&](int64_t i, int64_t, int64_t od, int64_t oh, int64_t ow) {
    const int64_t flat = in[i];
    const int64_t iw = flat % g.in[2];
    const int64_t ih = (flat / g.in[2]) % g.in[1];
    const int64_t id = flat / (g.in[1] * g.in[2]);
    const int64_t kd = (id - (od * g.s[0] - g.p[0])) / g.d[0];
    const int64_t kh = (ih - (oh * g.s[1] - g.p[1])) / g.d[1];
    const int64_t kw = (iw - (ow * g.s[2] - g.p[2])) / g.d[2];
    out[i] = static_cast<uint8_t>((kd * g.k[1] + kh) * g.k[2] + kw);
  });
  return offsets;
}

torch::Tensor IndexMaxPoolBackward(const torch::Tensor& grad_output, const torch::Tensor& packed,
                                   torch::IntArrayRef input_sizes, const PoolGeometry& geometry,
                                   bool generic) {
  const Geometry3 g = Normalize(input_sizes, grad_output.sizes(), geometry);
  const int bits = OffsetBits(geometry);
  if (generic || !grad_output.device().is_cpu()) {
    const auto o = packed.options().dtype(torch::kLong);
    const torch::Tensor off = As5d(UnpackOffsets(packed, bits, grad_output.sizes()), g, false).to(torch::kLong);
    const torch::Tensor kw = off.remainder(g.k[2]);
    const torch::Tensor kh = off.div(g.k[2], "floor").remainder(g.k[1]);
    const torch::Tensor kd = off.div(g.k[1] * g.k[2], "floor");
    const torch::Tensor id = Origins(g, 0, o) + kd * g.d[0];
    const torch::Tensor ih = Origins(g, 1, o) + kh * g.d[1];
    const torch::Tensor iw = Origins(g, 2, o) + kw * g.d[2];
    const torch::Tensor flat = ((id * g.in[1] + ih) * g.in[2] + iw).reshape({off.size(0), off.size(1), -1});
    torch::Tensor grad_input = torch::zeros({off.size(0), off.size(1), g.in_volume()}, grad_output.options());
    grad_input.scatter_add_(2, flat, grad_output.reshape({off.size(0), off.size(1), -1}));
    return grad_input.view(input_sizes);
  }
  const torch::Tensor grad = grad_output.contiguous();
  const int64_t per_byte = 8 / bits;
  const int mask = (1 << bits) - 1;
  torch::Tensor grad_input = torch::zeros(input_sizes, grad.options());
  const int64_t out_volume = g.out_volume();
  const int64_t in_volume = g.in_volume();
  const int64_t planes = out_volume == 0 ? 0 : grad.numel() / out_volume;
  const uint8_t* offset_data = packed.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "index_max_pool_backward", [&] {
    const scalar_t* go = grad.data_ptr<scalar_t>();
    scalar_t* gi_data = grad_input.data_ptr<scalar_t>();
    ForEachOutput(g, planes, [&](int64_t i, int64_t plane, int64_t od, int64_t oh, int64_t ow) {
      const int64_t k = (offset_data[i / per_byte] >> ((i % per_byte) * bits)) & mask;
      const int64_t kw = k % g.k[2];
      const int64_t kh = (k / g.k[2]) % g.k[1];
      const int64_t kd = k / (g.k[1] * g.k[2]);
      const int64_t id = od * g.s[0] - g.p[0] + kd * g.d[0];
      const int64_t ih = oh * g.s[1] - g.p[1] + kh * g.d[1];
      const int64_t iw = ow * g.s[2] - g.p[2] + kw * g.d[2];
      gi_data[plane * in_volume + (id * g.in[1] + ih) * g.in[2] + iw] += go[i];
    });
  });
  return grad_input;
}

torch::Tensor IndexMaxPooling(const torch::Tensor& input, const PoolGeometry& geometry) {
  const int64_t dims = static_cast<int64_t>(geometry.kernel.size());
  TORCH_CHECK(dims == 2 || dims == 3, "IndexMaxPooling: 2-D or 3-D pooling");
  TORCH_CHECK(input.dim() == dims + 2, "IndexMaxPooling: expected (N, C, spatial...) with ", dims,
              " spatial dimensions, got ", input.sizes());
  int64_t window = 1;
  for (int64_t k : geometry.kernel) window *= k;
  TORCH_CHECK(window <= 256, "IndexMaxPooling: windows of at most 256 elements (one byte per offset)");
  auto plain = [&] {
    return dims == 2 ? at::max_pool2d(input, geometry.kernel, geometry.stride, geometry.padding,
                                      geometry.dilation, geometry.ceil_mode)
                     : at::max_pool3d(input, geometry.kernel, geometry.stride, geometry.padding,
                                      geometry.dilation, geometry.ceil_mode);
  };
  // Without a gradient to compute there is nothing to keep.
  if (!torch::GradMode::is_enabled() || !input.requires_grad()) return plain();
  torch::Tensor output = IndexMaxPoolFunction::apply(input.contiguous(), geometry);
  MarkForwardOutput(output);
  return output;
}

}  // namespace xtrain::core
