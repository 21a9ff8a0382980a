// LoRA wrappers: their TorchScript source, the conv hyperparameters read off the base layer's
// graph, and the jobs that switch, merge and unmerge adapters.
#include "lora.h"

#include <algorithm>
#include <iomanip>
#include <sstream>

#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/inliner.h>

#include "job.h"
#include "surgery.h"
#include "tensor.h"

namespace tl {
namespace {

const char* kWrapperClass = "LoraLayer";

std::string number(double value) {
  std::ostringstream out;
  out << std::setprecision(17) << value;
  std::string text = out.str();
  if (text.find_first_of(".e") == std::string::npos) text += ".";
  return text;
}

torch::jit::Module newModule(const std::string& name, const std::shared_ptr<torch::jit::CompilationUnit>& unit) {
  torch::jit::Module module(c10::QualifiedName("__torch__.torchlite.nn." + name), unit, /*shouldMangle=*/true);
  module.register_attribute("training", c10::BoolType::get(), true);
  return module;
}

// A Conv2d's stride, padding and dilation, read from the aten::conv2d its forward calls
// (a scripted nn.Conv2d keeps them as constants, a traced one inlines them). Grouped
// convolutions and non-zero padding modes are refused, as PEFT refuses them.
struct ConvShape {
  std::vector<int64_t> stride, padding, dilation;
};

ConvShape convShapeOf(const torch::jit::Module& conv, const std::string& path) {
  std::shared_ptr<torch::jit::Graph> graph = conv.get_method("forward").graph()->copy();
  // nn.Conv2d's forward branches on its padding mode, a constant: inlined and folded, one call is left.
  torch::jit::Inline(*graph);
  torch::jit::ConstantPropagation(graph);
  for (torch::jit::Node* node : graph->nodes()) {
    if (node->kind() == c10::Symbol::fromQualString("aten::constant_pad_nd") || node->kind() == c10::Symbol::fromQualString("aten::pad"))
      break;
    if (node->kind() != c10::Symbol::fromQualString("aten::conv2d") && node->kind() != c10::Symbol::fromQualString("aten::_convolution")) continue;
    auto ints = [&](size_t i) -> std::optional<std::vector<int64_t>> {
      std::optional<c10::IValue> value = torch::jit::toIValue(node->input(i));
      if (!value || !value->isIntList()) return std::nullopt;
      return value->toIntVector();
    };
    bool underscore = node->kind() == c10::Symbol::fromQualString("aten::_convolution");
    auto stride = ints(3), padding = ints(4), dilation = ints(5);
    std::optional<c10::IValue> groups = torch::jit::toIValue(node->input(underscore ? 8 : 6));
    if (stride && padding && dilation && groups && groups->isInt()) {
      if (groups->toInt() != 1)
        throw CodedError("TORCHLITE_UNSUPPORTED_SURGERY", "cannot put LoRA on '" + path + "': it is a grouped convolution (groups " +
                                                             std::to_string(groups->toInt()) + "), which LoRA does not cover; leave it out of `targets`");
      return {*stride, *padding, *dilation};
    }
  }
  throw CodedError("TORCHLITE_UNSUPPORTED_SURGERY", "cannot put LoRA on '" + path +
                                                       "': its forward is not one zero-padded conv2d with constant stride, padding and dilation");
}

std::string intList(const std::vector<int64_t>& values) {
  std::string text = "[";
  for (size_t i = 0; i < values.size(); ++i) text += (i ? ", " : "") + std::to_string(values[i]);
  return text + "]";
}

// lora_A or lora_B of one adapter: a bias-free Linear or Conv2d with PEFT's shapes.
torch::jit::Module factor(const std::shared_ptr<torch::jit::CompilationUnit>& unit, const torch::Tensor& weight, const std::optional<ConvShape>& conv) {
  torch::jit::Module module = newModule(conv ? "Conv2d" : "Linear", unit);
  module.register_parameter("weight", weight, false);
  if (!conv) {
    module.define("def forward(self, input: Tensor) -> Tensor:\n    return torch.linear(input, self.weight, None)\n");
  } else {
    module.define("def forward(self, input: Tensor) -> Tensor:\n    return torch.conv2d(input, self.weight, None, " + intList(conv->stride) +
                  ", " + intList(conv->padding) + ", " + intList(conv->dilation) + ", 1)\n");
  }
  return module;
}

// Each adapter of a wrapper: its name, scaling (alpha / r) and dropout probability.
struct Adapter {
  std::string name;
  double scaling;
  double dropout;
};

std::vector<Adapter> adaptersOf(const torch::jit::Module& wrapper) {
  std::vector<Adapter> adapters;
  c10::impl::GenericList names = wrapper.attr("adapter_names").toList();
  c10::impl::GenericList scalings = wrapper.attr("scalings").toList();
  c10::impl::GenericList dropouts = wrapper.attr("dropouts").toList();
  for (size_t i = 0; i < names.size(); ++i)
    adapters.push_back({names.get(i).toStringRef(), scalings.get(i).toDouble(), dropouts.get(i).toDouble()});
  return adapters;
}

}  // namespace

std::vector<std::pair<std::string, torch::jit::Module>> loraWrappers(const torch::jit::Module& root) {
  std::vector<std::pair<std::string, torch::jit::Module>> found;
  for (const auto& item : root.named_modules())
    if (isLoraLayer(item.value)) found.emplace_back(item.name, item.value);
  return found;
}

bool isLoraLayer(const torch::jit::Module& module) {
  return module.type()->name() && module.type()->name()->name().find(kWrapperClass) == 0 && module.hasattr("adapter_names");
}

namespace {

// One adapter of a wrapper with its factor modules.
struct Factors {
  Adapter adapter;
  torch::jit::Module a, b;
};

// A wrapper around `base` holding `adapters`, running `active`.
torch::jit::Module wrapperOf(const std::shared_ptr<torch::jit::CompilationUnit>& unit, const torch::jit::Module& base,
                             const std::vector<Factors>& adapters, const c10::IValue& active) {
  torch::jit::Module wrapper = newModule(kWrapperClass, unit);
  wrapper.register_module("base_layer", base);
  torch::jit::Module loraA = newModule("LoraFactors", unit), loraB = newModule("LoraFactors", unit);
  c10::impl::GenericList names(c10::StringType::get()), scalings(c10::FloatType::get()), dropouts(c10::FloatType::get());
  for (const Factors& f : adapters) {
    loraA.register_module(f.adapter.name, f.a);
    loraB.register_module(f.adapter.name, f.b);
    names.push_back(f.adapter.name);
    scalings.push_back(f.adapter.scaling);
    dropouts.push_back(f.adapter.dropout);
  }
  wrapper.register_module("lora_A", loraA);
  wrapper.register_module("lora_B", loraB);
  wrapper.register_attribute("adapter_names", c10::ListType::ofStrings(), names);
  wrapper.register_attribute("scalings", c10::ListType::ofFloats(), scalings);
  wrapper.register_attribute("dropouts", c10::ListType::ofFloats(), dropouts);
  wrapper.register_attribute("active", c10::StringType::get(), active);
  wrapper.register_attribute("merged", c10::StringType::get(), c10::IValue(std::string()));
  // forward as PEFT's: the base's output, plus the active adapter's B(A(dropout(x))) × alpha / r
  // unless that adapter is merged into the base already. Submodules built in C++ are called
  // through .forward: the compiler resolves no __call__ for them.
  std::string body = "def forward(self, input: Tensor) -> Tensor:\n    result = self.base_layer.forward(input)\n";
  for (const Factors& f : adapters) {
    const Adapter& adapter = f.adapter;
    std::string x = adapter.dropout > 0 ? "torch.dropout(input, " + number(adapter.dropout) + ", self.training)" : "input";
    body += "    if self.active == \"" + adapter.name + "\" and self.merged != \"" + adapter.name + "\":\n" +
            "        result = result + self.lora_B." + adapter.name + ".forward(self.lora_A." + adapter.name + ".forward(" + x + ")) * " +
            number(adapter.scaling) + "\n";
  }
  wrapper.define(body + "    return result\n");
  return wrapper;
}

// The adapters a wrapper holds, with their factor modules.
std::vector<Factors> factorsOf(const torch::jit::Module& wrapper) {
  std::vector<Factors> all;
  torch::jit::Module a = wrapper.attr("lora_A").toModule(), b = wrapper.attr("lora_B").toModule();
  for (const Adapter& adapter : adaptersOf(wrapper)) all.push_back({adapter, a.attr(adapter.name).toModule(), b.attr(adapter.name).toModule()});
  return all;
}

}  // namespace

torch::jit::Module buildLora(Napi::Env env, const Napi::Object& spec, const std::string& path, const ModelState& target) {
  const std::shared_ptr<torch::jit::CompilationUnit>& unit = target.module.type()->compilation_unit();
  torch::jit::Module current = submoduleAt(target.module, path);
  bool wrapped = isLoraLayer(current);
  torch::jit::Module base = wrapped ? current.attr("base_layer").toModule() : current;
  std::vector<Factors> adapters = wrapped ? factorsOf(current) : std::vector<Factors>{};
  std::string name = spec.Get("adapter").As<Napi::String>().Utf8Value();
  if (wrapped && !current.attr("merged").toStringRef().empty())
    throw CodedError("TORCHLITE_BAD_STATE", "'" + path + "' has the adapter '" + current.attr("merged").toStringRef() + "' merged; lora.unmerge first");
  auto held = std::find_if(adapters.begin(), adapters.end(), [&](const Factors& f) { return f.adapter.name == name; });
  if (spec.Get("remove").ToBoolean().Value()) {
    if (held == adapters.end()) throw CodedError("TORCHLITE_NO_MATCH", "'" + path + "' has no adapter '" + name + "'");
    adapters.erase(held);
    // The last adapter gone, the original module goes back in its place.
    if (adapters.empty()) return base;
    const std::string& active = current.attr("active").toStringRef();
    return wrapperOf(unit, base, adapters, active == name ? c10::IValue(adapters.front().adapter.name) : current.attr("active"));
  }
  if (held != adapters.end())
    throw CodedError("TORCHLITE_BAD_ARGUMENT", "'" + path + "' already has the adapter '" + name + "'; choose another name, or lora.remove it first");
  bool conv = spec.Get("layer").As<Napi::String>().Utf8Value() == "conv2d";
  std::optional<ConvShape> shape = conv ? std::optional<ConvShape>(convShapeOf(base, path)) : std::nullopt;
  torch::Tensor weight = base.attr("weight").toTensor();
  Napi::Object tensors = spec.Get("tensors").As<Napi::Object>();
  // On the base's device and in its dtype, and trainable (the base itself stays frozen).
  auto adopt = [&](const char* key) { return TensorWrap::From(env, tensors.Get(key)).to(weight.device(), weight.scalar_type()).detach().clone().set_requires_grad(true); };
  Adapter added{name, spec.Get("scaling").As<Napi::Number>().DoubleValue(), spec.Get("dropout").As<Napi::Number>().DoubleValue()};
  adapters.push_back({added, factor(unit, adopt("A"), shape), factor(unit, adopt("B"), shape ? std::optional<ConvShape>(ConvShape{{1, 1}, {0, 0}, {1, 1}}) : std::nullopt)});
  // PEFT activates the first adapter; one added later waits for lora.use.
  return wrapperOf(unit, base, adapters, wrapped ? current.attr("active") : c10::IValue(name));
}

std::string requestAdapter(const Napi::Value& options) {
  if (!options.IsObject()) return "";
  Napi::Value adapter = options.As<Napi::Object>().Get("adapter");
  return adapter.IsString() ? adapter.As<Napi::String>().Utf8Value() : "";
}

namespace {

// A job on the model's training lane that edits its wrappers under the model's lock.
Napi::Value wrapperJob(const Napi::CallbackInfo& info, std::function<void(ModelState&)> edit) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = ModelWrap::StateOf(env, info[0]);
    return Job<bool>::Start(
        env, {state->device, Priority::Training},
        [state, edit = std::move(edit)] {
          std::lock_guard<std::mutex> lock(state->mutex);
          if (loraWrappers(state->module).empty()) throw CodedError("TORCHLITE_NO_MATCH", "the model has no LoRA adapters; add one with lora.apply");
          edit(*state);
          return true;
        },
        [](Napi::Env env, bool&) { return env.Undefined(); });
  });
}

}  // namespace

void requireAdapter(const ModelState& state, const std::string& name) {
  std::set<std::string> all;
  for (const auto& [path, wrapper] : loraWrappers(state.module))
    for (const Adapter& adapter : adaptersOf(wrapper)) all.insert(adapter.name);
  if (all.count(name)) return;
  std::string list;
  for (const std::string& a : all) list += (list.empty() ? "'" : ", '") + a + "'";
  throw CodedError("TORCHLITE_NO_MATCH", "the model has no LoRA adapter '" + name + "' (it has " + list + ")");
}

Napi::Value LoraUse(const Napi::CallbackInfo& info) {
  std::string name = info[1].As<Napi::String>().Utf8Value();
  return wrapperJob(info, [name](ModelState& state) {
    if (!name.empty()) requireAdapter(state, name);
    for (auto& [path, wrapper] : loraWrappers(state.module)) wrapper.setattr("active", name);
  });
}

Napi::Value LoraMerge(const Napi::CallbackInfo& info) {
  std::string name = info[1].As<Napi::String>().Utf8Value();
  return wrapperJob(info, [name](ModelState& state) {
    requireAdapter(state, name);
    torch::NoGradGuard noGrad;
    for (auto& [path, wrapper] : loraWrappers(state.module)) {
      const std::string& merged = wrapper.attr("merged").toStringRef();
      if (!merged.empty()) throw CodedError("TORCHLITE_BAD_STATE", "'" + path + "' has the adapter '" + merged + "' merged already; lora.unmerge first");
    }
    for (auto& [path, wrapper] : loraWrappers(state.module)) {
      for (const Adapter& adapter : adaptersOf(wrapper)) {
        if (adapter.name != name) continue;
        torch::Tensor weight = wrapper.attr("base_layer").toModule().attr("weight").toTensor();
        torch::Tensor a = wrapper.attr("lora_A").toModule().attr(name).toModule().attr("weight").toTensor();
        torch::Tensor b = wrapper.attr("lora_B").toModule().attr(name).toModule().attr("weight").toTensor();
        // B·A, for a convolution over its flattened kernel: PEFT's delta weight.
        torch::Tensor delta = torch::matmul(b.flatten(1), a.flatten(1)).view(weight.sizes()) * adapter.scaling;
        state.loraUnmerged[path] = weight.detach().clone();
        weight.add_(delta.to(weight.scalar_type()));
        wrapper.setattr("merged", name);
      }
    }
  });
}

Napi::Value LoraUnmerge(const Napi::CallbackInfo& info) {
  return wrapperJob(info, [](ModelState& state) {
    torch::NoGradGuard noGrad;
    for (auto& [path, wrapper] : loraWrappers(state.module)) {
      auto original = state.loraUnmerged.find(path);
      if (original == state.loraUnmerged.end()) continue;
      wrapper.attr("base_layer").toModule().attr("weight").toTensor().copy_(original->second);
      wrapper.setattr("merged", std::string());
      state.loraUnmerged.erase(original);
    }
  });
}

}  // namespace tl
