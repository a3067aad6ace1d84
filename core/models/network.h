#pragma once

#include <string>
#include <utility>

#include <torch/torch.h>

#include "core/models/model_spec.h"

namespace xtrain::core {

// A module of the zoo. Its layers live only inside registered torch::nn::Sequential children, which
// forward() looks up by name on every call: Convert rebuilds Sequentials and re-registers them, so a
// holder kept in a member would still point at the unconverted layers.
class ZooModule : public torch::nn::Module {
 protected:
  // The registered Sequential child `child_name`; throws c10::Error if there is none.
  torch::nn::SequentialImpl& Seq(const std::string& child_name);
};

// A model of the zoo: one input tensor in, one tensor out (logits or a dense map). Convert keeps the
// root object, so std::dynamic_pointer_cast<NetworkImpl> works on ConvertResult::module.
class NetworkImpl : public ZooModule {
 public:
  explicit NetworkImpl(ModelSpec spec) : spec_(std::move(spec)) {}

  virtual torch::Tensor forward(const torch::Tensor& input) = 0;

  // The spec the model was built from, with width and depth resolved to the values used (depth
  // stays 0 for the fixed layouts: small_cnn, squeezenet1_1, strided_grouped).
  const ModelSpec& spec() const { return spec_; }

 private:
  ModelSpec spec_;
};

}  // namespace xtrain::core
