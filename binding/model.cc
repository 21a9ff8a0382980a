// ModelWrap: loading, the module tree and its facts, state copies, surgery entry points, save.
#include "model.h"

#include <algorithm>
#include <set>

#include "addon.h"
#include "archive.h"
#include "compat.h"
#include "ivalue.h"
#include "job.h"
#include "inference.h"
#include "layers.h"
#include "layout.h"
#include "surgery.h"
#include "tensor.h"

namespace tl {
namespace {

int64_t parameterCount(const torch::jit::Module& module, bool trainableOnly) {
  int64_t count = 0;
  for (const torch::Tensor& parameter : module.parameters())
    if (!trainableOnly || parameter.requires_grad()) count += parameter.numel();
  return count;
}

int64_t tensorBytes(const torch::jit::Module& module) {
  int64_t bytes = 0;
  for (const torch::Tensor& parameter : module.parameters()) bytes += parameter.numel() * parameter.element_size();
  for (const torch::Tensor& buffer : module.buffers()) bytes += buffer.numel() * buffer.element_size();
  return bytes;
}

// Traced and scripted type names carry module paths and mangling
// (__torch__.torchvision.models.resnet.___torch_mangle_26.BatchNorm2d); users know
// the layer by its class name alone.
std::string typeName(const torch::jit::Module& module) { return module.type()->name()->name(); }

Napi::Object describeTensor(Napi::Env env, const std::string& name, const torch::Tensor& tensor) {
  Napi::Object entry = Napi::Object::New(env);
  entry.Set("name", name);
  entry.Set("shape", fromShape(env, tensor.sizes()));
  entry.Set("dtype", dtypeName(tensor.scalar_type()));
  entry.Set("numel", static_cast<double>(tensor.numel()));
  return entry;
}

}  // namespace

std::unique_lock<std::mutex> lockIdle(ModelState& state, const char* what) {
  std::unique_lock<std::mutex> lock(state.mutex, std::try_to_lock);
  if (!lock)
    throw CodedError("TORCHLITE_MODEL_BUSY", std::string(what) + " is running a job; await its pending operations first");
  return lock;
}

Napi::Function ModelWrap::Define(Napi::Env env) {
  return DefineClass(env, "NativeModel",
                     {
                         StaticMethod<&ModelWrap::Load>("load"),
                         StaticMethod<&ModelWrap::FromLayer>("fromLayer"),
                         InstanceMethod<&ModelWrap::InferenceCopy>("inferenceCopy"),
                         InstanceMethod<&ModelWrap::Forward>("forward"),
                         InstanceMethod<&ModelWrap::Call>("call"),
                         InstanceMethod<&ModelWrap::ProbeGradients>("probeGradients"),
                         InstanceMethod<&ModelWrap::TrainStep>("trainStep"),
                         InstanceMethod<&ModelWrap::EvalBatch>("evalBatch"),
                         InstanceMethod<&ModelWrap::Predict>("predict"),
                         InstanceMethod<&ModelWrap::ForwardBatch>("forwardBatch"),
                         InstanceMethod<&ModelWrap::To>("to"),
                         InstanceMethod<&ModelWrap::Modules>("modules"),
                         InstanceMethod<&ModelWrap::Methods>("methods"),
                         InstanceMethod<&ModelWrap::Parameters>("parameters"),
                         InstanceMethod<&ModelWrap::Buffers>("buffers"),
                         InstanceMethod<&ModelWrap::StateDict>("stateDict"),
                         InstanceMethod<&ModelWrap::SetTraining>("setTraining"),
                         InstanceMethod<&ModelWrap::Info>("info"),
                         InstanceMethod<&ModelWrap::Replace>("replace"),
                         InstanceMethod<&ModelWrap::SetRequiresGrad>("setRequiresGrad"),
                         InstanceMethod<&ModelWrap::SetBatchNormPolicy>("setBatchNormPolicy"),
                         InstanceMethod<&ModelWrap::Save>("save"),
                         InstanceMethod<&ModelWrap::LoadStateDict>("loadStateDict"),
                         InstanceMethod<&ModelWrap::ResetParameters>("resetParameters"),
                         InstanceMethod<&ModelWrap::LoadWeights>("loadWeights"),
                         InstanceMethod<&ModelWrap::SaveWeights>("saveWeights"),
                         InstanceMethod<&ModelWrap::Materialize>("materialize"),
                         InstanceMethod<&ModelWrap::Reshape>("reshape"),
                         InstanceMethod<&ModelWrap::Extras>("extras"),
                         InstanceMethod<&ModelWrap::SetChannelsLast>("setChannelsLast"),
                         InstanceMethod<&ModelWrap::Dispose>("dispose"),
                     });
}

Napi::Object ModelWrap::Wrap(Napi::Env env, ModelPtr state) {
  return addonData(env).modelClass.New({Napi::External<ModelPtr>::New(env, &state)});
}

ModelPtr ModelWrap::StateOf(Napi::Env env, const Napi::Value& value) {
  return unwrapInstance<ModelWrap>(env, value, addonData(env).modelClass, "a Model")->live();
}

ModelWrap::ModelWrap(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<ModelWrap>(info),
      state_(takeExternal<ModelPtr>(info, "Model cannot be constructed directly; use loadPretrained()")) {
  accountedBytes_ = tensorBytes(state_->module);
  Napi::MemoryManagement::AdjustExternalMemory(info.Env(), accountedBytes_);
}

void ModelWrap::Finalize(Napi::Env env) { release(env); }

void ModelWrap::release(Napi::Env env) {
  // The C call, not node-addon-api's throwing wrapper: this also runs from finalizers
  // during environment teardown, where a thrown exception would terminate Node.
  int64_t ignored = 0;
  if (accountedBytes_ != 0) napi_adjust_external_memory(env, -accountedBytes_, &ignored);
  accountedBytes_ = 0;
  state_.reset();
}

ModelPtr ModelWrap::live() const {
  if (!state_) throw CodedError("TORCHLITE_DISPOSED", "Model has been disposed");
  return state_;
}

Napi::Value ModelWrap::Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    std::string path = info[0].As<Napi::String>().Utf8Value();
    torch::Device device = parseDevice(info[1].As<Napi::String>().Utf8Value());
    std::vector<std::string> extraNames;
    if (info[2].IsArray()) {
      Napi::Array names = info[2].As<Napi::Array>();
      for (uint32_t i = 0; i < names.Length(); ++i) extraNames.push_back(names.Get(i).As<Napi::String>().Utf8Value());
    }
    // "auto": channels-last on the CPU, tried on the first forward (see onLayoutTrial); set
    // here, on the lane, since converting a ResNet's weights takes milliseconds.
    std::string layout = info[3].IsString() ? info[3].As<Napi::String>().Utf8Value() : "off";
    return Job<ModelPtr>::Start(
        env, {device, Priority::Training},
        [path, device, extraNames, layout] {
          ModelPtr state = loadArchive(path, device, extraNames);
          if (layout == "on" || (layout == "auto" && device.is_cpu())) chooseChannelsLast(*state, true, layout == "auto");
          return state;
        },
        [](Napi::Env env, ModelPtr& state) -> Napi::Value { return Wrap(env, state); });
  });
}

// A model made of one nn layer alone, in a compilation unit of its own: fineTune trains a
// new head on cached backbone features with it.
Napi::Value ModelWrap::FromLayer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    torch::Device cpu(torch::kCPU);
    ModelState holder(torch::jit::Module(c10::QualifiedName("__torch__.torchlite.Standalone"), std::make_shared<torch::jit::CompilationUnit>(),
                                         /*shouldMangle=*/true),
                      cpu);
    return Wrap(env, std::make_shared<ModelState>(buildLayer(env, info[0].As<Napi::Object>(), "head", holder), cpu));
  });
}

namespace {
std::string argumentList(const c10::FunctionSchema& schema) {
  std::string names;
  for (size_t i = 1; i < schema.arguments().size(); ++i) names += (i > 1 ? ", " : "") + schema.arguments()[i].name();
  return "(" + names + ")";
}
}  // namespace

std::vector<c10::IValue> ModelWrap::Inputs(Napi::Env env, const ModelState& state, const Napi::Value& value, const std::string& method) {
  const c10::FunctionSchema& schema = methodOf(state, method).function().getSchema();
  if (value.IsArray()) return toArguments(env, value.As<Napi::Array>(), schema);
  const std::vector<c10::Argument>& arguments = schema.arguments();  // argument 0 is `self`
  std::vector<c10::IValue> inputs;
  // Inputs named by the method's argument names (`{ ids, mask }`): put in the schema's order
  // here, on the JS thread, so that a wrong name fails at the call that made it.
  Napi::Object named = value.As<Napi::Object>();
  Napi::Array keys = named.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    std::string key = keys.Get(i).As<Napi::String>().Utf8Value();
    auto known = std::find_if(arguments.begin() + 1, arguments.end(), [&](const c10::Argument& a) { return a.name() == key; });
    if (known == arguments.end())
      throw CodedError("TORCHLITE_BAD_ARGUMENT", "the input names '" + key + "', which is not an argument of " + method + argumentList(schema) +
                                                     "; name the inputs by these arguments, or pass an array to give them by position");
  }
  for (size_t i = 1; i < arguments.size(); ++i) {
    const c10::Argument& argument = arguments[i];
    if (named.Has(argument.name())) {
      inputs.push_back(toIValue(env, named.Get(argument.name()), argument.type()));
    } else if (argument.default_value()) {
      inputs.push_back(*argument.default_value());
    } else {
      throw CodedError("TORCHLITE_BAD_ARGUMENT", "the input names no '" + argument.name() + "', an argument of " + method + argumentList(schema) +
                                                     " without a default; add it to the input object");
    }
  }
  return inputs;
}

namespace {
void sumTensors(const c10::IValue& value, torch::Tensor& total) {
  if (value.isTensor()) {
    torch::Tensor sum = value.toTensor().to(torch::kFloat).sum();
    total = total.defined() ? total + sum : sum;
  } else if (value.isTuple() || value.isList()) {
    for (const c10::IValue& item : value.isTuple() ? value.toTupleRef().elements().vec() : value.toListRef().vec())
      sumTensors(item, total);
  } else if (value.isGenericDict()) {
    for (const auto& entry : value.toGenericDict()) sumTensors(entry.value(), total);
  }
}
}  // namespace

Napi::Value ModelWrap::ProbeGradients(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    using Result = std::vector<std::pair<std::string, bool>>;
    return Job<Result>::Start(
        env, {state->device, Priority::Training},
        [state, inputs = Inputs(env, *state, info[0])]() mutable {
          std::lock_guard<std::mutex> lock(state->mutex);
          torch::AutoGradMode enableGrad(true);
          guardNhwcBackward(*state);
          prepareInputs(*state, inputs);
          torch::Tensor total;
          sumTensors(runForward(*state, std::move(inputs)), total);
          if (total.defined() && total.requires_grad()) total.backward();
          Result result;
          for (const auto& item : state->module.named_parameters()) {
            torch::Tensor parameter = item.value;
            result.emplace_back(item.name, parameter.grad().defined() && parameter.grad().abs().sum().item<double>() > 0);
            parameter.mutable_grad() = torch::Tensor();
          }
          return result;
        },
        [](Napi::Env env, Result& result) -> Napi::Value {
          Napi::Object object = Napi::Object::New(env);
          for (const auto& [name, flowed] : result) object.Set(name, flowed);
          return object;
        });
  });
}

Napi::Value ModelWrap::To(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    torch::Device device = parseDevice(info[0].As<Napi::String>().Utf8Value());
    // On the lane of the device the weights are on now, behind the kernels queued there.
    return Job<bool>::Start(
        env, {state->device, Priority::Training},
        [state, device] {
          std::lock_guard<std::mutex> lock(state->mutex);
          // 'auto' chose channels-last for oneDNN; on a GPU the choice is the user's.
          if (state->layoutAutomatic && !device.is_cpu()) chooseChannelsLast(*state, false, /*automatic=*/false);
          state->module.to(device);
          state->device = device;
          return true;
        },
        [](Napi::Env env, bool&) { return env.Undefined(); });
  });
}

Napi::Value ModelWrap::Modules(const Napi::CallbackInfo& info) {
  return Locked(info, [&](Napi::Env env, ModelState& state) {
    Napi::Array result = Napi::Array::New(env);
    for (const auto& item : state.module.named_modules()) {
      Napi::Object entry = Napi::Object::New(env);
      entry.Set("path", item.name);
      entry.Set("type", typeName(item.value));
      entry.Set("params", static_cast<double>(parameterCount(item.value, false)));
      entry.Set("trainable", static_cast<double>(parameterCount(item.value, true)));
      result.Set(result.Length(), entry);
    }
    return result;
  });
}

Napi::Value ModelWrap::Methods(const Napi::CallbackInfo& info) {
  return Locked(info, [&](Napi::Env env, ModelState& state) {
    // The methods `call` can run (forward and @torch.jit.export ones), with TorchScript's
    // own schema: argument names and types as Python annotates them, defaults as written.
    Napi::Array result = Napi::Array::New(env);
    for (const torch::jit::Method& method : state.module.get_methods()) {
      const c10::FunctionSchema& schema = method.function().getSchema();
      Napi::Array arguments = Napi::Array::New(env);
      for (size_t i = 1; i < schema.arguments().size(); ++i) {  // 0 is self
        const c10::Argument& argument = schema.arguments()[i];
        Napi::Object entry = Napi::Object::New(env);
        entry.Set("name", argument.name());
        entry.Set("type", argument.type()->annotation_str());
        if (argument.default_value()) entry.Set("default", c10::str(*argument.default_value()));
        arguments.Set(arguments.Length(), entry);
      }
      std::vector<std::string> returns;
      for (const c10::Argument& value : schema.returns()) returns.push_back(value.type()->annotation_str());
      Napi::Object entry = Napi::Object::New(env);
      entry.Set("name", method.name());
      entry.Set("arguments", arguments);
      entry.Set("returns", returns.size() == 1 ? returns[0] : "(" + c10::Join(", ", returns) + ")");
      result.Set(result.Length(), entry);
    }
    return result;
  });
}

Napi::Value ModelWrap::Parameters(const Napi::CallbackInfo& info) {
  return Locked(info, [&](Napi::Env env, ModelState& state) {
    Napi::Array result = Napi::Array::New(env);
    for (const auto& item : state.module.named_parameters()) {
      Napi::Object entry = describeTensor(env, item.name, item.value);
      entry.Set("requiresGrad", item.value.requires_grad());
      result.Set(result.Length(), entry);
    }
    return result;
  });
}

Napi::Value ModelWrap::Buffers(const Napi::CallbackInfo& info) {
  return Locked(info, [&](Napi::Env env, ModelState& state) {
    Napi::Array result = Napi::Array::New(env);
    for (const auto& item : state.module.named_buffers()) result.Set(result.Length(), describeTensor(env, item.name, item.value));
    return result;
  });
}

// A copy of every parameter and buffer, taken on the lane in the queue's order: views would
// change under a later step, and a read on the inference lane could tear against one.
Napi::Value ModelWrap::StateDict(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    using Entries = std::vector<std::pair<std::string, torch::Tensor>>;
    return Job<Entries>::Start(
        env, {state->device, Priority::Inference},
        [state] {
          std::lock_guard<std::mutex> lock(state->mutex);
          torch::NoGradGuard noGrad;
          Entries entries;
          for (const auto& item : state->module.named_parameters()) entries.emplace_back(item.name, item.value.detach().clone());
          for (const auto& item : state->module.named_buffers()) entries.emplace_back(item.name, item.value.detach().clone());
          return entries;
        },
        [](Napi::Env env, Entries& entries) -> Napi::Value {
          Napi::Object result = Napi::Object::New(env);
          for (auto& [name, tensor] : entries) result.Set(name, TensorWrap::Wrap(env, tensor));
          return result;
        });
  });
}

Napi::Value ModelWrap::SetTraining(const Napi::CallbackInfo& info) {
  return Locked(info, [&](Napi::Env env, ModelState& state) {
    state.module.train(info[0].As<Napi::Boolean>().Value());
    // train() resets every submodule, so the BatchNorm policy has to be applied again.
    applyBatchNormPolicy(state);
    return env.Undefined();
  });
}

// Read into TS's snapshot when the model is idle: at load, after a synchronous change,
// and when a job that changes these facts (to()) settles.
Napi::Value ModelWrap::Info(const Napi::CallbackInfo& info) {
  return Locked(info, [&](Napi::Env env, ModelState& state) -> Napi::Value {
    Napi::Object result = Napi::Object::New(env);
    result.Set("training", state.module.is_training());
    result.Set("traced", state.traced);
    result.Set("device", deviceName(state.device));
    result.Set("metadata", state.metadata);
    result.Set("bnPolicy", state.bnPolicy);
    result.Set("channelsLast", state.channelsLast);
    Napi::Array warnings = Napi::Array::New(env, state.warnings.size());
    for (size_t i = 0; i < state.warnings.size(); ++i) warnings.Set(i, state.warnings[i]);
    result.Set("warnings", warnings);
    return result;
  });
}

Napi::Value ModelWrap::Replace(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    std::string path = info[0].As<Napi::String>().Utf8Value();
    auto lock = lockIdle(*state, "this model");
    torch::jit::Module replacement = buildLayer(env, info[1].As<Napi::Object>(), path, *state);
    replaceSubmodule(*state, path, std::move(replacement));
    applyBatchNormPolicy(*state);
    return env.Undefined();
  });
}

Napi::Value ModelWrap::SetRequiresGrad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    Napi::Array names = info[0].As<Napi::Array>();
    bool flag = info[1].As<Napi::Boolean>().Value();
    std::set<std::string> selected;
    for (uint32_t i = 0; i < names.Length(); ++i) selected.insert(names.Get(i).As<Napi::String>().Utf8Value());
    auto lock = lockIdle(*state, "this model");
    for (const auto& item : state->module.named_parameters()) {
      if (!selected.count(item.name)) continue;
      torch::Tensor parameter = item.value;
      parameter.requires_grad_(flag);
      // A frozen parameter must end every step with an undefined grad: a zero-filled one
      // still moves it through momentum and weight decay.
      if (!flag) parameter.mutable_grad() = torch::Tensor();
    }
    applyBatchNormPolicy(*state);
    return env.Undefined();
  });
}

Napi::Value ModelWrap::SetBatchNormPolicy(const Napi::CallbackInfo& info) {
  return Locked(info, [&](Napi::Env env, ModelState& state) {
    state.bnPolicy = info[0].As<Napi::String>().Utf8Value();
    applyBatchNormPolicy(state);
    return env.Undefined();
  });
}

Napi::Value ModelWrap::Save(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    std::string path = info[0].As<Napi::String>().Utf8Value();
    std::string metadata = info[1].As<Napi::String>().Utf8Value();
    std::map<std::string, std::string> extras;
    if (info[2].IsObject()) {
      Napi::Object files = info[2].As<Napi::Object>();
      Napi::Array names = files.GetPropertyNames();
      for (uint32_t i = 0; i < names.Length(); ++i) {
        std::string name = names.Get(i).As<Napi::String>().Utf8Value();
        Napi::Buffer<char> bytes = files.Get(name).As<Napi::Buffer<char>>();
        extras[name] = std::string(bytes.Data(), bytes.Length());
      }
    }
    return Job<bool>::Start(
        env, {state->device, Priority::Training},
        [state, path, metadata, extras] {
          std::lock_guard<std::mutex> lock(state->mutex);
          saveArchive(*state, path, metadata, extras);
          return true;
        },
        [](Napi::Env env, bool&) { return env.Undefined(); });
  });
}

// Copies tensors in by name, as a job. Everything is checked before anything is copied, so a
// dict that does not fit leaves the model untouched.
Napi::Value ModelWrap::LoadStateDict(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    Napi::Object source = info[0].As<Napi::Object>();
    bool strict = info[1].As<Napi::Boolean>().Value();
    std::vector<std::pair<std::string, torch::Tensor>> values;
    Napi::Array names = source.GetPropertyNames();
    for (uint32_t i = 0; i < names.Length(); ++i) {
      std::string name = names.Get(i).As<Napi::String>().Utf8Value();
      values.emplace_back(name, TensorWrap::From(env, source.Get(name)));
    }
    return Job<bool>::Start(
        env, {state->device, Priority::Training},
        [state, strict, values = std::move(values)] {
          std::lock_guard<std::mutex> lock(state->mutex);
          std::map<std::string, torch::Tensor> targets;
          for (const auto& item : state->module.named_parameters()) targets.emplace(item.name, item.value);
          for (const auto& item : state->module.named_buffers()) targets.emplace(item.name, item.value);
          std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;
          for (const auto& [name, value] : values) {
            auto found = targets.find(name);
            if (found == targets.end()) throw CodedError("TORCHLITE_BAD_STATE", "the model has no parameter or buffer '" + name + "'");
            if (value.sizes() != found->second.sizes())
              throw CodedError("TORCHLITE_BAD_STATE", "'" + name + "' has shape " + c10::str(value.sizes()) +
                                                          " but the model's has " + c10::str(found->second.sizes()));
            copies.emplace_back(found->second, value);
            targets.erase(found);
          }
          if (strict && !targets.empty()) throw CodedError("TORCHLITE_BAD_STATE", "the state dict lacks '" + targets.begin()->first + "'");
          torch::NoGradGuard noGrad;
          for (auto& [target, value] : copies) target.copy_(value);
          return true;
        },
        [](Napi::Env env, bool&) { return env.Undefined(); });
  });
}

// resetParameters' plan, run as a job: drawing a ResNet-50's weights took 115 ms on the JS
// thread. Entries in order: `kaiming` draws the weight (and its `bias`, when named) as
// PyTorch's constructors do, in the plan's order so the generator's draws match; `ones` and
// `zeros` fill. model.ts decides which tensor gets what.
Napi::Value ModelWrap::ResetParameters(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    struct Entry {
      std::string name, init, bias;
    };
    std::vector<Entry> plan;
    Napi::Array array = info[0].As<Napi::Array>();
    for (uint32_t i = 0; i < array.Length(); ++i) {
      Baton entry(array.Get(i).As<Napi::Object>(), "resetParameters plan");
      Napi::Value bias = entry.value("bias");
      plan.push_back({entry.string("name"), entry.string("init"), bias.IsNull() ? "" : bias.As<Napi::String>().Utf8Value()});
    }
    return Job<bool>::Start(
        env, {state->device, Priority::Training},
        [state, plan] {
          std::lock_guard<std::mutex> lock(state->mutex);
          std::map<std::string, torch::Tensor> tensors;
          for (const auto& item : state->module.named_parameters()) tensors.emplace(item.name, item.value);
          for (const auto& item : state->module.named_buffers()) tensors.emplace(item.name, item.value);
          auto find = [&](const std::string& name) {
            auto found = tensors.find(name);
            if (found == tensors.end()) throw CodedError("TORCHLITE_BAD_STATE", "the model has no parameter or buffer '" + name + "'");
            return found->second;
          };
          torch::NoGradGuard noGrad;
          for (const Entry& entry : plan) {
            torch::Tensor target = find(entry.name);
            if (entry.init == "kaiming") {
              auto [weight, bias] = kaimingInit(target.sizes().vec(), !entry.bias.empty());
              target.copy_(weight);
              if (bias.defined()) find(entry.bias).copy_(bias);
            } else {
              target.fill_(entry.init == "ones" ? 1 : 0);
            }
          }
          return true;
        },
        [](Napi::Env env, bool&) { return env.Undefined(); });
  });
}

Napi::Value ModelWrap::Extras(const Napi::CallbackInfo& info) {
  return Locked(info, [&](Napi::Env env, ModelState& state) -> Napi::Value {
    Napi::Object result = Napi::Object::New(env);
    for (const auto& [name, bytes] : state.extras) result.Set(name, Napi::Buffer<char>::Copy(env, bytes.data(), bytes.size()));
    return result;
  });
}

Napi::Value ModelWrap::Dispose(const Napi::CallbackInfo& info) {
  release(info.Env());
  return info.Env().Undefined();
}

}  // namespace tl
