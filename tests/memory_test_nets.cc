#include "tests/memory_test_nets.h"

namespace xtrain::core::testing {
namespace {

namespace nn = torch::nn;

nn::Conv2dOptions Conv(int64_t in, int64_t out, int64_t k, int64_t stride = 1, int64_t groups = 1) {
  return nn::Conv2dOptions(in, out, k).stride(stride).padding(k / 2).groups(groups);
}

// Children are Sequentials fetched from the registry at each call, so Convert can swap them.
nn::SequentialImpl& Child(nn::Module& module, const std::string& name) {
  return *module.named_children()[name]->as<nn::SequentialImpl>();
}

class ResidualBlockImpl : public nn::Module {
 public:
  ResidualBlockImpl(int64_t in, int64_t out, int64_t stride) {
    register_module("main", nn::Sequential(nn::Conv2d(Conv(in, out, 3, stride).bias(false)),
                                           nn::BatchNorm2d(out), nn::ReLU(),
                                           nn::Conv2d(Conv(out, out, 3).bias(false)), nn::BatchNorm2d(out)));
    if (stride != 1 || in != out) {
      register_module("shortcut", nn::Sequential(nn::Conv2d(Conv(in, out, 1, stride).bias(false)),
                                                 nn::BatchNorm2d(out)));
    } else {
      register_module("shortcut", nn::Sequential(nn::Identity()));
    }
    register_module("post", nn::Sequential(nn::ReLU()));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return Child(*this, "post").forward(Child(*this, "main").forward(x) + Child(*this, "shortcut").forward(x));
  }
};
TORCH_MODULE(ResidualBlock);

class TinyUNetImpl : public nn::Module {
 public:
  TinyUNetImpl(int64_t in, int64_t out, int64_t w) {
    register_module("enc1", nn::Sequential(nn::Conv2d(Conv(in, w, 3)), nn::ReLU(), nn::Conv2d(Conv(w, w, 3)), nn::ReLU()));
    register_module("down", nn::Sequential(nn::MaxPool2d(2)));
    register_module("enc2", nn::Sequential(nn::Conv2d(Conv(w, 2 * w, 3)), nn::ReLU(),
                                           nn::Conv2d(Conv(2 * w, 2 * w, 3)), nn::ReLU()));
    register_module("up", nn::Sequential(nn::ConvTranspose2d(nn::ConvTranspose2dOptions(2 * w, w, 2).stride(2))));
    register_module("dec1", nn::Sequential(nn::Conv2d(Conv(2 * w, w, 3)), nn::ReLU(), nn::Conv2d(Conv(w, w, 3)),
                                           nn::ReLU(), nn::Conv2d(Conv(w, out, 1))));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor e1 = Child(*this, "enc1").forward(x);
    const torch::Tensor e2 = Child(*this, "enc2").forward(Child(*this, "down").forward(e1));
    return Child(*this, "dec1").forward(torch::cat({Child(*this, "up").forward(e2), e1}, 1));
  }
};
TORCH_MODULE(TinyUNet);

// Builds under a fixed seed without disturbing the caller's global generator.
template <typename Make>
ModelFactory Seeded(Make make) {
  return [make]() -> absl::StatusOr<std::shared_ptr<nn::Module>> {
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    const torch::Tensor state = generator.get_state();
    torch::manual_seed(1234);
    std::shared_ptr<nn::Module> model = make();
    generator.set_state(state);
    return model;
  };
}

}  // namespace

std::vector<TestNet> MemoryTestNets() {
  std::vector<TestNet> nets;
  nets.push_back({"plain", Seeded([] {
                    nn::Sequential seq(nn::Conv2d(Conv(3, 32, 3)), nn::ReLU());
                    for (int i = 0; i < 7; ++i) {
                      seq->push_back(nn::Conv2d(Conv(32, 32, 3)));
                      seq->push_back(nn::ReLU());
                    }
                    seq->push_back(nn::AdaptiveAvgPool2d(1));
                    seq->push_back(nn::Flatten());
                    seq->push_back(nn::Linear(32, 10));
                    return seq.ptr();
                  }),
                  SequentialForward, {3, 32, 32}});
  nets.push_back({"residual_bn", Seeded([] {
                    return nn::Sequential(nn::Conv2d(Conv(3, 16, 3).bias(false)), nn::BatchNorm2d(16), nn::ReLU(),
                                          ResidualBlock(16, 16, 1), ResidualBlock(16, 16, 1),
                                          ResidualBlock(16, 16, 1), ResidualBlock(16, 32, 2),
                                          nn::AdaptiveAvgPool2d(1), nn::Flatten(), nn::Linear(32, 10))
                        .ptr();
                  }),
                  SequentialForward, {3, 32, 32}});
  nets.push_back({"unet", Seeded([] { return TinyUNet(3, 4, 16).ptr(); }),
                  [](nn::Module& m, const torch::Tensor& x) { return m.as<TinyUNetImpl>()->forward(x); },
                  {3, 32, 32}});
  nets.push_back({"net3d", Seeded([] {
                    auto conv = [](int64_t in, int64_t out) {
                      return nn::Conv3d(nn::Conv3dOptions(in, out, 3).padding(1));
                    };
                    nn::Sequential seq(conv(1, 8), nn::ReLU());
                    for (int i = 0; i < 3; ++i) {
                      seq->push_back(conv(8, 8));
                      seq->push_back(nn::ReLU());
                    }
                    seq->push_back(nn::MaxPool3d(2));
                    seq->push_back(conv(8, 16));
                    seq->push_back(nn::ReLU());
                    seq->push_back(nn::AdaptiveAvgPool3d(1));
                    seq->push_back(nn::Flatten());
                    seq->push_back(nn::Linear(16, 4));
                    return seq.ptr();
                  }),
                  SequentialForward, {1, 12, 12, 12}});
  nets.push_back({"strided_grouped", Seeded([] {
                    return nn::Sequential(nn::Conv2d(Conv(3, 16, 3, 2)), nn::ReLU(),
                                          nn::Conv2d(Conv(16, 32, 3, 1, 4)), nn::ReLU(),
                                          nn::Conv2d(Conv(32, 32, 3, 1, 32)), nn::ReLU(),
                                          nn::Conv2d(Conv(32, 32, 1)), nn::ReLU(),
                                          nn::Conv2d(nn::Conv2dOptions(32, 64, 3).stride(2).padding(2).dilation(2)),
                                          nn::ReLU(), nn::AdaptiveAvgPool2d(1), nn::Flatten(), nn::Linear(64, 10))
                        .ptr();
                  }),
                  SequentialForward, {3, 32, 32}});
  nets.push_back({"padding_modes", Seeded([] {
                    auto conv = [](int64_t in, int64_t out, torch::nn::detail::conv_padding_mode_t mode) {
                      return nn::Conv2d(nn::Conv2dOptions(in, out, 3).padding(1).padding_mode(mode));
                    };
                    return nn::Sequential(conv(3, 16, torch::kZeros), nn::ReLU(), conv(16, 16, torch::kReflect),
                                          nn::ReLU(), conv(16, 32, torch::kZeros), nn::ReLU(), nn::MaxPool2d(2),
                                          conv(32, 32, torch::kReplicate), nn::ReLU(), conv(32, 32, torch::kZeros),
                                          nn::ReLU(), nn::AdaptiveAvgPool2d(1), nn::Flatten(), nn::Linear(32, 10))
                        .ptr();
                  }),
                  SequentialForward, {3, 32, 32}});
  return nets;
}

TestNet DnCnnNet(int64_t depth, int64_t width, int64_t size) {
  TestNet net{"dncnn", Seeded([depth, width] {
                nn::Sequential seq(nn::Conv2d(Conv(1, width, 3)), nn::ReLU());
                for (int64_t i = 0; i < depth - 2; ++i) {
                  seq->push_back(nn::Conv2d(Conv(width, width, 3)));
                  seq->push_back(nn::ReLU());
                }
                seq->push_back(nn::Conv2d(Conv(width, 1, 3)));
                return seq.ptr();
              }),
              SequentialForward, {1, size, size}, LossKind::kMse};
  return net;
}

TestNet BoardNet(int64_t planes, int64_t width, int64_t depth) {
  return {"board", Seeded([planes, width, depth] {
            nn::Sequential seq(nn::Conv2d(Conv(planes, width, 3)), nn::ReLU());
            for (int64_t i = 1; i < depth; ++i) {
              seq->push_back(nn::Conv2d(Conv(width, width, 3)));
              seq->push_back(nn::ReLU());
            }
            seq->push_back(nn::AdaptiveAvgPool2d(1));
            seq->push_back(nn::Flatten());
            seq->push_back(nn::Linear(width, 10));
            return seq.ptr();
          }),
          SequentialForward, {planes, 8, 8}};
}

TestNet Strided3dNet() {
  return {"strided3d", Seeded([] {
            auto conv = [](int64_t in, int64_t out) {
              return nn::Conv3d(nn::Conv3dOptions(in, out, 3).stride(2).padding(1));
            };
            return nn::Sequential(conv(1, 8), nn::ReLU(), conv(8, 16), nn::ReLU(), conv(16, 32), nn::ReLU(),
                                  nn::AdaptiveAvgPool3d(1), nn::Flatten(), nn::Linear(32, 4))
                .ptr();
          }),
          SequentialForward, {1, 16, 16, 16}};
}

}  // namespace xtrain::core::testing
