// TensorWrap: tensors from and to JS arrays, conversions, and reads off the event loop.
#include "tensor.h"

#include <cstring>

#include "addon.h"
#include "job.h"

namespace tl {
namespace {

c10::ScalarType dtypeOfArray(napi_typedarray_type type) {
  switch (type) {
    case napi_float32_array: return c10::kFloat;
    case napi_float64_array: return c10::kDouble;
    case napi_int32_array: return c10::kInt;
    case napi_bigint64_array: return c10::kLong;
    case napi_int16_array: return c10::kShort;
    case napi_int8_array: return c10::kChar;
    case napi_uint8_array:
    case napi_uint8_clamped_array: return c10::kByte;
    default: throw CodedError("TORCHLITE_BAD_ARRAY", "unsupported typed array type");
  }
}

// JS has no 16-bit float or bool arrays, so those come back widened.
napi_typedarray_type arrayOfDtype(c10::ScalarType type) {
  switch (type) {
    case c10::kFloat: return napi_float32_array;
    case c10::kDouble: return napi_float64_array;
    case c10::kInt: return napi_int32_array;
    case c10::kLong: return napi_bigint64_array;
    case c10::kShort: return napi_int16_array;
    case c10::kChar: return napi_int8_array;
    default: return napi_uint8_array;
  }
}

int64_t storageBytes(const torch::Tensor& tensor) {
  return tensor.defined() && tensor.has_storage() ? static_cast<int64_t>(tensor.storage().nbytes()) : 0;
}

// A new tensor's options; tensor.ts gives both (its defaults: float32, or int64 for an integer
// arange; the CPU).
torch::TensorOptions optionsOf(const Napi::Object& options) {
  Baton baton(options, "tensor options");
  return torch::TensorOptions().dtype(parseDtype(baton.string("dtype"))).device(parseDevice(baton.string("device")));
}

}  // namespace

Napi::Function TensorWrap::Define(Napi::Env env) {
  return DefineClass(env, "NativeTensor",
                     {
                         StaticMethod<&TensorWrap::FromArray>("fromArray"),
                         StaticMethod<&TensorWrap::Full>("full"),
                         StaticMethod<&TensorWrap::Randn>("randn"),
                         StaticMethod<&TensorWrap::Arange>("arange"),
                         StaticMethod<&TensorWrap::ManualSeed>("manualSeed"),
                         InstanceMethod<&TensorWrap::Shape>("shape"),
                         InstanceMethod<&TensorWrap::Dtype>("dtype"),
                         InstanceMethod<&TensorWrap::Device>("device"),
                         InstanceMethod<&TensorWrap::Numel>("numel"),
                         InstanceMethod<&TensorWrap::ToTypedArray>("toTypedArray"),
                         InstanceMethod<&TensorWrap::Read>("read"),
                         InstanceMethod<&TensorWrap::Item>("item"),
                         InstanceMethod<&TensorWrap::To>("to"),
                         InstanceMethod<&TensorWrap::ToAsync>("toAsync"),
                         InstanceMethod<&TensorWrap::Rows>("rows"),
                         InstanceMethod<&TensorWrap::Dispose>("dispose"),
                     });
}

Napi::Object TensorWrap::Wrap(Napi::Env env, torch::Tensor tensor) {
  return addonData(env).tensorClass.New({Napi::External<torch::Tensor>::New(env, &tensor)});
}

torch::Tensor TensorWrap::From(Napi::Env env, const Napi::Value& value) {
  return unwrapInstance<TensorWrap>(env, value, addonData(env).tensorClass, "a Tensor")->live();
}

bool TensorWrap::IsTensor(Napi::Env env, const Napi::Value& value) {
  return value.IsObject() && value.As<Napi::Object>().InstanceOf(addonData(env).tensorClass.Value());
}

TensorWrap::TensorWrap(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<TensorWrap>(info),
      tensor_(takeExternal<torch::Tensor>(info, "Tensor cannot be constructed directly; use tensor() or a factory")) {
  // V8 cannot see LibTorch allocations; telling it keeps GC pressure honest when
  // users forget dispose() and rely on finalizers.
  accountedBytes_ = storageBytes(tensor_);
  Napi::MemoryManagement::AdjustExternalMemory(info.Env(), accountedBytes_);
}

void TensorWrap::Finalize(Napi::Env env) { release(env); }

void TensorWrap::release(Napi::Env env) {
  // The C call, not node-addon-api's throwing wrapper: this also runs from finalizers
  // during environment teardown, where a thrown exception would terminate Node.
  int64_t ignored = 0;
  if (accountedBytes_ != 0) napi_adjust_external_memory(env, -accountedBytes_, &ignored);
  accountedBytes_ = 0;
  tensor_ = torch::Tensor();
}

const torch::Tensor& TensorWrap::live() const {
  if (!tensor_.defined()) throw CodedError("TORCHLITE_DISPOSED", "Tensor has been disposed");
  return tensor_;
}

Napi::Value TensorWrap::FromArray(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::TypedArray array = info[0].As<Napi::TypedArray>();
    std::vector<int64_t> shape = toShape(info[1]);
    Baton options(info[2].As<Napi::Object>(), "tensor options");
    c10::ScalarType source = dtypeOfArray(array.TypedArrayType());
    int64_t numel = c10::multiply_integers(shape);
    if (numel != static_cast<int64_t>(array.ElementLength()))
      throw CodedError("TORCHLITE_BAD_SHAPE", "data length does not match the shape");
    // Copy rather than alias: JS may write to or transfer the buffer while LibTorch
    // (possibly on a lane) still reads it.
    torch::Tensor tensor = torch::empty(shape, torch::TensorOptions().dtype(source));
    if (array.ByteLength() > 0)
      std::memcpy(tensor.data_ptr(), static_cast<uint8_t*>(array.ArrayBuffer().Data()) + array.ByteOffset(),
                  array.ByteLength());
    Napi::Value dtype = options.value("dtype");  // null: the array's own
    c10::ScalarType target = dtype.IsNull() ? source : parseDtype(dtype.As<Napi::String>().Utf8Value());
    return Wrap(env, tensor.to(parseDevice(options.string("device")), target));
  });
}

Napi::Value TensorWrap::Full(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    double value = info[1].As<Napi::Number>().DoubleValue();
    return Wrap(env, torch::full(toShape(info[0]), value, optionsOf(info[2].As<Napi::Object>())));
  });
}

Napi::Value TensorWrap::Randn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] { return Wrap(env, torch::randn(toShape(info[0]), optionsOf(info[1].As<Napi::Object>()))); });
}

Napi::Value TensorWrap::Arange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    double start = info[0].As<Napi::Number>().DoubleValue();
    double end = info[1].As<Napi::Number>().DoubleValue();
    double step = info[2].As<Napi::Number>().DoubleValue();
    return Wrap(env, torch::arange(start, end, step, optionsOf(info[3].As<Napi::Object>())));
  });
}

Napi::Value TensorWrap::ManualSeed(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    torch::manual_seed(static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()));
    return env.Undefined();
  });
}

Napi::Value TensorWrap::Shape(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] { return fromShape(info.Env(), live().sizes()); });
}

Napi::Value TensorWrap::Dtype(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] { return Napi::String::New(info.Env(), dtypeName(live().scalar_type())); });
}

Napi::Value TensorWrap::Device(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] { return Napi::String::New(info.Env(), deviceName(live().device())); });
}

Napi::Value TensorWrap::Numel(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] { return Napi::Number::New(info.Env(), static_cast<double>(live().numel())); });
}

namespace {

// A copy on the host in a dtype JS has an array for. Blocks until the device is done, so
// on the JS thread it is only ever used for CPU tensors (see onHost).
torch::Tensor hostCopy(const torch::Tensor& tensor) {
  torch::Tensor host = tensor.detach().to(torch::kCPU).contiguous();
  if (host.scalar_type() == c10::kHalf || host.scalar_type() == c10::kBFloat16) host = host.to(c10::kFloat);
  return host;
}

}  // namespace

Napi::Value hostArray(Napi::Env env, const torch::Tensor& host) {
  napi_typedarray_type type = arrayOfDtype(host.scalar_type());
  size_t bytes = host.numel() * host.element_size();
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, bytes);
  if (bytes > 0) std::memcpy(buffer.Data(), host.data_ptr(), bytes);
  napi_value result;
  NAPI_THROW_IF_FAILED(env, napi_create_typedarray(env, type, host.numel(), buffer, 0, &result), Napi::Value());
  return Napi::Value(env, result);
}

const torch::Tensor& TensorWrap::onHost(const char* what) const {
  const torch::Tensor& tensor = live();
  if (!tensor.is_cpu())
    throw CodedError("TORCHLITE_DEVICE_SYNC", std::string(what) + "() on a " + deviceName(tensor.device()) +
                                                  " tensor would block the event loop until the device is done; use `await tensor.read()`");
  return tensor;
}

Napi::Value TensorWrap::ToTypedArray(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value { return hostArray(env, hostCopy(onHost("toTypedArray"))); });
}

// The copy runs on the tensor's device lane, ahead of queued training, so the JS thread
// never waits for a GPU.
Napi::Value TensorWrap::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    torch::Tensor tensor = live();
    return Job<torch::Tensor>::Start(
        env, {tensor.device(), Priority::Inference}, [tensor] { return hostCopy(tensor); },
        [](Napi::Env env, torch::Tensor& host) { return hostArray(env, host); });
  });
}

Napi::Value TensorWrap::Item(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    c10::Scalar scalar = onHost("item").item();
    if (scalar.isBoolean()) return Napi::Boolean::New(env, scalar.toBool());
    if (scalar.isIntegral(false)) return Napi::Number::New(env, static_cast<double>(scalar.toLong()));
    return Napi::Number::New(env, scalar.toDouble());
  });
}

namespace {
// A conversion's `{ device, dtype }`, both given (tensor.ts fills in the tensor's own).
std::pair<torch::Device, c10::ScalarType> conversionOf(const Napi::Value& value) {
  Baton options(value.As<Napi::Object>(), "tensor.to options");
  return {parseDevice(options.string("device")), parseDtype(options.string("dtype"))};
}
}  // namespace

// Synchronous, for small tensors: a copy off a GPU is refused, since it would block the event
// loop until the device is done (the asynchronous form is ToAsync).
Napi::Value TensorWrap::To(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    auto [device, dtype] = conversionOf(info[0]);
    const torch::Tensor& tensor = live();
    if (!tensor.is_cpu() && device.is_cpu())
      throw CodedError("TORCHLITE_DEVICE_SYNC", "to('cpu') of a " + deviceName(tensor.device()) +
                                                    " tensor would block the event loop until the device is done; use `await tensor.toAsync('cpu')`");
    return Wrap(env, tensor.to(device, dtype));
  });
}

// The same conversion as a job on the tensor's device lane, ahead of queued training: a
// 226 MB float64 conversion took 345 ms on the JS thread.
Napi::Value TensorWrap::ToAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    std::pair<torch::Device, c10::ScalarType> to = conversionOf(info[0]);
    torch::Tensor tensor = live();
    return Job<torch::Tensor>::Start(
        env, {tensor.device(), Priority::Inference}, [tensor, to] { return tensor.to(to.first, to.second); },
        [](Napi::Env env, torch::Tensor& result) -> Napi::Value { return Wrap(env, result); });
  });
}

// Rows `indices` of a CPU tensor, copied into a new one: a loader's batch from a tensor
// dataset in one gather instead of a copy per sample in JS. A job: a 512x3x96x96 batch is
// 57 MB and took 75-82 ms, which the event loop should not wait for. It runs ahead of queued
// training (on the inference lane while a step runs), so the next batch is ready in time.
Napi::Value TensorWrap::Rows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Int32Array indices = info[0].As<Napi::Int32Array>();
    torch::Tensor index = torch::from_blob(indices.Data(), {static_cast<int64_t>(indices.ElementLength())}, torch::kInt).to(torch::kLong);
    torch::Tensor source = live();
    return Job<torch::Tensor>::Start(
        env, {source.device(), Priority::Inference}, [source, index] { return source.index_select(0, index); },
        [](Napi::Env env, torch::Tensor& rows) -> Napi::Value { return Wrap(env, rows); });
  });
}

Napi::Value TensorWrap::Dispose(const Napi::CallbackInfo& info) {
  release(info.Env());
  return info.Env().Undefined();
}

}  // namespace tl
