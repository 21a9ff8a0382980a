// Conversions between JS values and TorchScript IValues, on the JS thread only.
#pragma once
#include "common.h"
#include "model.h"

namespace tl {

// `expected` is the schema type of the argument, so JS numbers become int or float as
// the TorchScript signature asks (JS cannot tell 1 from 1.0).
c10::IValue toIValue(Napi::Env env, const Napi::Value& value, const c10::TypePtr& expected);
// A method's positional arguments from a JS array, typed by its schema (argument 0 is
// `self`); `self` itself is not among them.
std::vector<c10::IValue> toArguments(Napi::Env env, const Napi::Array& args, const c10::FunctionSchema& schema);

// The methods of a class (a module's or a TorchScript class's) that can be called, and the
// same names quoted and comma-separated ("none" without any), for errors that list them.
std::vector<std::string> callableMethods(const c10::ClassType& type);
std::string methodNames(const c10::ClassType& type);

// `owner` is the model that produced the value: TorchScript class instances in it become
// ScriptObjects whose methods run on that model's lane.
Napi::Value fromIValue(Napi::Env env, const c10::IValue& value, const ModelPtr& owner);

}  // namespace tl
