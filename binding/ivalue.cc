// JS values to TorchScript IValues and back, typed by the method schema.
#include "ivalue.h"

#include "script_object.h"
#include "tensor.h"

namespace tl {

c10::IValue toIValue(Napi::Env env, const Napi::Value& value, const c10::TypePtr& expected) {
  c10::TypePtr type = expected;
  if (type && type->kind() == c10::TypeKind::OptionalType) type = type->expectRef<c10::OptionalType>().getElementType();
  if (value.IsNull() || value.IsUndefined()) return c10::IValue();
  if (value.IsBoolean()) return value.As<Napi::Boolean>().Value();
  if (value.IsString()) return value.As<Napi::String>().Utf8Value();
  if (value.IsNumber()) {
    double number = value.As<Napi::Number>().DoubleValue();
    if (type && type->kind() == c10::TypeKind::IntType) return static_cast<int64_t>(number);
    return number;
  }
  if (value.IsArray()) {
    Napi::Array array = value.As<Napi::Array>();
    if (type && type->kind() == c10::TypeKind::TupleType) {
      const auto& elements = type->expectRef<c10::TupleType>().elements();
      std::vector<c10::IValue> items;
      for (uint32_t i = 0; i < array.Length(); ++i)
        items.push_back(toIValue(env, array.Get(i), i < elements.size() ? elements[i] : nullptr));
      return c10::ivalue::Tuple::create(std::move(items));
    }
    if (type && type->kind() == c10::TypeKind::ListType &&
        type->expectRef<c10::ListType>().getElementType()->kind() != c10::TypeKind::TensorType) {
      c10::TypePtr element = type->expectRef<c10::ListType>().getElementType();
      c10::impl::GenericList list(element);
      for (uint32_t i = 0; i < array.Length(); ++i) list.push_back(toIValue(env, array.Get(i), element));
      return list;
    }
    c10::List<torch::Tensor> tensors;
    for (uint32_t i = 0; i < array.Length(); ++i) tensors.push_back(TensorWrap::From(env, array.Get(i)));
    return tensors;
  }
  // A plain object for a Dict[str, T] argument (`model.call('generate', { ids, mask })`).
  if (type && type->kind() == c10::TypeKind::DictType && value.IsObject() && !TensorWrap::IsTensor(env, value)) {
    const auto& dict = type->expectRef<c10::DictType>();
    if (dict.getKeyType()->kind() != c10::TypeKind::StringType)
      throw CodedError("TORCHLITE_BAD_ARGUMENT", "only Dict[str, ...] arguments can be given as objects, not " + type->annotation_str());
    c10::impl::GenericDict entries(dict.getKeyType(), dict.getValueType());
    Napi::Object object = value.As<Napi::Object>();
    Napi::Array keys = object.GetPropertyNames();
    for (uint32_t i = 0; i < keys.Length(); ++i) {
      std::string key = keys.Get(i).As<Napi::String>().Utf8Value();
      entries.insert(key, toIValue(env, object.Get(key), dict.getValueType()));
    }
    return entries;
  }
  if (ScriptObjectWrap::IsScriptObject(env, value)) return ScriptObjectWrap::From(env, value);
  if (value.IsObject() && !TensorWrap::IsTensor(env, value))
    throw CodedError("TORCH_ARGUMENT", "expected " + (type ? "a value of type '" + type->annotation_str() + "'" : std::string("a Tensor")) +
                                           " but received an object; plain objects are only for Dict[str, ...] arguments");
  return TensorWrap::From(env, value);
}

std::vector<c10::IValue> toArguments(Napi::Env env, const Napi::Array& args, const c10::FunctionSchema& schema) {
  const std::vector<c10::Argument>& arguments = schema.arguments();
  std::vector<c10::IValue> values;
  for (uint32_t i = 0; i < args.Length(); ++i) values.push_back(toIValue(env, args.Get(i), i + 1 < arguments.size() ? arguments[i + 1].type() : nullptr));
  return values;
}

std::vector<std::string> callableMethods(const c10::ClassType& type) {
  std::vector<std::string> names;
  for (const torch::jit::Function* method : type.methods())
    if (method->name() != "__init__") names.push_back(method->name());
  return names;
}

std::string methodNames(const c10::ClassType& type) {
  std::string names;
  for (const std::string& name : callableMethods(type)) names += (names.empty() ? "'" : ", '") + name + "'";
  return names.empty() ? "none" : names;
}

Napi::Value fromIValue(Napi::Env env, const c10::IValue& value, const ModelPtr& owner) {
  if (value.isTensor()) return TensorWrap::Wrap(env, value.toTensor());
  if (value.isNone()) return env.Null();
  if (value.isBool()) return Napi::Boolean::New(env, value.toBool());
  if (value.isInt()) return Napi::Number::New(env, static_cast<double>(value.toInt()));
  if (value.isDouble()) return Napi::Number::New(env, value.toDouble());
  if (value.isString()) return Napi::String::New(env, value.toStringRef());
  if (value.isTuple() || value.isList()) {
    std::vector<c10::IValue> items =
        value.isTuple() ? value.toTupleRef().elements().vec() : value.toListRef().vec();
    Napi::Array array = Napi::Array::New(env, items.size());
    for (size_t i = 0; i < items.size(); ++i) array.Set(i, fromIValue(env, items[i], owner));
    return array;
  }
  if (value.isGenericDict()) {
    Napi::Object object = Napi::Object::New(env);
    for (const auto& entry : value.toGenericDict()) {
      const c10::IValue& key = entry.key();
      std::string name = key.isString() ? key.toStringRef() : key.isInt() ? std::to_string(key.toInt()) : "";
      if (name.empty()) throw CodedError("TORCHLITE_UNSUPPORTED_OUTPUT", "dict output with a non-string key");
      object.Set(name, fromIValue(env, entry.value(), owner));
    }
    return object;
  }
  if (value.isObject() && !value.toObjectRef().type()->is_module()) return ScriptObjectWrap::Wrap(env, value.toObject(), owner);
  throw CodedError("TORCHLITE_UNSUPPORTED_OUTPUT", "model returned an unsupported value of type " +
                                                       value.type()->annotation_str());
}

}  // namespace tl
