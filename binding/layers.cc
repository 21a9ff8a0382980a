// Native layers (nn.*) built as TorchScript modules inside the target model.
#include "layers.h"

#include <cmath>
#include <iomanip>
#include <sstream>

#include "lora.h"
#include "model.h"
#include "tensor.h"

namespace tl {
namespace {

std::string literal(double value) {
  std::ostringstream out;
  out << std::setprecision(17) << value;
  std::string text = out.str();
  if (text.find_first_of(".e") == std::string::npos) text += ".";  // keep it a float in TorchScript
  return text;
}

int64_t intOption(const Napi::Object& spec, const char* key) {
  return spec.Get(key).As<Napi::Number>().Int64Value();
}

torch::Tensor tensorOption(Napi::Env env, const Napi::Object& spec, const char* key) {
  Napi::Object tensors = spec.Get("tensors").As<Napi::Object>();
  Napi::Value value = tensors.Get(key);
  return value.IsUndefined() || value.IsNull() ? torch::Tensor() : TensorWrap::From(env, value);
}

void addParameter(torch::jit::Module& module, const std::string& name, const torch::Tensor& value) {
  // New tensors default to requires_grad = false; a head built that way never trains.
  module.register_parameter(name, value.detach().clone().set_requires_grad(true), false);
}

// A guard at the top of forward so a wrongly sized replacement fails with the module's
// path and sizes, not a bare matmul error from deep inside the parent.
std::string sizeCheck(const std::string& path, const std::string& layer, const char* dim, int64_t expected,
                      const char* what) {
  std::ostringstream out;
  // `assert` compiles to a raise without resolving exception classes, which a module
  // defined from C++ has no resolver for.
  out << "    assert input.size(" << dim << ") == " << expected << ", \"shape mismatch in '" << path << "' (" << layer
      << "): expected " << expected << " " << what << " but received \" + str(input.size(" << dim << "))\n";
  return out.str();
}

torch::jit::Module newModule(const std::string& name, const std::shared_ptr<torch::jit::CompilationUnit>& unit) {
  torch::jit::Module module(c10::QualifiedName("__torch__.torchlite.nn." + name), unit, /*shouldMangle=*/true);
  // Modules built in C++ get no `training` attribute, but self.training and train() need it.
  module.register_attribute("training", c10::BoolType::get(), true);
  return module;
}

const char* kHeader = "def forward(self, input: Tensor) -> Tensor:\n";

}  // namespace

// nn.Linear / nn.Conv2d reset_parameters(): kaiming_uniform_(a=sqrt(5)) for the weight,
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias, computed in the same order and with
// the same double arithmetic as torch/nn/init.py.
std::pair<torch::Tensor, torch::Tensor> kaimingInit(std::vector<int64_t> shape, bool bias) {
  torch::NoGradGuard noGrad;
  torch::Tensor weight = torch::empty(shape);
  int64_t fanIn = 1;
  for (size_t i = 1; i < shape.size(); ++i) fanIn *= shape[i];
  double a = std::sqrt(5.0);
  double gain = std::sqrt(2.0 / (1 + a * a));
  double bound = std::sqrt(3.0) * (gain / std::sqrt(static_cast<double>(fanIn)));
  weight.uniform_(-bound, bound);
  torch::Tensor biasTensor;
  if (bias) {
    double biasBound = fanIn > 0 ? 1 / std::sqrt(static_cast<double>(fanIn)) : 0;
    biasTensor = torch::empty({shape[0]}).uniform_(-biasBound, biasBound);
  }
  return {weight, biasTensor};
}

torch::jit::Module buildLayer(Napi::Env env, const Napi::Object& spec, const std::string& path, const ModelState& target) {
  const std::shared_ptr<torch::jit::CompilationUnit>& unit = target.module.type()->compilation_unit();
  std::string kind = spec.Get("kind").As<Napi::String>().Utf8Value();
  torch::Tensor weight = tensorOption(env, spec, "weight");
  torch::Tensor bias = tensorOption(env, spec, "bias");
  std::string biasArg = bias.defined() ? "self.bias" : "None";

  if (kind == "linear") {
    int64_t in = intOption(spec, "inFeatures"), out = intOption(spec, "outFeatures");
    std::string name = "Linear(" + std::to_string(in) + " -> " + std::to_string(out) + ")";
    torch::jit::Module module = newModule("Linear", unit);
    addParameter(module, "weight", weight);
    if (bias.defined()) addParameter(module, "bias", bias);
    module.define(std::string(kHeader) + sizeCheck(path, name, "-1", in, "input features in the last dimension") +
                  "    return torch.linear(input, self.weight, " + biasArg + ")\n");
    return module;
  }
  if (kind == "conv2d") {
    int64_t in = intOption(spec, "inChannels"), stride = intOption(spec, "stride"), padding = intOption(spec, "padding");
    std::string name = "Conv2d(" + std::to_string(in) + " -> " + std::to_string(intOption(spec, "outChannels")) + ")";
    torch::jit::Module module = newModule("Conv2d", unit);
    addParameter(module, "weight", weight);
    if (bias.defined()) addParameter(module, "bias", bias);
    std::string s = std::to_string(stride), p = std::to_string(padding);
    module.define(std::string(kHeader) + sizeCheck(path, name, "-3", in, "input channels") +
                  "    return torch.conv2d(input, self.weight, " + biasArg + ", [" + s + ", " + s + "], [" + p + ", " +
                  p + "], [1, 1], 1)\n");
    return module;
  }
  if (kind == "batchNorm1d" || kind == "layerNorm") {
    int64_t features = intOption(spec, "features");
    bool batch = kind == "batchNorm1d";
    std::string name = (batch ? "BatchNorm1d(" : "LayerNorm(") + std::to_string(features) + ")";
    torch::jit::Module module = newModule(batch ? "BatchNorm1d" : "LayerNorm", unit);
    addParameter(module, "weight", torch::ones({features}));
    addParameter(module, "bias", torch::zeros({features}));
    if (batch) {
      module.register_buffer("running_mean", torch::zeros({features}));
      module.register_buffer("running_var", torch::ones({features}));
      module.register_buffer("num_batches_tracked", torch::zeros({}, torch::kLong));
      module.define(std::string(kHeader) + sizeCheck(path, name, "1", features, "features in dimension 1") +
                    "    if self.training:\n"
                    "        self.num_batches_tracked.add_(1)\n"
                    "    return torch.batch_norm(input, self.weight, self.bias, self.running_mean, self.running_var, "
                    "self.training, 0.1, 1e-05, True)\n");
    } else {
      module.define(std::string(kHeader) + sizeCheck(path, name, "-1", features, "features in the last dimension") +
                    "    return torch.layer_norm(input, [" + std::to_string(features) +
                    "], self.weight, self.bias, 1e-05, True)\n");
    }
    return module;
  }
  if (kind == "sequential") {
    Napi::Array children = spec.Get("children").As<Napi::Array>();
    torch::jit::Module module = newModule("Sequential", unit);
    std::string body = kHeader;
    for (uint32_t i = 0; i < children.Length(); ++i) {
      std::string index = std::to_string(i);
      module.register_module(index, buildLayer(env, children.Get(i).As<Napi::Object>(), path + "." + index, target));
      body += "    input = getattr(self, \"" + index + "\").forward(input)\n";
    }
    module.define(body + "    return input\n");
    return module;
  }
  if (kind == "lora") return buildLora(env, spec, path, target);
  if (kind == "model") {
    // Another loaded model is copied in through its serialised form, imported into this
    // unit so its class names are mangled instead of clashing with the target's.
    ModelPtr source = ModelWrap::StateOf(env, spec.Get("model"));
    // The caller holds the target's lock, so copying the target into itself would wait on
    // it forever.
    if (source.get() == &target)
      throw CodedError("TORCHLITE_BAD_ARGUMENT", "a model cannot be put inside itself; load a second copy to use it as a module");
    std::stringstream archive;
    {
      auto lock = lockIdle(*source, "the model passed as a module");
      source->module.save(archive);
    }
    torch::jit::ExtraFilesMap extra;
    torch::jit::Module module = torch::jit::import_ir_module(unit, archive, torch::kCPU, extra);
    for (torch::Tensor parameter : module.parameters()) parameter.requires_grad_(true);
    return module;
  }
  static const std::map<std::string, std::pair<const char*, std::string>> simple = {
      {"relu", {"ReLU", "    return torch.relu(input)\n"}},
      {"gelu", {"GELU", "    return torch.gelu(input)\n"}},
      {"flatten", {"Flatten", "    return torch.flatten(input, 1)\n"}},
      {"identity", {"Identity", "    return input\n"}},
  };
  if (kind == "dropout") {
    torch::jit::Module module = newModule("Dropout", unit);
    module.define(std::string(kHeader) + "    return torch.dropout(input, " +
                  literal(spec.Get("p").As<Napi::Number>().DoubleValue()) + ", self.training)\n");
    return module;
  }
  auto found = simple.find(kind);
  if (found == simple.end()) throw CodedError("TORCHLITE_BAD_ARGUMENT", "unknown layer kind '" + kind + "'");
  torch::jit::Module module = newModule(found->second.first, unit);
  module.define(std::string(kHeader) + found->second.second);
  return module;
}

Napi::Value InitLayerParameters(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    std::vector<int64_t> shape = toShape(info[0]);
    auto [weight, bias] = kaimingInit(shape, info[1].As<Napi::Boolean>().Value());
    Napi::Object result = Napi::Object::New(env);
    result.Set("weight", TensorWrap::Wrap(env, weight));
    if (bias.defined()) result.Set("bias", TensorWrap::Wrap(env, bias));
    return result;
  });
}

}  // namespace tl
