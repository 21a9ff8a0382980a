// Shared helpers: coded errors, the one place where C++ failures become JS errors,
// and the dtype/device codecs used by every wrapper.
#pragma once
#include <exception>
#include <functional>
#include <string>

#include "pch.h"

namespace tl {

// A failure with a stable code for JS (TORCHLITE_*). Thrown anywhere, including on
// lanes; it only becomes a JS error on the JS thread.
struct CodedError : std::runtime_error {
  CodedError(std::string code, const std::string& message, std::string backtrace = "")
      : std::runtime_error(message), code(std::move(code)), backtrace(std::move(backtrace)) {}
  std::string code;
  std::string backtrace;  // of the LibTorch failure this one explains, if any
};

// A failure described without V8, so lanes can build it.
struct ErrorInfo {
  std::string code;
  std::string message;
  std::string backtrace;
};

ErrorInfo describe(std::exception_ptr error);
// The TORCH_* code of a LibTorch message that carries no exception type to go by, from its
// first line only (see kPhrases in common.cc).
std::string classifyMessage(const std::string& cause);
// The first non-blank line of `text`.
std::string firstLine(const std::string& text);
bool contains(const std::string& text, const char* needle);
Napi::Error toJsError(Napi::Env env, const ErrorInfo& info);

// Runs a synchronous binding body. node-addon-api only forwards Napi::Error, so any
// other C++ exception escaping a callback would terminate Node; this converts them.
template <class F>
auto guard(Napi::Env env, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (...) {
    throw toJsError(env, describe(std::current_exception()));
  }
}

// The C++ object behind a JS value that must be an instance of `cls`.
template <class Wrap>
Wrap* unwrapInstance(Napi::Env env, const Napi::Value& value, const Napi::FunctionReference& cls, const char* what) {
  if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(cls.Value()))
    throw CodedError("TORCHLITE_BAD_ARGUMENT", std::string("expected ") + what);
  return Wrap::Unwrap(value.As<Napi::Object>());
}

// Wrappers are constructed from C++ only, with their state in one External argument;
// a construction from JS gets `message`.
template <class T>
T takeExternal(const Napi::CallbackInfo& info, const char* message) {
  if (info.Length() != 1 || !info[0].IsExternal()) throw Napi::TypeError::New(info.Env(), message);
  return *info[0].As<Napi::External<T>>().Data();
}

// A validated options object from JS (a "baton", as sharp calls it). JS owns every default and
// sends every field, so C++ has none to drift from; a missing or mistyped field is a bug in
// torchlite, reported as TORCHLITE_INTERNAL naming it (tests send batons that lack each one).
class Baton {
 public:
  Baton(Napi::Object object, std::string what) : object_(object), what_(std::move(what)) {}
  double number(const char* key) const { return field(key, napi_number).As<Napi::Number>().DoubleValue(); }
  int64_t integer(const char* key) const { return field(key, napi_number).As<Napi::Number>().Int64Value(); }
  bool boolean(const char* key) const { return field(key, napi_boolean).As<Napi::Boolean>().Value(); }
  std::string string(const char* key) const { return field(key, napi_string).As<Napi::String>().Utf8Value(); }
  Baton object(const char* key) const { return Baton(field(key, napi_object).As<Napi::Object>(), what_ + "." + key); }
  // A field of any type, null included (null is how JS says "none").
  Napi::Value value(const char* key) const { return field(key, napi_undefined); }

 private:
  // `type` napi_undefined: any type but undefined.
  Napi::Value field(const char* key, napi_valuetype type) const;
  Napi::Object object_;
  std::string what_;
};

c10::ScalarType parseDtype(const std::string& name);
std::string dtypeName(c10::ScalarType type);
// Validates availability too: a CUDA device on a machine without one is a coded error.
torch::Device parseDevice(const std::string& name);
std::string deviceName(const torch::Device& device);

std::vector<int64_t> toShape(const Napi::Value& value);

// `value` with `f` applied to every tensor in it, however nested in lists, tuples and dicts
// (a detector's list of per-image dicts); lists and dicts keep their element types. Other
// values are shared.
c10::IValue mapTensors(const c10::IValue& value, const std::function<torch::Tensor(const torch::Tensor&)>& f);
Napi::Array fromShape(Napi::Env env, c10::IntArrayRef shape);

}  // namespace tl
