// Errors (C++ failures to coded JS errors), the baton reader, and the dtype/device codecs.
#include "common.h"

#include <algorithm>
#include <array>
#include <utility>

#include <torch/csrc/jit/runtime/jit_exception.h>

namespace tl {
namespace {

// The TorchScript interpreter wraps the real failure in a traceback; users need the
// last "SomethingError: ..." line first, with the traceback kept for debugging.
std::string rootCause(const std::string& message) {
  static const std::array<const char*, 6> markers = {"RuntimeError: ", "ValueError: ",          "IndexError: ",
                                                     "TypeError: ",    "NotImplementedError: ", "AssertionError: "};
  size_t best = std::string::npos;
  size_t skip = 0;
  for (const char* marker : markers) {
    size_t at = message.rfind(marker);
    if (at != std::string::npos && (best == std::string::npos || at > best)) {
      best = at;
      skip = std::char_traits<char>::length(marker);
    }
  }
  std::string cause = best == std::string::npos ? message : message.substr(best + skip);
  cause.erase(0, std::min(cause.size(), cause.find_first_not_of(" \n")));  // 2.x opens some messages with a blank line
  while (!cause.empty() && (cause.back() == '\n' || cause.back() == ' ')) cause.pop_back();
  return cause;
}

// The fallback for plain c10::Error and the interpreter's std::runtime_error, which carry no
// type to go by. Only the first line of the root cause is read: what follows it may quote the
// model's source, whose names (`argument_1`, `shape`) must not decide the code. First match
// wins; each phrase has a test on LibTorch 1.13 and 2.x (test/errors.test.ts).
struct Phrase {
  const char* text;
  const char* code;
};
constexpr Phrase kPhrases[] = {
    {"out of memory", "TORCH_OOM"},
    {"Unknown builtin op", "TORCH_UNKNOWN_OP"},
    // The dtype phrases come before "shape" and "argument": "Expected tensor for argument #1
    // 'indices' to have one of the following scalar types".
    {"scalar type", "TORCH_DTYPE"},
    {"Input type (", "TORCH_DTYPE"},
    {"dtype", "TORCH_DTYPE"},
    {"not implemented for", "TORCH_DTYPE"},
    // Before the shape phrases: "index 5 is out of bounds for dimension 0 with size 3".
    {"out of bounds", "TORCH_INDEX"},
    {"index out of range", "TORCH_INDEX"},
    {"shape", "TORCH_SHAPE"},
    {"size mismatch", "TORCH_SHAPE"},
    {"dimension", "TORCH_SHAPE"},
    {"Expected 3D", "TORCH_SHAPE"},
    {"channels", "TORCH_SHAPE"},
    {"argument", "TORCH_ARGUMENT"},
};

}  // namespace

std::string firstLine(const std::string& text) {
  size_t start = text.find_first_not_of(" \n");
  if (start == std::string::npos) return "";
  return text.substr(start, text.find('\n', start) - start);
}

bool contains(const std::string& text, const char* needle) { return text.find(needle) != std::string::npos; }

std::string classifyMessage(const std::string& cause) {
  std::string line = firstLine(cause);
  for (const Phrase& phrase : kPhrases)
    if (contains(line, phrase.text)) return phrase.code;
  return "TORCH_ERROR";
}

namespace {

// A Python exception raised by TorchScript code (`raise ValueError(...)`) keeps its
// class name through the interpreter.
std::string codeOfPythonClass(const std::string& name) {
  if (name == "builtins.ValueError") return "TORCH_VALUE";
  if (name == "builtins.IndexError" || name == "builtins.KeyError") return "TORCH_INDEX";
  if (name == "builtins.TypeError") return "TORCH_ARGUMENT";
  if (name == "builtins.NotImplementedError") return "TORCH_NOT_IMPLEMENTED";
  return "";
}

}  // namespace

// c10's exception types decide first; only plain errors are classified by their text.
ErrorInfo describe(std::exception_ptr error) {
  try {
    std::rethrow_exception(std::move(error));
  } catch (const CodedError& e) {
    return {e.code, e.what(), e.backtrace};
  } catch (const c10::OutOfMemoryError& e) {
    return {"TORCH_OOM", rootCause(e.what_without_backtrace()), e.what()};
  } catch (const c10::IndexError& e) {
    return {"TORCH_INDEX", rootCause(e.what_without_backtrace()), e.what()};
  } catch (const c10::ValueError& e) {
    return {"TORCH_VALUE", rootCause(e.what_without_backtrace()), e.what()};
  } catch (const c10::LinAlgError& e) {
    return {"TORCH_VALUE", rootCause(e.what_without_backtrace()), e.what()};
  } catch (const c10::TypeError& e) {
    return {"TORCH_DTYPE", rootCause(e.what_without_backtrace()), e.what()};
  } catch (const c10::NotImplementedError& e) {
    return {"TORCH_NOT_IMPLEMENTED", rootCause(e.what_without_backtrace()), e.what()};
  } catch (const torch::jit::JITException& e) {
    std::string cause = rootCause(e.what());
    std::string code = codeOfPythonClass(e.getPythonClassName().value_or(""));
    return {code.empty() ? classifyMessage(cause) : code, cause, e.what()};
  } catch (const c10::Error& e) {
    std::string cause = rootCause(e.what_without_backtrace());
    return {classifyMessage(cause), cause, e.what()};
  } catch (const std::bad_alloc&) {
    return {"TORCH_OOM", "out of memory", ""};
  } catch (const std::exception& e) {
    std::string cause = rootCause(e.what());
    return {classifyMessage(cause), cause, e.what()};
  } catch (...) {
    return {"TORCH_ERROR", "unknown native error", ""};
  }
}

Napi::Error toJsError(Napi::Env env, const ErrorInfo& info) {
  Napi::Error error = Napi::Error::New(env, info.message);
  error.Set("code", info.code);
  // Marks the error as the addon's, so JS converts it and nothing else that has a code.
  error.Set("torchlite", true);
  if (!info.backtrace.empty()) error.Set("backtrace", info.backtrace);
  return error;
}

namespace {
const std::array<std::pair<const char*, c10::ScalarType>, 10> kDtypes = {{
    {"float32", c10::kFloat},
    {"float64", c10::kDouble},
    {"float16", c10::kHalf},
    {"bfloat16", c10::kBFloat16},
    {"int64", c10::kLong},
    {"int32", c10::kInt},
    {"int16", c10::kShort},
    {"int8", c10::kChar},
    {"uint8", c10::kByte},
    {"bool", c10::kBool},
}};
}  // namespace

c10::ScalarType parseDtype(const std::string& name) {
  for (const auto& [key, type] : kDtypes)
    if (name == key) return type;
  throw CodedError("TORCHLITE_BAD_DTYPE", "unknown dtype '" + name + "'");
}

std::string dtypeName(c10::ScalarType type) {
  for (const auto& [key, value] : kDtypes)
    if (value == type) return key;
  return c10::toString(type);
}

torch::Device parseDevice(const std::string& name) {
  torch::Device device(torch::kCPU);
  try {
    device = torch::Device(name);
  } catch (const c10::Error&) {
    throw CodedError("TORCHLITE_BAD_DEVICE", "unknown device '" + name + "'; use 'cpu', 'cuda' or 'cuda:N'");
  }
  if (device.is_cuda()) {
    if (!torch::cuda::is_available())
      throw CodedError("TORCHLITE_CUDA_UNAVAILABLE",
                       "device '" + name + "' requested but CUDA is not available (LibTorch " TORCH_VERSION
                       " build without CUDA, or no GPU visible)");
    int64_t count = static_cast<int64_t>(torch::cuda::device_count());
    if (device.has_index() && device.index() >= count)
      throw CodedError("TORCHLITE_CUDA_UNAVAILABLE", "device '" + name + "' requested but only " +
                                                         std::to_string(count) + " CUDA device(s) are visible");
    if (!device.has_index()) device = torch::Device(torch::kCUDA, 0);
  }
  return device;
}

std::string deviceName(const torch::Device& device) {
  if (device.is_cuda()) return "cuda:" + std::to_string(device.has_index() ? device.index() : 0);
  return device.str();
}

std::vector<int64_t> toShape(const Napi::Value& value) {
  Napi::Array array = value.As<Napi::Array>();
  std::vector<int64_t> shape(array.Length());
  for (uint32_t i = 0; i < array.Length(); ++i) shape[i] = array.Get(i).As<Napi::Number>().Int64Value();
  return shape;
}

Napi::Array fromShape(Napi::Env env, c10::IntArrayRef shape) {
  Napi::Array array = Napi::Array::New(env, shape.size());
  for (size_t i = 0; i < shape.size(); ++i) array.Set(i, Napi::Number::New(env, static_cast<double>(shape[i])));
  return array;
}

Napi::Value Baton::field(const char* key, napi_valuetype type) const {
  Napi::Value value = object_.Get(key);
  if (value.IsUndefined() || (type != napi_undefined && value.Type() != type))
    throw CodedError("TORCHLITE_INTERNAL", what_ + "." + key + " is " + (value.IsUndefined() ? "missing" : "of the wrong type") +
                                               " in what torchlite's JS passed to its addon; this is a bug in torchlite, please report it");
  return value;
}

c10::IValue mapTensors(const c10::IValue& value, const std::function<torch::Tensor(const torch::Tensor&)>& f) {
  if (value.isTensor()) return f(value.toTensor());
  if (value.isTuple()) {
    std::vector<c10::IValue> items;
    for (const c10::IValue& item : value.toTupleRef().elements()) items.push_back(mapTensors(item, f));
    return c10::ivalue::Tuple::create(std::move(items));
  }
  if (value.isList()) {
    c10::impl::GenericList list(value.toList().elementType());
    for (const c10::IValue& item : value.toListRef()) list.push_back(mapTensors(item, f));
    return list;
  }
  if (value.isGenericDict()) {
    const c10::Dict<c10::IValue, c10::IValue> dict = value.toGenericDict();
    c10::impl::GenericDict copy(dict.keyType(), dict.valueType());
    for (const auto& entry : dict) copy.insert(entry.key(), mapTensors(entry.value(), f));
    return copy;
  }
  return value;
}

}  // namespace tl
