// ScriptObject: a JS handle on an instance of a TorchScript class that a model's method
// returned (`@torch.jit.script class`), so that its methods can be called and it can be
// passed back into the model's methods.
#pragma once
#include "common.h"
#include "model.h"

namespace tl {

class ScriptObjectWrap : public Napi::ObjectWrap<ScriptObjectWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  // `owner` is the model whose code made the object: its methods run on that model's lane,
  // under its lock, like the model's own.
  static Napi::Object Wrap(Napi::Env env, c10::intrusive_ptr<c10::ivalue::Object> object, ModelPtr owner);
  static bool IsScriptObject(Napi::Env env, const Napi::Value& value);
  static c10::IValue From(Napi::Env env, const Napi::Value& value);

  explicit ScriptObjectWrap(const Napi::CallbackInfo& info);

 private:
  Napi::Value Type(const Napi::CallbackInfo& info);
  Napi::Value Methods(const Napi::CallbackInfo& info);
  Napi::Value Call(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);

  const c10::intrusive_ptr<c10::ivalue::Object>& live() const;

  c10::intrusive_ptr<c10::ivalue::Object> object_;
  ModelPtr owner_;
};

}  // namespace tl
