// Instances of TorchScript classes that a model method returned, and their methods.
#include "script_object.h"

#include "addon.h"
#include "ivalue.h"
#include "job.h"

namespace tl {

namespace {
struct Handle {
  c10::intrusive_ptr<c10::ivalue::Object> object;
  ModelPtr owner;
};
}  // namespace

Napi::Function ScriptObjectWrap::Define(Napi::Env env) {
  return DefineClass(env, "NativeScriptObject",
                     {
                         InstanceMethod<&ScriptObjectWrap::Type>("type"),
                         InstanceMethod<&ScriptObjectWrap::Methods>("methods"),
                         InstanceMethod<&ScriptObjectWrap::Call>("call"),
                         InstanceMethod<&ScriptObjectWrap::Dispose>("dispose"),
                     });
}

Napi::Object ScriptObjectWrap::Wrap(Napi::Env env, c10::intrusive_ptr<c10::ivalue::Object> object, ModelPtr owner) {
  Handle handle{std::move(object), std::move(owner)};
  return addonData(env).scriptObjectClass.New({Napi::External<Handle>::New(env, &handle)});
}

bool ScriptObjectWrap::IsScriptObject(Napi::Env env, const Napi::Value& value) {
  return value.IsObject() && value.As<Napi::Object>().InstanceOf(addonData(env).scriptObjectClass.Value());
}

c10::IValue ScriptObjectWrap::From(Napi::Env env, const Napi::Value& value) {
  return unwrapInstance<ScriptObjectWrap>(env, value, addonData(env).scriptObjectClass, "a ScriptObject")->live();
}

ScriptObjectWrap::ScriptObjectWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ScriptObjectWrap>(info) {
  Handle handle = takeExternal<Handle>(info, "ScriptObject cannot be constructed directly; a model's method returns it");
  object_ = std::move(handle.object);
  owner_ = std::move(handle.owner);
}

const c10::intrusive_ptr<c10::ivalue::Object>& ScriptObjectWrap::live() const {
  if (!object_) throw CodedError("TORCHLITE_DISPOSED", "ScriptObject has been disposed");
  return object_;
}

Napi::Value ScriptObjectWrap::Type(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value { return Napi::String::New(info.Env(), live()->type()->name()->qualifiedName()); });
}

Napi::Value ScriptObjectWrap::Methods(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    std::vector<std::string> methods = callableMethods(*live()->type());
    Napi::Array names = Napi::Array::New(info.Env(), methods.size());
    for (size_t i = 0; i < methods.size(); ++i) names.Set(i, methods[i]);
    return names;
  });
}

// Like ModelWrap::Call: a job on the owner's inference lane, without gradients, under the
// owner's lock (the object's code may read the model's state).
Napi::Value ScriptObjectWrap::Call(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    c10::intrusive_ptr<c10::ivalue::Object> object = live();
    std::string name = info[0].As<Napi::String>().Utf8Value();
    torch::jit::Function* method = object->type()->findMethod(name);
    if (method == nullptr)
      throw CodedError("TORCHLITE_NO_SUCH_METHOD", "the " + object->type()->name()->name() + " object has no method '" + name + "'; it has " + methodNames(*object->type()));
    std::vector<c10::IValue> inputs = toArguments(env, info[1].As<Napi::Array>(), method->getSchema());
    inputs.insert(inputs.begin(), c10::IValue(object));
    ModelPtr owner = owner_;
    return Job<c10::IValue>::Start(
        env, {owner->device, Priority::Inference},
        [owner, method, inputs = std::move(inputs)]() mutable {
          std::lock_guard<std::mutex> lock(owner->mutex);
          torch::NoGradGuard noGrad;
          return (*method)(std::move(inputs));
        },
        [owner](Napi::Env env, c10::IValue& output) { return fromIValue(env, output, owner); });
  });
}

Napi::Value ScriptObjectWrap::Dispose(const Napi::CallbackInfo& info) {
  object_.reset();
  owner_.reset();
  return info.Env().Undefined();
}

}  // namespace tl
