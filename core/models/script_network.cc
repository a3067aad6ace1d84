#include "core/models/script_network.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/util/generator_state.h"
#include "core/util/torch_guard.h"
#include "core/xconv/modules.h"

namespace xtrain::core {
namespace {

namespace jit = torch::jit;
using c10::IValue;

absl::Status Invalid(const std::string& name, absl::string_view sentence) {
  return absl::InvalidArgumentError(absl::StrCat("model torchscript (", name, "): ", sentence));
}

// What messages call the module.
const std::string& NameOf(const ModelSpec& spec) {
  return spec.script_name.empty() ? spec.script_path : spec.script_name;
}

// The attribute path a value reads from `self` through prim::GetAttr nodes ("layer1.0.conv1.weight"),
// or nullopt if it is not such a chain.
std::optional<std::vector<std::string>> AttrPath(const jit::Value* value, const jit::Value* self) {
  std::vector<std::string> names;
  while (value != self) {
    const jit::Node* node = value->node();
    if (node->kind() != c10::prim::GetAttr) return std::nullopt;
    names.push_back(node->s(c10::attr::name));
    value = node->input(0);
  }
  std::reverse(names.begin(), names.end());
  return names;
}

// A constant int list: a prim::Constant, or a prim::ListConstruct of int constants.
std::optional<std::vector<int64_t>> ConstInts(const jit::Value* value) {
  if (c10::optional<IValue> constant = jit::toIValue(value)) {
    if (constant->isIntList()) return constant->toIntVector();
    if (constant->isInt()) return std::vector<int64_t>{constant->toInt()};
    return std::nullopt;
  }
  if (value->node()->kind() != c10::prim::ListConstruct) return std::nullopt;
  std::vector<int64_t> out;
  for (const jit::Value* item : value->node()->inputs()) {
    c10::optional<IValue> constant = jit::toIValue(item);
    if (!constant || !constant->isInt()) return std::nullopt;
    out.push_back(constant->toInt());
  }
  return out;
}

std::optional<int64_t> ConstInt(const jit::Value* value) {
  c10::optional<IValue> constant = jit::toIValue(value);
  if (!constant || !constant->isInt()) return std::nullopt;
  return constant->toInt();
}

std::optional<bool> ConstBool(const jit::Value* value) {
  c10::optional<IValue> constant = jit::toIValue(value);
  if (!constant || !constant->isBool()) return std::nullopt;
  return constant->toBool();
}

bool IsNone(const jit::Value* value) {
  c10::optional<IValue> constant = jit::toIValue(value);
  return constant && constant->isNone();
}

// The submodule at `path` (empty: the root).
jit::Module SubmoduleAt(const jit::Module& root, const std::vector<std::string>& path) {
  jit::Module module = root;
  for (const std::string& name : path) module = module.attr(name).toModule();
  return module;
}

std::string Joined(const std::vector<std::string>& path) { return absl::StrJoin(path, "."); }

// Where a node comes from in the user's Python source, for notes.
std::string Where(const jit::Node* node) {
  if (auto range = node->sourceRange().file_line_col()) {
    return absl::StrCat(std::get<0>(*range), ":", std::get<1>(*range));
  }
  return std::string(node->kind().toQualString());
}

// One convolution the binding can hand to a module.
struct ConvSite {
  jit::Node* node = nullptr;
  std::vector<std::string> module_path;  // the submodule holding weight (and bias)
  int64_t dims = 2;
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups = 1;
  bool bias = false;
};

bool IsConvKind(c10::Symbol kind) {
  return kind == c10::aten::conv2d || kind == c10::aten::conv3d || kind == c10::aten::_convolution ||
         kind == c10::aten::convolution || kind == c10::aten::conv1d || kind == c10::aten::conv_transpose1d ||
         kind == c10::aten::conv_transpose2d || kind == c10::aten::conv_transpose3d;
}

// The site of a convolution node, or why it cannot be bound.
absl::StatusOr<ConvSite> ConvSiteOf(jit::Node* node, const jit::Value* self, const jit::Module& root) {
  const c10::Symbol kind = node->kind();
  ConvSite site;
  site.node = node;
  if (kind == c10::aten::conv1d) return absl::UnimplementedError("a 1-D convolution (XConv runs 2-D and 3-D)");
  if (kind == c10::aten::conv_transpose1d || kind == c10::aten::conv_transpose2d ||
      kind == c10::aten::conv_transpose3d) {
    return absl::UnimplementedError("a transposed convolution (XConv runs forward convolutions only)");
  }
  size_t groups_at = 6;
  if (kind == c10::aten::_convolution || kind == c10::aten::convolution) {
    std::optional<bool> transposed = ConstBool(node->input(6));
    if (!transposed || *transposed) {
      return absl::UnimplementedError("a transposed convolution (XConv runs forward convolutions only)");
    }
    groups_at = 8;
  }
  std::optional<std::vector<std::string>> weight = AttrPath(node->input(1), self);
  if (!weight || weight->empty() || weight->back() != "weight") {
    return absl::UnimplementedError("its weight is not the `weight` attribute of a submodule");
  }
  site.module_path.assign(weight->begin(), weight->end() - 1);
  if (!IsNone(node->input(2))) {
    std::optional<std::vector<std::string>> bias = AttrPath(node->input(2), self);
    std::vector<std::string> expected = site.module_path;
    expected.push_back("bias");
    if (!bias || *bias != expected) return absl::UnimplementedError("its bias is not the same submodule's `bias`");
    // An Optional bias attribute holding None is no bias.
    site.bias = !SubmoduleAt(root, site.module_path).attr("bias").isNone();
  }
  std::optional<std::vector<int64_t>> stride = ConstInts(node->input(3));
  std::optional<std::vector<int64_t>> padding = ConstInts(node->input(4));
  std::optional<std::vector<int64_t>> dilation = ConstInts(node->input(5));
  std::optional<int64_t> groups = ConstInt(node->input(groups_at));
  if (!padding) return absl::UnimplementedError("its padding is not a constant list of sizes ('same'/'valid' strings stay exact)");
  if (!stride || !dilation || !groups) return absl::UnimplementedError("its stride, dilation or groups are not constants");
  if (kind == c10::aten::_convolution || kind == c10::aten::convolution) {
    std::optional<std::vector<int64_t>> output_padding = ConstInts(node->input(7));
    if (!output_padding || std::any_of(output_padding->begin(), output_padding->end(), [](int64_t v) { return v != 0; })) {
      return absl::UnimplementedError("it has an output padding");
    }
  }
  const torch::Tensor w = SubmoduleAt(root, site.module_path).attr("weight").toTensor();
  site.dims = w.dim() - 2;
  if (kind == c10::aten::conv2d && site.dims != 2) return absl::UnimplementedError("conv2d with a weight that is not 4-D");
  if (kind == c10::aten::conv3d && site.dims != 3) return absl::UnimplementedError("conv3d with a weight that is not 5-D");
  if (site.dims != 2 && site.dims != 3) return absl::UnimplementedError("a convolution that is neither 2-D nor 3-D");
  auto expand = [&](std::vector<int64_t>& v) {
    if (v.size() == 1) v.assign(static_cast<size_t>(site.dims), v[0]);
    return static_cast<int64_t>(v.size()) == site.dims;
  };
  if (!expand(*stride) || !expand(*padding) || !expand(*dilation)) {
    return absl::UnimplementedError("its stride, padding or dilation do not match its dimensions");
  }
  site.stride = *stride;
  site.padding = *padding;
  site.dilation = *dilation;
  site.groups = *groups;
  return site;
}

template <int64_t D, typename Conv, typename Options>
std::shared_ptr<torch::nn::Module> MakeConv(const ConvSite& site, const torch::Tensor& weight) {
  const int64_t out = weight.size(0);
  const int64_t in = weight.size(1) * site.groups;
  torch::ExpandingArray<D> kernel(std::vector<int64_t>(weight.sizes().begin() + 2, weight.sizes().end()));
  Options options(in, out, kernel);
  options.stride(torch::ExpandingArray<D>(site.stride))
      .padding(torch::ExpandingArray<D>(site.padding))
      .dilation(torch::ExpandingArray<D>(site.dilation))
      .groups(site.groups)
      .bias(site.bias);
  return std::make_shared<Conv>(options);
}

// A D-D max pool module with the window of an aten::max_poolNd node (sizes of length 1 apply to every dim).
template <int64_t D, typename Pool, typename Options>
std::shared_ptr<torch::nn::Module> MakeMaxPool(const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
                                               const std::vector<int64_t>& padding,
                                               const std::vector<int64_t>& dilation, bool ceil_mode) {
  auto sizes = [](std::vector<int64_t> v) {
    if (v.size() == 1) v.assign(static_cast<size_t>(D), v[0]);
    return torch::ExpandingArray<D>(v);
  };
  return std::make_shared<Pool>(Options(sizes(kernel))
                                    .stride(sizes(stride))
                                    .padding(sizes(padding))
                                    .dilation(sizes(dilation))
                                    .ceil_mode(ceil_mode));
}

// Kaiming-uniform (a = sqrt(5)) weight and uniform bias, as torch.nn.Linear and ConvNd initialise.
void InitLikeTorch(torch::Tensor& weight, torch::Tensor& bias) {
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    const double fan_in = static_cast<double>(weight.numel() / weight.size(0));
    const double bound = fan_in > 0 ? 1.0 / std::sqrt(fan_in) : 0.0;
    bias.uniform_(-bound, bound);
  }
}

}  // namespace

// What forward does at one node, decided once at Load.
struct ScriptNetworkImpl::Instr {
  enum class Kind {
    kConstant, kGetAttr, kSetAttr, kIf, kLoop, kListConstruct, kTupleConstruct, kTupleUnpack,
    kListUnpack, kTupleIndex, kIdentity, kModule, kOperator,
  };
  Kind kind = Kind::kOperator;
  IValue constant;
  std::string name;         // kGetAttr, kSetAttr: attribute; kModule: module path
  c10::TypePtr element;     // kListConstruct: element type
  jit::Operation operation = nullptr;  // kOperator
};

// One forward's state: the values alive and the modules by path (Convert may have swapped them).
struct ScriptNetworkImpl::Frame {
  std::unordered_map<const jit::Value*, IValue> values;
  std::unordered_map<std::string, std::shared_ptr<torch::nn::Module>> modules;
};

absl::StatusOr<std::shared_ptr<ScriptNetworkImpl>> ScriptNetworkImpl::Load(const ModelSpec& spec) {
  const std::string& path = spec.script_path;
  if (path.empty()) {
    return absl::InvalidArgumentError(
        "model torchscript needs its module: give the torch.jit.save'd file as the initial weights "
        "(spec.model.init_artifact_id or init_path)");
  }
  if (std::error_code error; !std::filesystem::is_regular_file(path, error)) {
    return absl::InvalidArgumentError(absl::StrCat("model torchscript: ", NameOf(spec), " is not a readable file"));
  }
  std::shared_ptr<ScriptNetworkImpl> net(new ScriptNetworkImpl(spec));
  absl::Status loaded = GuardFileRead(
      absl::StrCat("model torchscript: ", NameOf(spec), " is not a TorchScript module saved with torch.jit.save"),
      [&]() -> absl::Status {
        net->script_ = jit::load(path, torch::kCPU);
        return absl::OkStatus();
      },
      absl::StatusCode::kInvalidArgument);
  if (!loaded.ok()) return loaded;
  absl::Status bound = GuardFileRead(absl::StrCat("model torchscript: ", NameOf(spec), " could not be prepared"),
                                     [&]() { return net->Bind(); }, absl::StatusCode::kInvalidArgument);
  if (!bound.ok()) return bound;
  return net;
}

absl::Status ScriptNetworkImpl::Bind() {
  const std::string& path = NameOf(spec());
  c10::optional<jit::Method> method = script_.find_method("forward");
  if (!method) return Invalid(path, "the module has no forward method");
  graph_ = method->graph()->copy();
  jit::Inline(*graph_);
  jit::EliminateDeadCode(graph_);
  if (graph_->inputs().size() != 2 || !graph_->inputs()[1]->type()->isSubtypeOf(*c10::TensorType::get())) {
    return Invalid(path, absl::StrCat("forward takes ", graph_->inputs().size() - 1,
                                      " argument(s) of types other than one Tensor; xtrain feeds one input batch, "
                                      "so export a module whose forward(x) takes one tensor"));
  }
  if (graph_->outputs().size() != 1 || !graph_->outputs()[0]->type()->isSubtypeOf(*c10::TensorType::get())) {
    return Invalid(path, "forward does not return one tensor; xtrain trains modules whose forward returns the "
                         "logits or the dense output as one tensor");
  }
  const jit::Value* self = graph_->inputs()[0];

  // Every convolution in the graph, in order, and whether it can be bound to a module.
  std::vector<ConvSite> sites;
  std::map<std::string, int> uses;  // module path -> bindable convolutions reading its weight
  int convolutions = 0;
  std::vector<jit::Node*> linears;  // aten::linear on a submodule's weight: head candidates
  std::function<void(jit::Block*)> scan = [&](jit::Block* block) {
    for (jit::Node* node : block->nodes()) {
      for (jit::Block* sub : node->blocks()) scan(sub);
      if (node->kind() == c10::aten::linear) linears.push_back(node);
      if (!IsConvKind(node->kind())) continue;
      ++convolutions;
      absl::StatusOr<ConvSite> site = ConvSiteOf(node, self, script_);
      if (!site.ok()) {
        notes_.push_back(absl::StrCat("convolution at ", Where(node), " stays exact: ", site.status().message()));
        continue;
      }
      ++uses[Joined(site->module_path)];
      sites.push_back(*std::move(site));
    }
  };
  scan(graph_->block());
  if (convolutions == 0) {
    return Invalid(path, "its forward has no convolution; XConv plans the memory of 2-D and 3-D convolutions, so "
                         "there is nothing to plan (train it with plain PyTorch)");
  }

  // The head: the last linear layer or bound convolution in graph order. Replaced when it has
  // another output count than spec.classes.
  const jit::Node* head = nullptr;
  std::vector<std::string> head_path;
  {
    const jit::Node* last_conv = sites.empty() ? nullptr : sites.back().node;
    const jit::Node* last_linear = nullptr;
    for (const jit::Node* node : linears) {
      std::optional<std::vector<std::string>> w = AttrPath(node->input(1), self);
      if (w && !w->empty() && w->back() == "weight") {
        last_linear = node;
        head_path.assign(w->begin(), w->end() - 1);
      }
    }
    if (last_linear != nullptr && (last_conv == nullptr || last_conv->isBefore(last_linear))) {
      head = last_linear;
    } else if (last_conv != nullptr) {
      head = last_conv;
      head_path = sites.back().module_path;
    }
  }
  if (spec().classes > 0 && head != nullptr) {
    jit::Module holder = SubmoduleAt(script_, head_path);
    torch::Tensor weight = holder.attr("weight").toTensor();
    if (weight.size(0) != spec().classes) {
      std::vector<int64_t> sizes = weight.sizes().vec();
      const int64_t before = sizes[0];
      sizes[0] = spec().classes;
      torch::Tensor new_weight = torch::empty(sizes, weight.options());
      torch::Tensor new_bias;
      const bool has_bias = holder.hasattr("bias") && holder.attr("bias").isTensor();
      if (has_bias) new_bias = torch::empty({spec().classes}, weight.options());
      {
        GlobalGeneratorScope scope;  // the caller's random stream is left as it was
        at::Generator generator = at::detail::getDefaultCPUGenerator();
        {
          std::lock_guard<std::mutex> lock(generator.mutex());
          generator.set_current_seed(spec().seed);
        }
        InitLikeTorch(new_weight, new_bias);
      }
      new_weight.set_requires_grad(true);
      holder.setattr("weight", new_weight);
      if (has_bias) {
        new_bias.set_requires_grad(true);
        holder.setattr("bias", new_bias);
      }
      notes_.push_back(absl::StrCat("head ", Joined(head_path), " replaced: ", before, " outputs -> ",
                                    spec().classes, " (model.classes), freshly initialised"));
    }
  }

  // Bind: one module per submodule whose weight one convolution reads.
  std::map<std::string, std::shared_ptr<torch::nn::Module>> bound;  // module path -> conv module
  for (const ConvSite& site : sites) {
    const std::string key = Joined(site.module_path);
    if (uses[key] > 1) {
      notes_.push_back(absl::StrCat("convolution ", key, " stays exact: its weight feeds ", uses[key],
                                    " convolutions"));
      continue;
    }
    if (site.module_path.empty()) {
      notes_.push_back(absl::StrCat("convolution at ", Where(site.node),
                                    " stays exact: its weight is an attribute of the root module"));
      continue;
    }
    jit::Module holder = SubmoduleAt(script_, site.module_path);
    const torch::Tensor weight = holder.attr("weight").toTensor();
    std::shared_ptr<torch::nn::Module> conv =
        site.dims == 2 ? MakeConv<2, torch::nn::Conv2dImpl, torch::nn::Conv2dOptions>(site, weight)
                       : MakeConv<3, torch::nn::Conv3dImpl, torch::nn::Conv3dOptions>(site, weight);
    // The C++ module's tensors become the script module's, so both see every update.
    {
      torch::NoGradGuard no_grad;
      torch::Tensor w = conv->named_parameters(false)["weight"];
      w.copy_(weight);
      holder.setattr("weight", w);
      if (site.bias) {
        torch::Tensor b = conv->named_parameters(false)["bias"];
        b.copy_(holder.attr("bias").toTensor());
        holder.setattr("bias", b);
      }
    }
    bound[key] = conv;
    conv_paths_.push_back(key);
    auto instr = std::make_shared<Instr>();
    instr->kind = Instr::Kind::kModule;
    instr->name = key;
    instrs_[site.node] = instr;
  }

  // The mirror of the module tree: plain modules holding the script's parameters and buffers, the
  // bound convolutions at their paths.
  std::function<void(const jit::Module&, torch::nn::Module&, const std::string&)> mirror =
      [&](const jit::Module& source, torch::nn::Module& target, const std::string& prefix) {
        for (const jit::NameTensor& p : source.named_parameters(false)) {
          target.register_parameter(p.name, p.value, p.value.requires_grad());
        }
        for (const jit::NameTensor& b : source.named_buffers(false)) target.register_buffer(b.name, b.value);
        for (const jit::NameModule& child : source.named_children()) {
          const std::string child_path = prefix.empty() ? child.name : absl::StrCat(prefix, ".", child.name);
          if (auto it = bound.find(child_path); it != bound.end()) {
            target.register_module(child.name, it->second);
            continue;
          }
          auto plain = std::make_shared<torch::nn::Module>(child.value.type()->name()
                                                               ? child.value.type()->name()->name()
                                                               : std::string("Module"));
          mirror(child.value, *plain, child_path);
          target.register_module(child.name, plain);
        }
      };
  mirror(script_, *this, "");

  // Lean layers: each ReLU whose input nothing reads after it, each max pool with constant windows.
  auto lean = std::make_shared<torch::nn::Module>("LeanLayers");
  int lean_count = 0;
  std::function<void(jit::Block*)> bind_lean = [&](jit::Block* block) {
    for (jit::Node* node : block->nodes()) {
      for (jit::Block* sub : node->blocks()) bind_lean(sub);
      const c10::Symbol kind = node->kind();
      std::shared_ptr<torch::nn::Module> module;
      std::string name;
      if (kind == c10::aten::relu || kind == c10::aten::relu_) {
        if (kind == c10::aten::relu_ && node->input(0)->uses().size() > 1) {
          notes_.push_back(absl::StrCat("in-place ReLU at ", Where(node),
                                        " stays exact: its input is read again after it"));
          continue;
        }
        module = std::make_shared<torch::nn::ReLUImpl>();
        name = absl::StrCat("relu", lean_count++);
      } else if (kind == c10::aten::max_pool2d || kind == c10::aten::max_pool3d) {
        const int64_t d = kind == c10::aten::max_pool2d ? 2 : 3;
        std::optional<std::vector<int64_t>> kernel = ConstInts(node->input(1)), stride = ConstInts(node->input(2)),
                                            padding = ConstInts(node->input(3)),
                                            dilation = ConstInts(node->input(4));
        std::optional<bool> ceil = ConstBool(node->input(5));
        if (!kernel || !stride || !padding || !dilation || !ceil) {
          notes_.push_back(absl::StrCat("max pool at ", Where(node), " stays exact: its window is not constant"));
          continue;
        }
        if (stride->empty()) stride = kernel;
        module = d == 2 ? MakeMaxPool<2, torch::nn::MaxPool2dImpl, torch::nn::MaxPool2dOptions>(
                              *kernel, *stride, *padding, *dilation, *ceil)
                        : MakeMaxPool<3, torch::nn::MaxPool3dImpl, torch::nn::MaxPool3dOptions>(
                              *kernel, *stride, *padding, *dilation, *ceil);
        name = absl::StrCat("max_pool", lean_count++);
      } else {
        continue;
      }
      lean->register_module(name, module);
      auto instr = std::make_shared<Instr>();
      instr->kind = Instr::Kind::kModule;
      instr->name = absl::StrCat("xtrain_lean.", name);
      instrs_[node] = instr;
    }
  };
  bind_lean(graph_->block());
  register_module("xtrain_lean", lean);

  if (absl::Status s = Compile(graph_->block()); !s.ok()) return s;
  ComputeFrees(graph_->block());
  train(script_.is_training());
  return absl::OkStatus();
}

absl::Status ScriptNetworkImpl::Compile(jit::Block* block) {
  for (jit::Node* node : block->nodes()) {
    for (jit::Block* sub : node->blocks()) {
      if (absl::Status s = Compile(sub); !s.ok()) return s;
    }
    if (instrs_.count(node)) continue;  // bound to a module
    auto instr = std::make_shared<Instr>();
    const c10::Symbol kind = node->kind();
    using K = Instr::Kind;
    if (kind == c10::prim::Constant) {
      instr->kind = K::kConstant;
      c10::optional<IValue> value = jit::toIValue(node->output());
      if (!value) return Invalid(NameOf(spec()), absl::StrCat("a constant at ", Where(node), " cannot be read"));
      instr->constant = *value;
    } else if (kind == c10::prim::GetAttr) {
      instr->kind = K::kGetAttr;
      instr->name = node->s(c10::attr::name);
    } else if (kind == c10::prim::SetAttr) {
      instr->kind = K::kSetAttr;
      instr->name = node->s(c10::attr::name);
    } else if (kind == c10::prim::If) {
      instr->kind = K::kIf;
    } else if (kind == c10::prim::Loop) {
      instr->kind = K::kLoop;
    } else if (kind == c10::prim::ListConstruct) {
      instr->kind = K::kListConstruct;
      instr->element = node->output()->type()->expectRef<c10::ListType>().getElementType();
    } else if (kind == c10::prim::TupleConstruct) {
      instr->kind = K::kTupleConstruct;
    } else if (kind == c10::prim::TupleUnpack) {
      instr->kind = K::kTupleUnpack;
    } else if (kind == c10::prim::ListUnpack) {
      instr->kind = K::kListUnpack;
    } else if (kind == c10::prim::TupleIndex) {
      instr->kind = K::kTupleIndex;
    } else if (kind == c10::prim::unchecked_cast) {
      instr->kind = K::kIdentity;
    } else if (kind == c10::prim::CallMethod || kind == c10::prim::CallFunction || kind == c10::prim::fork ||
               kind == c10::prim::Enter || kind == c10::prim::Exit) {
      return Invalid(NameOf(spec()),
                     absl::StrCat("its forward uses ", kind.toQualString(), " at ", Where(node),
                                  ", which xtrain cannot run; export a module without it (torch.jit.script of "
                                  "plain nn.Modules, or torch.jit.trace)"));
    } else {
      if (node->maybeOperator() == nullptr) {
        return Invalid(NameOf(spec()), absl::StrCat("its forward uses ", kind.toQualString(), " at ", Where(node),
                                                        ", an operator this LibTorch does not have"));
      }
      instr->kind = K::kOperator;
      instr->operation = node->getOperation();
    }
    instrs_[node] = instr;
  }
  return absl::OkStatus();
}

// Each value is dropped after the last node of its own block that reads it (a read inside a
// nested block counts at the node that holds the block), so forward keeps what PyTorch would.
void ScriptNetworkImpl::ComputeFrees(jit::Block* block) {
  std::unordered_map<const jit::Node*, int> position;
  int i = 0;
  for (const jit::Node* node : block->nodes()) position[node] = i++;
  auto consider = [&](const jit::Value* value, const jit::Node* definer) {
    const jit::Node* last = nullptr;
    for (const jit::Use& use : value->uses()) {
      const jit::Node* user = use.user;
      while (user != nullptr && user->owningBlock() != block) {
        const jit::Node* owner = user->owningBlock()->owningNode();
        user = owner;
      }
      if (user == nullptr) continue;
      if (user == block->return_node()) return;  // an output of the block: kept until it returns
      if (last == nullptr || position[user] > position[last]) last = user;
    }
    if (last != nullptr) {
      frees_[last].push_back(value);
    } else if (definer != nullptr) {
      frees_[definer].push_back(value);
    }
  };
  for (const jit::Value* input : block->inputs()) consider(input, nullptr);
  for (jit::Node* node : block->nodes()) {
    for (const jit::Value* output : node->outputs()) consider(output, node);
    for (jit::Block* sub : node->blocks()) ComputeFrees(sub);
  }
}

std::vector<IValue> ScriptNetworkImpl::RunBlock(jit::Block* block, Frame& frame) {
  for (jit::Node* node : block->nodes()) {
    Exec(node, frame);
    if (auto it = frees_.find(node); it != frees_.end()) {
      for (const jit::Value* value : it->second) frame.values.erase(value);
    }
  }
  std::vector<IValue> outputs;
  outputs.reserve(block->outputs().size());
  for (const jit::Value* value : block->outputs()) outputs.push_back(frame.values.at(value));
  for (const jit::Value* value : block->outputs()) {
    if (value->node()->owningBlock() == block) frame.values.erase(value);
  }
  return outputs;
}

void ScriptNetworkImpl::Exec(jit::Node* node, Frame& frame) {
  Instr& instr = *instrs_.at(node);
  auto& values = frame.values;
  auto in = [&](size_t i) -> IValue& { return values.at(node->input(i)); };
  using K = Instr::Kind;
  switch (instr.kind) {
    case K::kConstant:
      values[node->output()] = instr.constant;
      return;
    case K::kGetAttr:
      values[node->output()] = in(0).toObjectRef().getAttr(instr.name);
      return;
    case K::kSetAttr:
      in(0).toObjectRef().setAttr(instr.name, in(1));
      return;
    case K::kIf: {
      std::vector<IValue> outputs = RunBlock(node->blocks()[in(0).toBool() ? 0 : 1], frame);
      for (size_t i = 0; i < outputs.size(); ++i) values[node->output(i)] = std::move(outputs[i]);
      return;
    }
    case K::kLoop: {
      const int64_t trips = in(0).toInt();
      bool go = in(1).toBool();
      std::vector<IValue> carried;
      for (size_t i = 2; i < node->inputs().size(); ++i) carried.push_back(in(i));
      jit::Block* body = node->blocks()[0];
      for (int64_t trip = 0; go && trip < trips; ++trip) {
        values[body->inputs()[0]] = trip;
        for (size_t k = 0; k < carried.size(); ++k) values[body->inputs()[k + 1]] = std::move(carried[k]);
        std::vector<IValue> outputs = RunBlock(body, frame);
        go = outputs[0].toBool();
        carried.assign(std::make_move_iterator(outputs.begin() + 1), std::make_move_iterator(outputs.end()));
      }
      for (size_t i = 0; i < carried.size(); ++i) values[node->output(i)] = std::move(carried[i]);
      return;
    }
    case K::kListConstruct: {
      c10::impl::GenericList list(instr.element);
      list.reserve(node->inputs().size());
      for (size_t i = 0; i < node->inputs().size(); ++i) list.push_back(in(i));
      values[node->output()] = IValue(std::move(list));
      return;
    }
    case K::kTupleConstruct: {
      std::vector<IValue> items;
      for (size_t i = 0; i < node->inputs().size(); ++i) items.push_back(in(i));
      values[node->output()] = c10::ivalue::Tuple::create(std::move(items));
      return;
    }
    case K::kTupleUnpack: {
      const auto& items = in(0).toTupleRef().elements();
      for (size_t i = 0; i < node->outputs().size(); ++i) values[node->output(i)] = items[i];
      return;
    }
    case K::kListUnpack: {
      const c10::ArrayRef<IValue> items = in(0).toListRef();
      TORCH_CHECK(items.size() == node->outputs().size(), "ListUnpack: expected ", node->outputs().size(),
                  " items, got ", items.size());
      for (size_t i = 0; i < node->outputs().size(); ++i) values[node->output(i)] = items[i];
      return;
    }
    case K::kTupleIndex: {
      const auto& items = in(0).toTupleRef().elements();
      int64_t index = in(1).toInt();
      if (index < 0) index += static_cast<int64_t>(items.size());
      values[node->output()] = items.at(static_cast<size_t>(index));
      return;
    }
    case K::kIdentity:
      values[node->output()] = in(0);
      return;
    case K::kModule: {
      torch::nn::Module& module = *frame.modules.at(instr.name);
      const torch::Tensor x = in(0).toTensor();
      torch::Tensor y;
      if (auto* m = dynamic_cast<torch::nn::Conv2dImpl*>(&module)) {
        y = m->forward(x);
      } else if (auto* m3 = dynamic_cast<torch::nn::Conv3dImpl*>(&module)) {
        y = m3->forward(x);
      } else if (auto* x2 = dynamic_cast<XConv2dImpl*>(&module)) {
        y = x2->forward(x);
      } else if (auto* x3 = dynamic_cast<XConv3dImpl*>(&module)) {
        y = x3->forward(x);
      } else if (auto* relu = dynamic_cast<torch::nn::ReLUImpl*>(&module)) {
        y = relu->forward(x);
      } else if (auto* mask = dynamic_cast<MaskReLUImpl*>(&module)) {
        y = mask->forward(x);
      } else if (auto* pool = dynamic_cast<torch::nn::MaxPool2dImpl*>(&module)) {
        y = pool->forward(x);
      } else if (auto* pool3 = dynamic_cast<torch::nn::MaxPool3dImpl*>(&module)) {
        y = pool3->forward(x);
      } else if (auto* index = dynamic_cast<IndexMaxPoolImpl*>(&module)) {
        y = index->forward(x);
      } else {
        TORCH_CHECK(false, "script network: ", instr.name, " is a ", module.name(), ", which it cannot call");
      }
      values[node->output()] = std::move(y);
      return;
    }
    case K::kOperator: {
      jit::Stack stack;
      stack.reserve(node->inputs().size());
      for (size_t i = 0; i < node->inputs().size(); ++i) stack.push_back(in(i));
      instr.operation(stack);
      const size_t n = node->outputs().size();
      TORCH_CHECK(stack.size() >= n, "script network: ", node->kind().toQualString(), " left ", stack.size(),
                  " values for ", n, " outputs");
      for (size_t i = 0; i < n; ++i) values[node->output(i)] = std::move(stack[stack.size() - n + i]);
      return;
    }
  }
}

torch::Tensor ScriptNetworkImpl::forward(const torch::Tensor& input) {
  Frame frame;
  for (const auto& item : named_modules("", /*include_self=*/false)) frame.modules[item.key()] = item.value();
  frame.values[graph_->inputs()[0]] = script_._ivalue();
  frame.values[graph_->inputs()[1]] = input;
  try {
    std::vector<IValue> outputs = RunBlock(graph_->block(), frame);
    return outputs.at(0).toTensor();
  } catch (const c10::Error&) {
    throw;
  } catch (const std::exception& e) {
    // TorchScript's own exceptions (RaiseException, a failed assert) reach callers as c10::Error.
    TORCH_CHECK(false, "the TorchScript module's forward raised: ", e.what());
  }
}

void ScriptNetworkImpl::train(bool on) {
  NetworkImpl::train(on);
  script_.train(on);
}

absl::Status ScriptNetworkImpl::Save(const std::string& path) {
  return GuardExceptions(absl::StrCat("saving the TorchScript module to ", path), [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    // Our tensors are the script module's unless something replaced them (a checkpoint load that
    // swapped storages, a dtype cast): write every one back by name.
    auto put = [&](const std::string& name, const torch::Tensor& value) {
      std::vector<std::string> parts = absl::StrSplit(name, '.');
      const std::string leaf = parts.back();
      parts.pop_back();
      jit::Module holder = script_;
      for (const std::string& part : parts) {
        if (!holder.hasattr(part) || !holder.attr(part).isModule()) return;  // xtrain's own (XConv's seed)
        holder = holder.attr(part).toModule();
      }
      if (!holder.hasattr(leaf) || !holder.attr(leaf).isTensor()) return;
      const torch::Tensor current = holder.attr(leaf).toTensor();
      if (!current.is_same(value)) holder.setattr(leaf, value);
    };
    for (const auto& p : named_parameters()) put(p.key(), p.value());
    for (const auto& b : named_buffers()) put(b.key(), b.value());
    const bool was_training = script_.is_training();
    script_.eval();
    const std::string temporary = absl::StrCat(path, ".partial");
    script_.save(temporary);
    script_.train(was_training);
    if (std::rename(temporary.c_str(), path.c_str()) != 0) {
      return absl::InternalError(absl::StrCat("renaming ", temporary, " to ", path, " failed"));
    }
    return absl::OkStatus();
  });
}

}  // namespace xtrain::core
