// CUDA memory queries and speed switches. The allocator API only exists in CUDA builds
// of LibTorch, so it sits behind TORCHLITE_WITH_CUDA; a CPU build answers with a coded
// error instead, and the switches that live in ATen's global context work in both.
#include "cuda.h"

#include "job.h"

#ifdef TORCHLITE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace tl {
namespace {

[[noreturn]] void noCuda(const char* what) {
  throw CodedError("TORCHLITE_CUDA_UNAVAILABLE",
                   std::string(what) + " needs CUDA, but this torchlite was built against a CPU-only LibTorch " TORCH_VERSION);
}

int deviceIndex(const Napi::Value& value) {
  torch::Device device = parseDevice(value.IsString() ? value.As<Napi::String>().Utf8Value() : std::string("cuda"));
  if (!device.is_cuda()) throw CodedError("TORCHLITE_BAD_DEVICE", "expected a CUDA device");
  return device.index();
}

}  // namespace

Napi::Value CudaMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    int index = deviceIndex(info[0]);
#ifdef TORCHLITE_WITH_CUDA
    // Index 0 of each statistic is the aggregate over pool types, in 1.13 and 2.x alike.
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
    Napi::Object result = Napi::Object::New(env);
    result.Set("allocated", static_cast<double>(stats.allocated_bytes[0].current));
    result.Set("reserved", static_cast<double>(stats.reserved_bytes[0].current));
    result.Set("peak", static_cast<double>(stats.allocated_bytes[0].peak));
    if (info[1].IsBoolean() && info[1].As<Napi::Boolean>().Value())
      c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(index));
    return result;
#else
    (void)index;
    noCuda("cuda.memory()");
#endif
  });
}

Napi::Value CudaEmptyCache(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
#ifdef TORCHLITE_WITH_CUDA
    c10::cuda::CUDACachingAllocator::emptyCache();
    return env.Undefined();
#else
    noCuda("cuda.emptyCache()");
#endif
  });
}

Napi::Value CudaSynchronize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    int index = deviceIndex(info[0]);
    // A job on the device's lane: waiting for the GPU must not block the event loop.
    return Job<bool>::Start(
        env, {torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index)), Priority::Inference},
        [index] {
          torch::cuda::synchronize(index);
          return true;
        },
        [](Napi::Env env, bool&) { return env.Undefined(); });
  });
}

Napi::Value SetSpeedOptions(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    Napi::Object options = info[0].As<Napi::Object>();
    at::Context& context = at::globalContext();
    if (options.Get("cudnnBenchmark").IsBoolean()) context.setBenchmarkCuDNN(options.Get("cudnnBenchmark").As<Napi::Boolean>().Value());
    if (options.Get("tf32").IsBoolean()) {
      bool on = options.Get("tf32").As<Napi::Boolean>().Value();
      context.setAllowTF32CuBLAS(on);
      context.setAllowTF32CuDNN(on);
    }
    Napi::Object state = Napi::Object::New(env);
    state.Set("cudnnBenchmark", context.benchmarkCuDNN());
    state.Set("tf32", context.allowTF32CuBLAS());
    return state;
  });
}

}  // namespace tl
