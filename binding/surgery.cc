// Module surgery: replacing submodules, the BatchNorm policies, the traced training flags.
#include "surgery.h"
#include "layout.h"

#include <functional>
#include <limits>
#include <set>

namespace tl {
namespace {

using torch::jit::Block;
using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

void forEachNode(Block* block, const std::function<void(Node*)>& visit) {
  for (Node* node : block->nodes()) {
    visit(node);
    for (Block* inner : node->blocks()) forEachNode(inner, visit);
  }
}

std::vector<std::shared_ptr<Graph>> methodGraphs(const c10::ClassTypePtr& type) {
  std::vector<std::shared_ptr<Graph>> graphs;
  for (torch::jit::Function* method : type->methods()) graphs.push_back(torch::jit::toGraphFunction(*method).graph());
  return graphs;
}

// The `self.<name>` reads in a graph of the parent's class.
std::vector<Node*> attributeReads(const std::shared_ptr<Graph>& graph, const std::string& name) {
  std::vector<Node*> reads;
  Value* self = graph->inputs().at(0);
  forEachNode(graph->block(), [&](Node* node) {
    if (node->kind() == c10::prim::GetAttr && node->input(0) == self && node->s(c10::attr::name) == name)
      reads.push_back(node);
  });
  return reads;
}

std::string describeUse(const torch::jit::Use& use) {
  Node* user = use.user;
  if (user->kind() == c10::prim::GetAttr) return "reads its attribute '" + user->s(c10::attr::name) + "'";
  if (user->kind() == c10::prim::CallMethod) return "calls its method '" + user->s(c10::attr::name) + "'";
  return std::string("passes it to ") + user->kind().toQualString();
}

std::string signature(const c10::FunctionSchema& schema) {
  std::string text = "(";
  for (size_t i = 1; i < schema.arguments().size(); ++i)
    text += (i > 1 ? ", " : "") + schema.arguments()[i].type()->annotation_str();
  text += ") -> ";
  for (size_t i = 0; i < schema.returns().size(); ++i) text += (i ? ", " : "") + schema.returns()[i].type()->annotation_str();
  return text;
}

// Argument types may widen and the result may narrow, exactly what the parent's
// already-compiled call sites can accept.
void checkCompatible(const std::string& path, const c10::FunctionSchema& current, const c10::FunctionSchema& next) {
  bool ok = current.arguments().size() == next.arguments().size() && current.returns().size() == next.returns().size();
  for (size_t i = 1; ok && i < current.arguments().size(); ++i)
    ok = current.arguments()[i].type()->isSubtypeOf(*next.arguments()[i].type());
  for (size_t i = 0; ok && i < current.returns().size(); ++i)
    ok = next.returns()[i].type()->isSubtypeOf(*current.returns()[i].type());
  if (!ok)
    throw CodedError("TORCHLITE_INCOMPATIBLE_MODULE", "cannot replace '" + path + "': its forward is " +
                                                          signature(current) + " but the replacement's is " +
                                                          signature(next));
}

torch::jit::Module resolveParent(const torch::jit::Module& root, const std::string& path, std::string& name) {
  torch::jit::Module parent = root;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    std::string walked = path.substr(0, dot == std::string::npos ? path.size() : dot);
    if (part.empty() || !parent.hasattr(part) || !parent.attr(part).isModule()) {
      bool frozen = root.named_children().size() == 0 && root.parameters().size() == 0;
      if (frozen)
        throw CodedError("TORCHLITE_FROZEN_MODEL", "cannot replace '" + path +
                                                       "': the model has no submodules left (frozen or inlined, e.g. "
                                                       "by torch.jit.freeze), so it cannot be edited");
      throw CodedError("TORCHLITE_NO_SUCH_MODULE", "cannot replace '" + path + "': the model has no submodule '" +
                                                       walked + "'");
    }
    if (dot == std::string::npos) {
      name = part;
      return parent;
    }
    parent = parent.attr(part).toModule();
    start = dot + 1;
  }
}

}  // namespace

torch::jit::Module submoduleAt(const torch::jit::Module& root, const std::string& path) {
  std::string name;
  return resolveParent(root, path, name).attr(name).toModule();
}

void replaceSubmodule(ModelState& state, const std::string& path, torch::jit::Module replacement) {
  std::string name;
  torch::jit::Module parent = resolveParent(state.module, path, name);
  torch::jit::Module current = parent.attr(name).toModule();
  if (!current.type()->findMethod("forward"))
    throw CodedError("TORCHLITE_UNSUPPORTED_SURGERY",
                     "cannot replace '" + path + "': it has no forward (a ModuleList or ModuleDict); replace its items");
  checkCompatible(path, current.get_method("forward").function().getSchema(),
                  replacement.get_method("forward").function().getSchema());

  c10::ClassTypePtr parentType = parent.type();
  std::vector<Node*> reads;
  for (const auto& graph : methodGraphs(parentType)) {
    for (Node* read : attributeReads(graph, name)) {
      for (const torch::jit::Use& use : read->output()->uses()) {
        bool viaForward = use.user->kind() == c10::prim::CallMethod && use.offset == 0 &&
                          use.user->s(c10::attr::name) == "forward";
        if (!viaForward)
          throw CodedError("TORCHLITE_UNSUPPORTED_SURGERY", "cannot replace '" + path + "': its parent " +
                                                                describeUse(use) + " of it, not only forward");
      }
      reads.push_back(read);
    }
  }
  if (reads.empty())
    throw CodedError("TORCHLITE_FROZEN_MODEL", "cannot replace '" + path +
                                                   "': its parent never calls it (inlined or frozen code), so a "
                                                   "replacement would not run");

  // A class attribute cannot hold another class, and identical blocks share one class,
  // so the slot becomes a module interface on this parent type: every instance keeps
  // dispatching to whatever object its own slot holds.
  auto unit = state.module.type()->compilation_unit();
  auto iface = c10::InterfaceType::create(unit->mangle(c10::QualifiedName("__torch__.torchlite.ModuleInterface")),
                                          /*is_module=*/true);
  iface->addMethod(replacement.get_method("forward").function().getSchema());
  unit->register_type(iface);
  parentType->unsafeChangeAttributeType(name, iface);
  for (Node* read : reads) read->output()->setType(iface);

  replacement.to(state.device);
  replacement.train(parent.is_training());
  parent._ivalue()->setAttr(name, replacement._ivalue());
  // Execution plans already built for the parent and its ancestors still call the old
  // class; cloning rebuilds functions and types while sharing the parameter tensors.
  state.module = state.module.clone(/*inplace=*/true);
  // The new layer's 4-D weights join the model's layout (a no-op for tensors already in it).
  if (state.channelsLast) setChannelsLast(state, true);
  state.generation += 1;
}

size_t trainingFlagInput(const std::string& kind) {
  if (kind == "aten::batch_norm" || kind == "aten::instance_norm") return 5;
  return kind.find("dropout") != std::string::npos ? 2 : 0;  // aten::dropout, feature_dropout, alpha_dropout, ...
}

std::vector<std::string> fixTracedTrainingFlags(torch::jit::Module& module) {
  std::vector<std::string> warnings;
  std::set<c10::ClassType*> done;
  for (const auto& item : module.named_modules()) {
    c10::ClassTypePtr type = item.value.type();
    if (!done.insert(type.get()).second) continue;
    bool hasTraining = type->hasAttribute("training");
    for (const auto& graph : methodGraphs(type)) {
      forEachNode(graph->block(), [&](Node* node) {
        const std::string kind = node->kind().toQualString();
        size_t flag = trainingFlagInput(kind);
        if (flag == 0 || node->inputs().size() <= flag || node->input(flag)->node()->kind() != c10::prim::Constant)
          return;
        if (!hasTraining) {
          warnings.push_back("'" + (item.name.empty() ? std::string("<root>") : item.name) + "' calls " + kind +
                             " with a training flag fixed at trace time and has no `training` attribute; it "
                             "behaves as traced in both train() and eval()");
          return;
        }
        torch::jit::WithInsertPoint point(node);
        Value* training = graph->insertGetAttr(graph->inputs().at(0), "training");
        node->replaceInput(flag, training);
      });
    }
  }
  return warnings;
}

namespace {

// The largest stride a convolution node asks for: a constant, or a list built from
// constants (how TorchScript writes `[2, 2]` and `self.stride`); one known only at run
// time counts as large.
int64_t largestStride(Value* stride) {
  constexpr int64_t unknown = std::numeric_limits<int64_t>::max();
  std::vector<Value*> items{stride};
  if (stride->node()->kind() == c10::prim::ListConstruct) items = stride->node()->inputs().vec();
  int64_t largest = 1;
  for (Value* item : items) {
    // c10::optional on 1.13, std::optional on 2.x: `auto` keeps either (an std::optional
    // built from 1.13's empty one would hold an IValue None instead of nothing).
    auto value = torch::jit::toIValue(item);
    std::vector<c10::IValue> ints = !value                ? std::vector<c10::IValue>{}
                                    : value->isIntList() ? value->toListRef().vec()
                                    : value->isTuple()   ? value->toTupleRef().elements().vec()
                                                         : std::vector<c10::IValue>{*value};
    if (ints.empty()) return unknown;
    for (const c10::IValue& entry : ints) largest = std::max(largest, entry.isInt() ? entry.toInt() : unknown);
  }
  return largest;
}

}  // namespace

std::string nhwcBackwardHazard(const torch::jit::Module& module) {
  for (const auto& item : module.named_modules()) {
    const torch::jit::Module& layer = item.value;
    if (!layer.hasattr("weight") || !layer.attr("weight").isTensor()) continue;
    torch::Tensor weight = layer.attr("weight").toTensor();
    if (weight.dim() != 4 || weight.size(2) != 1 || weight.size(3) != 1 || weight.size(1) % 16 == 0) continue;
    int64_t stride = 1;
    for (const auto& graph : methodGraphs(layer.type())) {
      forEachNode(graph->block(), [&](Node* node) {
        // conv2d, convolution and _convolution all take (input, weight, bias, stride, ...).
        if (node->kind() == c10::aten::conv2d || node->kind() == c10::aten::convolution || node->kind() == c10::aten::_convolution)
          stride = std::max(stride, largestStride(node->input(3)));
      });
    }
    if (stride > 1)
      return "'" + (item.name.empty() ? std::string("<root>") : item.name) + "' (a 1x1 convolution with stride > 1 over " +
             std::to_string(weight.size(1)) + " input channels)";
  }
  return "";
}

void applyBatchNormPolicy(ModelState& state) {
  bool training = state.module.is_training();
  for (const auto& item : state.module.named_modules()) {
    if (item.value.type()->name()->name().find("BatchNorm") == std::string::npos) continue;
    bool any = false, allFrozen = true;
    for (const torch::Tensor& parameter : item.value.parameters()) {
      any = true;
      allFrozen = allFrozen && !parameter.requires_grad();
    }
    bool eval = state.bnPolicy == "eval" || (state.bnPolicy == "frozen-eval" && any && allFrozen);
    torch::jit::Module layer = item.value;
    layer.train(training && !eval);
  }
}

}  // namespace tl
