#include "core/models/network.h"

namespace xtrain::core {

torch::nn::SequentialImpl& ZooModule::Seq(const std::string& child_name) {
  // named_children() copies the registry's pointers; the registry keeps the child alive.
  const auto children = named_children();
  const std::shared_ptr<torch::nn::Module>* child = children.find(child_name);
  TORCH_CHECK(child != nullptr, name(), " has no child named '", child_name, "'");
  auto* sequential = dynamic_cast<torch::nn::SequentialImpl*>(child->get());
  TORCH_CHECK(sequential != nullptr, name(), ".", child_name, " is not a Sequential");
  return *sequential;
}

}  // namespace xtrain::core
