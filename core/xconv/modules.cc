#include "core/xconv/modules.h"

#include <cmath>

#include "core/util/mix_seed.h"
#include "core/xconv/mask_relu.h"
#include "core/xconv/xconv_op.h"

namespace xtrain::core {
namespace {

template <size_t D>
std::vector<int64_t> ToVector(const torch::ExpandingArray<D>& values) {
  return std::vector<int64_t>(values->begin(), values->end());
}

}  // namespace

template <size_t D, typename Derived>
XConvNdImpl<D, Derived>::XConvNdImpl(XConvOptions<D> options_) : options(std::move(options_)) {
  reset();
}

template <size_t D, typename Derived>
XConvNdImpl<D, Derived>::XConvNdImpl(XConvOptions<D> options_, torch::Tensor weight_,
                                     torch::Tensor bias_)
    : options(std::move(options_)), adopted_weight_(std::move(weight_)), adopted_bias_(std::move(bias_)) {
  reset();
}

template <size_t D, typename Derived>
void XConvNdImpl<D, Derived>::reset() {
  TORCH_CHECK(options.in_channels() > 0 && options.out_channels() > 0,
              "XConv: in_channels and out_channels must be positive");
  TORCH_CHECK(options.groups() > 0 && options.in_channels() % options.groups() == 0 &&
                  options.out_channels() % options.groups() == 0,
              "XConv: groups must divide in_channels and out_channels");
  TORCH_CHECK(options.settings().probes >= 0, "XConv: probes must be >= 0 (0 = exact)");
  std::vector<int64_t> weight_sizes = {options.out_channels(),
                                       options.in_channels() / options.groups()};
  for (int64_t k : *options.kernel_size()) weight_sizes.push_back(k);
  const bool adopt = adopted_weight_.defined();
  if (adopt) {
    TORCH_CHECK(adopted_weight_.sizes() == torch::IntArrayRef(weight_sizes),
                "XConv: adopted weight has shape ", adopted_weight_.sizes(), ", expected ",
                torch::IntArrayRef(weight_sizes));
    TORCH_CHECK(adopted_bias_.defined() == options.bias(), "XConv: adopted bias does not match options.bias");
  }
  weight = this->register_parameter("weight", adopt ? adopted_weight_ : torch::empty(weight_sizes));
  if (options.bias()) {
    bias = this->register_parameter("bias", adopt ? adopted_bias_ : torch::empty({options.out_channels()}));
  } else {
    bias = this->register_parameter("bias", torch::Tensor(), /*requires_grad=*/false);
  }
  const uint64_t base = options.seed().has_value()
                            ? *options.seed()
                            : static_cast<uint64_t>(
                                  torch::randint(std::numeric_limits<int64_t>::max(), {1},
                                                 torch::kLong)
                                      .item<int64_t>());
  seed_ = this->register_buffer("xconv_seed", torch::tensor(static_cast<int64_t>(base), torch::kLong));
  step_ = this->register_buffer("xconv_step", torch::tensor(int64_t{0}, torch::kLong));
  if (adopt) {
    adopted_weight_ = torch::Tensor();
    adopted_bias_ = torch::Tensor();
  } else {
    reset_parameters();
  }
}

template <size_t D, typename Derived>
void XConvNdImpl<D, Derived>::reset_parameters() {
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    const auto fans = torch::nn::init::_calculate_fan_in_and_fan_out(weight);
    const double bound = 1.0 / std::sqrt(static_cast<double>(std::get<0>(fans)));
    torch::nn::init::uniform_(bias, -bound, bound);
  }
}

template <size_t D, typename Derived>
ConvGeometry XConvNdImpl<D, Derived>::geometry() const {
  return ConvGeometry{ToVector<D>(options.stride()), ToVector<D>(options.padding()),
                      ToVector<D>(options.dilation()), options.groups()};
}

template <size_t D, typename Derived>
torch::Tensor XConvNdImpl<D, Derived>::forward(const torch::Tensor& input) {
  uint64_t seed = 0;
  if (torch::GradMode::is_enabled() && options.settings().probes > 0) {
    // step_ lives on the CPU (buffers follow .to(device); read it wherever it is).
    const int64_t step = step_.item<int64_t>();
    seed = MixSeed(static_cast<uint64_t>(seed_.item<int64_t>()), static_cast<uint64_t>(step));
    torch::NoGradGuard no_grad;
    step_.fill_(step + 1);
  }
  return XConvNd(D, input, weight, bias, geometry(), options.settings(), seed);
}

template <size_t D, typename Derived>
void XConvNdImpl<D, Derived>::pretty_print(std::ostream& stream) const {
  stream << "xtrain::XConv" << D << "d(" << options.in_channels() << ", " << options.out_channels()
         << ", kernel_size=" << options.kernel_size() << ", stride=" << options.stride()
         << ", padding=" << options.padding();
  if (*options.dilation() != *torch::ExpandingArray<D>(1)) stream << ", dilation=" << options.dilation();
  if (options.groups() != 1) stream << ", groups=" << options.groups();
  if (!options.bias()) stream << ", bias=false";
  const XConvSettings& s = options.settings();
  stream << ", probes=" << s.probes;
  if (s.probes > 0) {
    stream << ", mode=" << ProbeModeName(s.mode) << ", distribution=" << ProbeDistributionName(s.distribution);
  }
  stream << ")";
}

torch::Tensor MaskReLUImpl::forward(const torch::Tensor& input) { return MaskRelu(input); }

torch::Tensor IndexMaxPoolImpl::forward(const torch::Tensor& input) {
  // Like torch's pooling modules, accept an unbatched (C, spatial...) input.
  if (input.dim() == static_cast<int64_t>(geometry_.kernel.size()) + 1) {
    return core::IndexMaxPooling(input.unsqueeze(0), geometry_).squeeze(0);
  }
  return core::IndexMaxPooling(input, geometry_);
}

void IndexMaxPoolImpl::pretty_print(std::ostream& stream) const {
  stream << "xtrain::IndexMaxPool" << geometry_.kernel.size() << "d(kernel_size=" << c10::IntArrayRef(geometry_.kernel)
         << ", stride=" << c10::IntArrayRef(geometry_.stride) << ", padding=" << c10::IntArrayRef(geometry_.padding);
  if (geometry_.ceil_mode) stream << ", ceil_mode=true";
  stream << ")";
}

template class XConvNdImpl<2, XConv2dImpl>;
template class XConvNdImpl<3, XConv3dImpl>;

}  // namespace xtrain::core
