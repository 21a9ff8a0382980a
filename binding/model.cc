#include "model.h"

#include <algorithm>
#include <set>

#include "addon.h"
#include "archive.h"
#include "compat.h"
#include "ivalue.h"
#include "job.h"
#include "layers.h"
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

// The strides of `format` even where contiguous() would keep the tensor as it is: with one
// input channel (a grayscale batch, a first conv's weight) or a 1x1 kernel both layouts
// describe the same memory, and LibTorch picks a convolution's layout from the strides. A
// grayscale batch left in NCHW strides made the small CNN run its whole first stage in NCHW
// (a third of its channels-last gain lost), and a 1x1 weight left in NHWC strides kept
// its convolution in NHWC after the model went back to NCHW. to() rewrites the strides
// whenever the suggested format differs.
torch::Tensor toMemoryFormat(const torch::Tensor& tensor, torch::MemoryFormat format) {
  return tensor.to(tensor.options(), /*non_blocking=*/false, /*copy=*/false, format);
}

torch::Tensor prepareTensor(const ModelState& state, torch::Tensor tensor) {
  if (tensor.device() != state.device) {
    if (state.device.is_cuda() && tensor.is_cpu() && !tensor.is_pinned()) tensor = tensor.pin_memory();
    tensor = tensor.to(state.device, /*non_blocking=*/true);
  }
  if (state.channelsLast && tensor.dim() == 4) tensor = toMemoryFormat(tensor, torch::MemoryFormat::ChannelsLast);
  return tensor;
}

}  // namespace

std::unique_lock<std::mutex> lockIdle(ModelState& state, const char* what) {
  std::unique_lock<std::mutex> lock(state.mutex, std::try_to_lock);
  if (!lock)
    throw CodedError("TORCHLITE_MODEL_BUSY", std::string(what) + " is running a job; await its pending operations first");
  return lock;
}

namespace {

// What a hint may need from the inputs, read before they move into the call.
struct InputFacts {
  bool anyDouble = false;
  std::vector<int64_t> firstShape;  // of the first tensor input; empty when there is none
};

// view() needs strides it can reuse; a convolution's channels-last output fails it where the
// NCHW one passes (models written as `x.view(x.size(0), -1)` before a Linear).
bool isLayoutFailure(const std::string& message) {
  return message.find("view size is not compatible with input tensor's size and stride") != std::string::npos;
}

std::string hintFor(const ModelState& state, const InputFacts& inputs, const ErrorInfo& failure, std::string& code) {
  // Only after the automatic choice has passed its trial, or when channels-last was asked for.
  if (state.channelsLast && isLayoutFailure(failure.message))
    return "The model runs in channels-last layout (NHWC), in which this graph's view() cannot run: load it with "
           "`{ channelsLast: false }` or call `model.channelsLast(false)`";
  torch::Tensor firstConv;  // the first 4-D weight: a Conv2d's [out, in / groups, kh, kw]
  c10::ScalarType weights = c10::kFloat;
  bool sawFloat = false;
  for (const torch::Tensor& parameter : state.module.parameters()) {
    if (!sawFloat && parameter.is_floating_point()) {
      weights = parameter.scalar_type();
      sawFloat = true;
    }
    if (!firstConv.defined() && parameter.dim() == 4) firstConv = parameter;
  }
  auto shape = [](const std::vector<int64_t>& s) { return c10::str(c10::IntArrayRef(s)); };
  if (inputs.anyDouble && weights != c10::kDouble && failure.code == "TORCH_DTYPE") {
    code = "TORCH_DTYPE";
    return "The input is float64 but the model's weights are " + dtypeName(weights) +
           ": build the input from a Float32Array, or convert it with `input.to('" + dtypeName(weights) + "')`";
  }
  const std::vector<int64_t>& in = inputs.firstShape;
  if (!firstConv.defined() || in.empty()) return "";
  if (in.size() == 3) {
    code = "TORCH_SHAPE";
    std::vector<int64_t> batched = in;
    batched.insert(batched.begin(), 1);
    return "The input has shape " + shape(in) + ", without a batch dimension: the model takes [N, C, H, W]; for one sample use shape " + shape(batched);
  }
  if (in.size() == 4 && failure.message.find("channels") != std::string::npos) {
    code = "TORCH_SHAPE";
    int64_t channels = firstConv.size(1);
    return "The model's first convolution takes " + std::to_string(channels) + "-channel input but the input has " +
           std::to_string(in[1]) + " channels (shape " + shape(in) + "); load images with `channels: " + std::to_string(channels) + "`";
  }
  return "";
}

}  // namespace

namespace {

// Runs `run` on a model whose channels-last layout was chosen automatically and has not yet
// been through a forward. If the graph cannot run in NHWC, the model goes back to NCHW and
// the same call runs again from the same state: the buffers (BatchNorm's running statistics,
// which the failed pass may have updated) and the CPU generator (dropout's draws) are put
// back first, so the result is exactly that of a model that never tried.
template <typename Run>
c10::IValue onLayoutTrial(ModelState& state, std::vector<c10::IValue>& inputs, Run run) {
  std::vector<torch::Tensor> buffers;
  std::vector<torch::Tensor> saved;
  {
    torch::NoGradGuard noGrad;
    for (const torch::Tensor& buffer : state.module.buffers()) {
      buffers.push_back(buffer);
      saved.push_back(buffer.clone());
    }
  }
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  torch::Tensor rng;
  {
    std::lock_guard<std::mutex> lock(generator.mutex());
    rng = generator.get_state();
  }
  try {
    c10::IValue output = run(std::vector<c10::IValue>(inputs));
    state.layoutOnTrial = false;
    return output;
  } catch (const std::exception&) {
    if (!isLayoutFailure(describe(std::current_exception()).message)) throw;
  }
  {
    torch::NoGradGuard noGrad;
    for (size_t i = 0; i < buffers.size(); ++i) buffers[i].copy_(saved[i]);
  }
  {
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(rng);
  }
  chooseChannelsLast(state, false, /*automatic=*/false);
  for (c10::IValue& input : inputs)
    if (input.isTensor() && input.toTensor().dim() == 4) input = toMemoryFormat(input.toTensor(), torch::MemoryFormat::Contiguous);
  return run(std::move(inputs));
}

}  // namespace

c10::IValue runForward(ModelState& state, std::vector<c10::IValue> inputs) {
  InputFacts facts;
  for (const c10::IValue& input : inputs) {
    if (!input.isTensor()) continue;
    const torch::Tensor& tensor = input.toTensor();
    if (facts.firstShape.empty()) facts.firstShape = tensor.sizes().vec();
    facts.anyDouble = facts.anyDouble || tensor.scalar_type() == c10::kDouble;
  }
  try {
    if (state.layoutOnTrial)
      return onLayoutTrial(state, inputs, [&](std::vector<c10::IValue> args) { return state.module.forward(std::move(args)); });
    return state.module.forward(std::move(inputs));
  } catch (const std::exception&) {
    ErrorInfo failure = describe(std::current_exception());
    std::string code = failure.code;
    std::string hint = hintFor(state, facts, failure, code);
    if (hint.empty()) throw;
    throw CodedError(code, failure.message + ". " + hint, failure.backtrace);
  }
}

void chooseChannelsLast(ModelState& state, bool on, bool automatic) {
  bool changed = setChannelsLast(state, on);
  // Asked for by name, a model without 4-D weights still gets its 4-D inputs in NHWC;
  // chosen automatically, it stays as it is (a text model's [B, 1, 1, L] mask gains nothing).
  if (!changed && !automatic) state.channelsLast = on;
  state.layoutAutomatic = state.layoutOnTrial = changed && on && automatic;
}

bool setChannelsLast(ModelState& state, bool on) {
  std::vector<torch::Tensor> planes;
  for (const torch::Tensor& parameter : state.module.parameters())
    if (parameter.dim() == 4) planes.push_back(parameter);
  if (planes.empty()) return false;
  torch::NoGradGuard noGrad;
  // set_data keeps each parameter's identity (optimizers hold them) while changing its layout.
  for (torch::Tensor& parameter : planes) parameter.set_data(toMemoryFormat(parameter, on ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous));
  state.channelsLast = on;
  return true;
}

void guardNhwcBackward(ModelState& state) {
  if (!state.channelsLast || !state.device.is_cpu()) return;
  // Once per structure: replace() is the only way a layer comes or goes.
  if (state.hazardGeneration != state.generation) {
    state.nhwcHazard = nhwcBackwardHazard(state.module);
    state.hazardGeneration = state.generation;
  }
  if (state.nhwcHazard.empty()) return;
  if (state.layoutAutomatic) {
    chooseChannelsLast(state, false, /*automatic=*/false);
    return;
  }
  throw CodedError("TORCHLITE_UNSAFE_LAYOUT",
                   "training " + state.nhwcHazard +
                       " in channels-last on the CPU corrupts memory inside LibTorch's oneDNN kernels; call "
                       "model.channelsLast(false) before training on the CPU (inference in channels-last is safe), or "
                       "train on a GPU");
}

void prepareInputs(const ModelState& state, std::vector<c10::IValue>& inputs) {
  for (c10::IValue& input : inputs) {
    if (input.isTensor()) {
      input = prepareTensor(state, input.toTensor());
    } else if (input.isTensorList()) {
      c10::List<torch::Tensor> list = input.toTensorList();
      for (size_t i = 0; i < list.size(); ++i) list.set(i, prepareTensor(state, list.get(i)));
    }
  }
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

// Whether the copy gives the model's output for `input`, without a LibTorch warning: the
// inference passes have bugs for some models (MobileNetV3 in 1.13: wrong outputs, and an
// "output ... was resized" warning), so a copy is trusted only once checked.
bool agrees(ModelState& model, ModelState& copy, const torch::Tensor& input) {
  std::vector<c10::IValue> mine{input}, theirs{input};
  prepareInputs(model, mine);
  c10::IValue expected = runForward(model, std::move(mine));
  compat::WarningCollector warnings;
  try {
    prepareInputs(copy, theirs);
    c10::IValue got = runForward(copy, std::move(theirs));
    if (!expected.isTensor() || !got.isTensor() || !got.toTensor().sizes().equals(expected.toTensor().sizes())) return false;
    torch::Tensor want = expected.toTensor().to(torch::kFloat), have = got.toTensor().to(torch::kFloat);
    bool close = ((have - want).abs() / want.abs().clamp_min(1)).max().item<double>() < 1e-4;
    return close && warnings.messages.empty();
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

// A frozen copy in eval mode, optimised for inference as torch.jit.optimize_for_inference
// does (BatchNorm folded into the convolutions, oneDNN's prepacked weights on the CPU):
// fineTune's feature cache runs the frozen body through it. It shares no tensor with the
// model. Checked against the model on the probe batch and on its first sample (a batch size
// of its own); null when freezing fails or the copy disagrees (within 1e-4) or warns.
Napi::Value ModelWrap::InferenceCopy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    torch::Tensor probe = TensorWrap::From(env, info[0]);
    return Job<ModelPtr>::Start(
        env, {state->device, Priority::Inference},
        [state, probe]() -> ModelPtr {
          std::lock_guard<std::mutex> lock(state->mutex);
          torch::NoGradGuard noGrad;
          ModelPtr copy;
          try {
            torch::jit::Module module = state->module.clone();
            module.eval();
            GraphOptimizing optimizing;
            copy = std::make_shared<ModelState>(torch::jit::optimize_for_inference(module), state->device);
          } catch (const std::exception&) {
            return nullptr;  // a module freezing cannot take (attributes set in forward, ...)
          }
          bool good = agrees(*state, *copy, probe) && (probe.size(0) == 1 || agrees(*state, *copy, probe.narrow(0, 0, 1)));
          return good ? copy : nullptr;
        },
        [](Napi::Env env, ModelPtr& copy) -> Napi::Value { return copy ? Wrap(env, copy) : env.Null(); });
  });
}

// A method of the model by name; a model may export others beside forward, or no forward.
torch::jit::Method methodOf(const ModelState& state, const std::string& name) {
  if (auto method = state.module.find_method(name)) return *method;
  throw CodedError("TORCHLITE_NO_SUCH_METHOD", "the model has no method '" + name + "'; it exports " + methodNames(*state.module.type()) +
                                                   (name == "forward" ? ": call one with model.call(name, ...inputs)" : ""));
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

Napi::Value ModelWrap::Forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    return Job<c10::IValue>::Start(
        env, {state->device, Priority::Inference},
        [state, inputs = Inputs(env, *state, info[0])]() mutable {
          std::lock_guard<std::mutex> lock(state->mutex);
          // Grad mode is thread-local, so it has to be set on the lane itself. Not
          // c10::InferenceMode: once the profiling executor has built autodiff subgraphs
          // for training, they save their inputs even with grad mode off, and an inference
          // tensor (the frozen body's output) cannot be saved (measured: "Inference tensors
          // cannot be saved for backward" in eval after a head-only step).
          torch::NoGradGuard noGrad;
          prepareInputs(*state, inputs);
          return runForward(*state, std::move(inputs));
        },
        [state](Napi::Env env, c10::IValue& output) { return fromIValue(env, output, state); });
  });
}

// Any exported method, without gradients, in the model's current mode (as forward).
Napi::Value ModelWrap::Call(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    ModelPtr state = live();
    std::string name = info[0].As<Napi::String>().Utf8Value();
    return Job<c10::IValue>::Start(
        env, {state->device, Priority::Inference},
        [state, name, inputs = Inputs(env, *state, info[1], name)]() mutable {
          std::lock_guard<std::mutex> lock(state->mutex);
          torch::NoGradGuard noGrad;  // not InferenceMode: see Forward
          prepareInputs(*state, inputs);
          torch::jit::Method method = methodOf(*state, name);
          if (state->layoutOnTrial) return onLayoutTrial(*state, inputs, [&](std::vector<c10::IValue> args) { return method(std::move(args)); });
          return method(std::move(inputs));
        },
        [state](Napi::Env env, c10::IValue& output) { return fromIValue(env, output, state); });
  });
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

Napi::Value ModelWrap::StateDict(const Napi::CallbackInfo& info) {
  return Locked(info, [&](Napi::Env env, ModelState& state) {
    Napi::Object result = Napi::Object::New(env);
    // Detached views share storage with the model, as PyTorch's state_dict() does;
    // torchlite tensors are read-only from JS, so nothing can write through them.
    for (const auto& item : state.module.named_parameters()) result.Set(item.name, TensorWrap::Wrap(env, item.value.detach()));
    for (const auto& item : state.module.named_buffers()) result.Set(item.name, TensorWrap::Wrap(env, item.value.detach()));
    return result;
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

Napi::Value ModelWrap::LoadStateDict(const Napi::CallbackInfo& info) {
  return Locked(info, [&](Napi::Env env, ModelState& state) {
    Napi::Object source = info[0].As<Napi::Object>();
    std::map<std::string, torch::Tensor> targets;
    for (const auto& item : state.module.named_parameters()) targets.emplace(item.name, item.value);
    for (const auto& item : state.module.named_buffers()) targets.emplace(item.name, item.value);
    Napi::Array names = source.GetPropertyNames();
    std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;
    // Check everything before copying anything, so a bad dict leaves the model untouched.
    for (uint32_t i = 0; i < names.Length(); ++i) {
      std::string name = names.Get(i).As<Napi::String>().Utf8Value();
      auto found = targets.find(name);
      if (found == targets.end()) throw CodedError("TORCHLITE_BAD_STATE", "the model has no parameter or buffer '" + name + "'");
      torch::Tensor value = TensorWrap::From(env, source.Get(name));
      if (value.sizes() != found->second.sizes())
        throw CodedError("TORCHLITE_BAD_STATE", "'" + name + "' has shape " + c10::str(value.sizes()) +
                                                    " but the model's has " + c10::str(found->second.sizes()));
      copies.emplace_back(found->second, value);
      targets.erase(found);
    }
    if (info[1].As<Napi::Boolean>().Value() && !targets.empty())
      throw CodedError("TORCHLITE_BAD_STATE", "the state dict lacks '" + targets.begin()->first + "'");
    torch::NoGradGuard noGrad;
    for (auto& [target, value] : copies) target.copy_(value);
    return env.Undefined();
  });
}

Napi::Value ModelWrap::SetChannelsLast(const Napi::CallbackInfo& info) {
  return Locked(info, [&](Napi::Env env, ModelState& state) {
    chooseChannelsLast(state, info[0].As<Napi::Boolean>().Value(), /*automatic=*/false);
    return env.Undefined();
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
