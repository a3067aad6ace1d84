#include "core/memory/autograd_graph.h"

#include <deque>
#include <functional>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/generated/Functions.h>

namespace xtrain::core {
namespace {

namespace ag = torch::autograd;
namespace gen = torch::autograd::generated;

using Extractor = std::function<void(ag::Node&, const std::shared_ptr<ag::Node>&, GraphNode&)>;

// `own_output` >= 0: the saved tensor is that output of `self` and has no gradient (max pooling's
// indices), so no grad_fn names its producer.
void Add(const ag::SavedVariable& saved, const std::shared_ptr<ag::Node>& self, GraphNode& out,
         int own_output = -1) {
  torch::Tensor t;
  try {
    t = saved.unpack(self);
  } catch (const c10::Error&) {
    return;  // not the guard: released or modified in place, nothing is kept through it
  }
  if (!t.defined() || !t.has_storage()) return;
  out.saved.push_back({StorageKey(t), static_cast<int64_t>(t.storage().nbytes()),
                       own_output >= 0 ? static_cast<const void*>(self.get())
                       : t.grad_fn()   ? static_cast<const void*>(t.grad_fn().get())
                                       : nullptr,
                       static_cast<uint32_t>(own_output >= 0 ? own_output : t.output_nr())});
}

// Reads the listed SavedVariable members of generated node type T.
template <typename T, typename... Members>
Extractor Fields(Members... members) {
  return [=](ag::Node& node, const std::shared_ptr<ag::Node>& self, GraphNode& out) {
    auto& typed = static_cast<T&>(node);
    (Add(typed.*members, self, out), ...);
  };
}

// Max pooling keeps its input and the indices (shaped like its output).
template <typename T>
Extractor MaxPool() {
  return [](ag::Node& node, const std::shared_ptr<ag::Node>& self, GraphNode& out) {
    auto& pool = static_cast<T&>(node);
    Add(pool.self_, self, out);
    Add(pool.result1_, self, out, /*own_output=*/1);
    out.pool_window = 1;
    for (int64_t k : pool.kernel_size) out.pool_window *= k;
    try {
      out.output_numel = pool.result1_.unpack(self).numel();
    } catch (const c10::Error&) {
      // Not the guard: a released saved tensor leaves the field unset and the walk goes on.
    }
  };
}

const std::unordered_map<std::string, Extractor>& Extractors() {
  static const auto* table = new std::unordered_map<std::string, Extractor>{
      {"ConvolutionBackward0",
       [](ag::Node& node, const std::shared_ptr<ag::Node>& self, GraphNode& out) {
         auto& conv = static_cast<gen::ConvolutionBackward0&>(node);
         Add(conv.input_, self, out);
         Add(conv.weight_, self, out);
         out.transposed = conv.transposed;
         out.groups = conv.groups;
         out.input_requires_grad = conv.next_edges().size() > 0 && conv.next_edge(0).is_valid();
         try {
           const torch::Tensor input = conv.input_.unpack(self);
           const torch::Tensor weight = conv.weight_.unpack(self);
           out.input_sizes = input.sizes().vec();
           out.weight_sizes = weight.sizes().vec();
           out.weight_key = StorageKey(weight);
         } catch (const c10::Error&) {
           // Released saved tensors: the sizes stay unset and the walk goes on.
         }
       }},
      {"MkldnnConvolutionBackward0",
       Fields<gen::MkldnnConvolutionBackward0>(&gen::MkldnnConvolutionBackward0::self_,
                                               &gen::MkldnnConvolutionBackward0::weight_)},
      {"ReluBackward0",
       [](ag::Node& node, const std::shared_ptr<ag::Node>& self, GraphNode& out) {
         auto& relu = static_cast<gen::ReluBackward0&>(node);
         Add(relu.result_, self, out);
         try {
           out.output_numel = relu.result_.unpack(self).numel();
         } catch (const c10::Error&) {
           // A released saved tensor: the field stays unset and the walk goes on.
         }
       }},
      {"ThresholdBackward0", Fields<gen::ThresholdBackward0>(&gen::ThresholdBackward0::self_)},
      {"NativeBatchNormBackward0",
       Fields<gen::NativeBatchNormBackward0>(
           &gen::NativeBatchNormBackward0::input_, &gen::NativeBatchNormBackward0::weight_,
           &gen::NativeBatchNormBackward0::running_mean_, &gen::NativeBatchNormBackward0::running_var_,
           &gen::NativeBatchNormBackward0::result1_, &gen::NativeBatchNormBackward0::result2_)},
      {"CudnnBatchNormBackward0",
       Fields<gen::CudnnBatchNormBackward0>(
           &gen::CudnnBatchNormBackward0::input_, &gen::CudnnBatchNormBackward0::weight_,
           &gen::CudnnBatchNormBackward0::running_mean_, &gen::CudnnBatchNormBackward0::running_var_,
           &gen::CudnnBatchNormBackward0::result1_, &gen::CudnnBatchNormBackward0::result2_,
           &gen::CudnnBatchNormBackward0::result3_)},
      {"NativeGroupNormBackward0",
       Fields<gen::NativeGroupNormBackward0>(&gen::NativeGroupNormBackward0::input_,
                                             &gen::NativeGroupNormBackward0::weight_,
                                             &gen::NativeGroupNormBackward0::result1_,
                                             &gen::NativeGroupNormBackward0::result2_)},
      {"NativeLayerNormBackward0",
       Fields<gen::NativeLayerNormBackward0>(
           &gen::NativeLayerNormBackward0::input_, &gen::NativeLayerNormBackward0::weight_,
           &gen::NativeLayerNormBackward0::bias_, &gen::NativeLayerNormBackward0::result1_,
           &gen::NativeLayerNormBackward0::result2_)},
      {"MaxPool2DWithIndicesBackward0", MaxPool<gen::MaxPool2DWithIndicesBackward0>()},
      {"MaxPool3DWithIndicesBackward0", MaxPool<gen::MaxPool3DWithIndicesBackward0>()},
      // Reflect and replicate padding (a conv's padding_mode) keep their input.
      {"ReflectionPad2DBackward0", Fields<gen::ReflectionPad2DBackward0>(&gen::ReflectionPad2DBackward0::self_)},
      {"ReflectionPad3DBackward0", Fields<gen::ReflectionPad3DBackward0>(&gen::ReflectionPad3DBackward0::self_)},
      {"ReplicationPad2DBackward0", Fields<gen::ReplicationPad2DBackward0>(&gen::ReplicationPad2DBackward0::self_)},
      {"ReplicationPad3DBackward0", Fields<gen::ReplicationPad3DBackward0>(&gen::ReplicationPad3DBackward0::self_)},
      {"AvgPool2DBackward0", Fields<gen::AvgPool2DBackward0>(&gen::AvgPool2DBackward0::self_)},
      {"AvgPool3DBackward0", Fields<gen::AvgPool3DBackward0>(&gen::AvgPool3DBackward0::self_)},
      {"AdaptiveAvgPool2DBackward0",
       Fields<gen::AdaptiveAvgPool2DBackward0>(&gen::AdaptiveAvgPool2DBackward0::self_)},
      {"AdaptiveAvgPool3DBackward0",
       Fields<gen::AdaptiveAvgPool3DBackward0>(&gen::AdaptiveAvgPool3DBackward0::self_)},
      {"AddmmBackward0",
       Fields<gen::AddmmBackward0>(&gen::AddmmBackward0::mat1_, &gen::AddmmBackward0::mat2_)},
      {"MmBackward0", Fields<gen::MmBackward0>(&gen::MmBackward0::self_, &gen::MmBackward0::mat2_)},
      {"BmmBackward0", Fields<gen::BmmBackward0>(&gen::BmmBackward0::self_, &gen::BmmBackward0::mat2_)},
      {"MulBackward0", Fields<gen::MulBackward0>(&gen::MulBackward0::self_, &gen::MulBackward0::other_)},
      {"DivBackward0", Fields<gen::DivBackward0>(&gen::DivBackward0::self_, &gen::DivBackward0::other_)},
      {"SigmoidBackward0", Fields<gen::SigmoidBackward0>(&gen::SigmoidBackward0::result_)},
      {"TanhBackward0", Fields<gen::TanhBackward0>(&gen::TanhBackward0::result_)},
      {"SiluBackward0", Fields<gen::SiluBackward0>(&gen::SiluBackward0::self_)},
      {"GeluBackward0", Fields<gen::GeluBackward0>(&gen::GeluBackward0::self_)},
      {"EluBackward0", Fields<gen::EluBackward0>(&gen::EluBackward0::self_)},
      {"LeakyReluBackward0", Fields<gen::LeakyReluBackward0>(&gen::LeakyReluBackward0::self_)},
      {"HardtanhBackward0", Fields<gen::HardtanhBackward0>(&gen::HardtanhBackward0::self_)},
      {"HardswishBackward0", Fields<gen::HardswishBackward0>(&gen::HardswishBackward0::self_)},
      {"SoftplusBackward0", Fields<gen::SoftplusBackward0>(&gen::SoftplusBackward0::self_)},
      {"NativeDropoutBackward0",
       Fields<gen::NativeDropoutBackward0>(&gen::NativeDropoutBackward0::result1_)},
      {"LogSoftmaxBackward0", Fields<gen::LogSoftmaxBackward0>(&gen::LogSoftmaxBackward0::result_)},
      {"NllLossBackward0",
       Fields<gen::NllLossBackward0>(&gen::NllLossBackward0::self_, &gen::NllLossBackward0::target_,
                                     &gen::NllLossBackward0::weight_,
                                     &gen::NllLossBackward0::total_weight_)},
      {"NllLoss2DBackward0",
       Fields<gen::NllLoss2DBackward0>(&gen::NllLoss2DBackward0::self_, &gen::NllLoss2DBackward0::target_,
                                       &gen::NllLoss2DBackward0::weight_,
                                       &gen::NllLoss2DBackward0::total_weight_)},
      {"MseLossBackward0",
       Fields<gen::MseLossBackward0>(&gen::MseLossBackward0::self_, &gen::MseLossBackward0::target_)},
      {"SmoothL1LossBackward0", Fields<gen::SmoothL1LossBackward0>(&gen::SmoothL1LossBackward0::self_,
                                                                  &gen::SmoothL1LossBackward0::target_)},
      {"BinaryCrossEntropyWithLogitsBackward0",
       Fields<gen::BinaryCrossEntropyWithLogitsBackward0>(
           &gen::BinaryCrossEntropyWithLogitsBackward0::self_,
           &gen::BinaryCrossEntropyWithLogitsBackward0::target_)},
      {"MeanBackward1", Fields<gen::MeanBackward1>(&gen::MeanBackward1::self_)},
      {"ExpBackward0", Fields<gen::ExpBackward0>(&gen::ExpBackward0::result_)},
      {"SqrtBackward0", Fields<gen::SqrtBackward0>(&gen::SqrtBackward0::result_)},
  };
  return *table;
}

// Node types that keep no tensor (shapes and scalars only).
bool KeepsNothing(const std::string& type) {
  static const auto* types = new std::unordered_set<std::string>{
      "torch::autograd::AccumulateGrad", "AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1",
      "NegBackward0", "CatBackward0", "StackBackward0", "ViewBackward0", "ReshapeAliasBackward0",
      "UnsqueezeBackward0", "SqueezeBackward0", "SqueezeBackward1", "TBackward0", "PermuteBackward0",
      "TransposeBackward0", "ExpandBackward0", "MeanBackward0", "SumBackward0",
      "SumBackward1", "UpsampleNearest2DBackward0", "UpsampleNearest3DBackward0",
      "UpsampleBilinear2DBackward0", "UpsampleTrilinear3DBackward0", "PixelShuffleBackward0",
      "PixelUnshuffleBackward0", "SliceBackward0", "SelectBackward0", "CloneBackward0",
      "ToCopyBackward0", "SplitBackward0", "SplitWithSizesBackward0",
      "ConstantPadNdBackward0", "AsStridedBackward0", "UnsafeViewBackward0", "DivBackward1",
      "MulBackward1"};
  return types->count(type) > 0;
}

}  // namespace

bool IsViewNode(const std::string& type) {
  static const auto* types = new std::unordered_set<std::string>{
      "ViewBackward0", "ReshapeAliasBackward0", "UnsqueezeBackward0", "SqueezeBackward0",
      "SqueezeBackward1", "TBackward0", "PermuteBackward0", "TransposeBackward0", "ExpandBackward0",
      "SliceBackward0", "SelectBackward0", "AsStridedBackward0", "UnsafeViewBackward0",
      "SplitBackward0", "SplitWithSizesBackward0"};
  return types->count(type) > 0;
}

const void* StorageKey(const torch::Tensor& tensor) {
  if (!tensor.defined() || !tensor.has_storage()) return nullptr;
  return tensor.storage().unsafeGetStorageImpl();
}

std::vector<GraphNode> CollectGraph(const torch::Tensor& root) {
  std::vector<GraphNode> nodes;
  if (!root.defined() || !root.grad_fn()) return nodes;
  std::deque<std::shared_ptr<ag::Node>> queue = {root.grad_fn()};
  std::set<ag::Node*> seen = {root.grad_fn().get()};
  while (!queue.empty()) {
    std::shared_ptr<ag::Node> node = std::move(queue.front());
    queue.pop_front();
    GraphNode entry;
    entry.node = node;
    entry.self = node.get();
    entry.type = node->name();
    const auto& extractors = Extractors();
    if (auto it = extractors.find(entry.type); it != extractors.end()) {
      it->second(*node, node, entry);
    } else if (!KeepsNothing(entry.type) && entry.type.find("XConvFunction") == std::string::npos &&
               entry.type.find("MaskRelu") == std::string::npos &&
               entry.type.find("IndexMaxPool") == std::string::npos &&
               entry.type.find("WeightOnlyConv") == std::string::npos) {
      entry.known = false;  // our own functions are modelled analytically, not read
    }
    for (const ag::Edge& edge : node->next_edges()) {
      if (!edge.function) continue;
      entry.inputs.emplace_back(edge.function.get(), edge.input_nr);
      if (seen.insert(edge.function.get()).second) queue.push_back(edge.function);
    }
    nodes.push_back(std::move(entry));
  }
  return nodes;
}

}  // namespace xtrain::core
