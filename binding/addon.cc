// Registers the classes and the process-level knobs.
#include "addon.h"

#include <cstdlib>
#include <cstring>
#include <mutex>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "common.h"
#include "cuda.h"
#include "distributed.h"
#include "executor.h"
#include "layers.h"
#include "lora.h"
#include "script_object.h"
#include "loss.h"
#include "ops.h"
#include "optimizer.h"
#include "model.h"
#include "tensor.h"

namespace tl {
namespace {

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] {
    int threads = info[0].As<Napi::Number>().Int32Value();
    // The lanes apply it before their next job (an OpenMP team size is per thread); the
    // JS thread's own setting covers the few small ops that run there.
    torch::set_num_threads(threads);
    Executor::instance().setThreads(threads);
    return info.Env().Undefined();
  });
}

Napi::Value GetNumThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), Executor::instance().threads());
}

Napi::Value SetInferenceThreads(const Napi::CallbackInfo& info) {
  Executor::instance().setInferenceThreads(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

Napi::Value GetInferenceThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), Executor::instance().inferenceThreads());
}

Napi::Value Queue(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<LaneStats> lanes = Executor::instance().stats();
  Napi::Array result = Napi::Array::New(env, lanes.size());
  for (size_t i = 0; i < lanes.size(); ++i) {
    Napi::Object lane = Napi::Object::New(env);
    lane.Set("lane", lanes[i].name);
    lane.Set("queuedInference", static_cast<double>(lanes[i].queuedInference));
    lane.Set("queuedTraining", static_cast<double>(lanes[i].queuedTraining));
    lane.Set("running", lanes[i].running);
    lane.Set("completed", static_cast<double>(lanes[i].completed));
    lane.Set("rejected", static_cast<double>(lanes[i].rejected));
    lane.Set("timedOut", static_cast<double>(lanes[i].timedOut));
    lane.Set("waitP50Ms", lanes[i].waitP50Ms);
    lane.Set("waitP99Ms", lanes[i].waitP99Ms);
    result.Set(i, lane);
  }
  return result;
}

// V8's own statistics do not show adjustments, so tests read the total back from here.
Napi::Value ExternalMemory(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(Napi::MemoryManagement::AdjustExternalMemory(info.Env(), 0)));
}

// The CPU generator's state, so a checkpoint can resume dropout and randn bit-exactly.
Napi::Value GetRngState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    torch::Tensor state = at::detail::getDefaultCPUGenerator().get_state();
    return Napi::Buffer<uint8_t>::Copy(env, state.data_ptr<uint8_t>(), state.numel());
  });
}

Napi::Value SetRngState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Buffer<uint8_t> bytes = info[0].As<Napi::Buffer<uint8_t>>();
    torch::Tensor state = torch::empty({static_cast<int64_t>(bytes.Length())}, torch::kByte);
    std::memcpy(state.data_ptr(), bytes.Data(), bytes.Length());
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(state);
    return env.Undefined();
  });
}

// Python's torch.randperm(n, generator=torch.Generator().manual_seed(seed)): the order
// DistributedSampler shuffles by, from LibTorch's own kernel so it matches element for
// element (for the same LibTorch version).
Napi::Value Randperm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    int64_t n = info[0].As<Napi::Number>().Int64Value();
    auto seed = static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value());
    torch::Tensor order = torch::randperm(n, at::detail::createCPUGenerator(seed), torch::kLong).to(torch::kDouble);
    Napi::Float64Array out = Napi::Float64Array::New(env, static_cast<size_t>(n));
    std::memcpy(out.Data(), order.data_ptr<double>(), static_cast<size_t>(n) * sizeof(double));
    return out;
  });
}

Napi::Value CudaInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Napi::Object result = Napi::Object::New(env);
    result.Set("available", torch::cuda::is_available());
    result.Set("deviceCount", static_cast<double>(torch::cuda::device_count()));
    return result;
  });
}

// Training frees and allocates the same activation buffers every step. glibc returns
// blocks above its mmap threshold to the kernel at once and trims the heap top, so each step
// page-faults freshly zeroed pages back in: 18% of a small CNN's step in perf, against 0.3%
// in torchlite's own code. Keeping freed memory for reuse (blocks under 32 MB from the heap,
// up to 256 MB free at its top) made that step 20-25% faster. Once per process;
// TORCHLITE_KEEP_FREED_MEMORY=0 keeps glibc's defaults.
void keepFreedMemory() {
#ifdef __GLIBC__
  static std::once_flag once;
  std::call_once(once, [] {
    const char* setting = std::getenv("TORCHLITE_KEEP_FREED_MEMORY");
    if (setting != nullptr && std::strcmp(setting, "0") == 0) return;
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
  });
#endif
}

Napi::Value SetTrainingThreadsWhileServing(const Napi::CallbackInfo& info) {
  Executor::instance().setTrainingThreadsWhileServing(info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

Napi::Value SetMaxQueuedInference(const Napi::CallbackInfo& info) {
  Executor::instance().setMaxQueuedInference(static_cast<size_t>(info[0].As<Napi::Number>().Int64Value()));
  return info.Env().Undefined();
}

// The code a LibTorch message without an exception type gets: the phrase table's tests
// (test/errors.test.ts) check each phrase against the messages LibTorch really raises.
Napi::Value ClassifyMessage(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), classifyMessage(info[0].As<Napi::String>().Utf8Value()));
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  keepFreedMemory();
  configureGraphExecutor();
  auto* data = new AddonData();
  data->tensorClass = Napi::Persistent(TensorWrap::Define(env));
  data->modelClass = Napi::Persistent(ModelWrap::Define(env));
  data->optimizerClass = Napi::Persistent(OptimizerWrap::Define(env));
  data->groupClass = Napi::Persistent(GroupWrap::Define(env));
  data->scriptObjectClass = Napi::Persistent(ScriptObjectWrap::Define(env));
  std::shared_ptr<CompletionChannel> channel = data->completions;
  channel->tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}),
                                                "torchlite", 0, 1);
  channel->tsfn.Unref(env);
  // Cleanup hooks run last-registered first, so this one closes the channel while the
  // thread-safe function (whose own hook was registered just before) is still valid.
  env.AddCleanupHook([channel] {
    std::lock_guard<std::mutex> lock(channel->mutex);
    channel->open = false;
    channel->tsfn.Release();
  });
  env.SetInstanceData(data);  // deleted by Node when this environment is torn down
  exports.Set("Tensor", data->tensorClass.Value());
  exports.Set("Model", data->modelClass.Value());
  exports.Set("Optimizer", data->optimizerClass.Value());
  exports.Set("ProcessGroup", data->groupClass.Value());
  exports.Set("ScriptObject", data->scriptObjectClass.Value());
  exports.Set("computeLoss", Napi::Function::New<ComputeLoss>(env));
  exports.Set("classifyMessage", Napi::Function::New<ClassifyMessage>(env));
  exports.Set("loadOpsLibrary", Napi::Function::New<LoadOpsLibrary>(env));
  exports.Set("torchLibraryPath", Napi::Function::New<TorchLibraryPath>(env));
  exports.Set("setNumThreads", Napi::Function::New<SetNumThreads>(env));
  exports.Set("getNumThreads", Napi::Function::New<GetNumThreads>(env));
  exports.Set("setInferenceThreads", Napi::Function::New<SetInferenceThreads>(env));
  exports.Set("getInferenceThreads", Napi::Function::New<GetInferenceThreads>(env));
  exports.Set("queue", Napi::Function::New<Queue>(env));
  exports.Set("setMaxQueuedInference", Napi::Function::New<SetMaxQueuedInference>(env));
  exports.Set("setTrainingThreadsWhileServing", Napi::Function::New<SetTrainingThreadsWhileServing>(env));
  exports.Set("externalMemory", Napi::Function::New<ExternalMemory>(env));
  exports.Set("initLayerParameters", Napi::Function::New<InitLayerParameters>(env));
  exports.Set("loraUse", Napi::Function::New<LoraUse>(env));
  exports.Set("loraMerge", Napi::Function::New<LoraMerge>(env));
  exports.Set("loraUnmerge", Napi::Function::New<LoraUnmerge>(env));
  exports.Set("getRngState", Napi::Function::New<GetRngState>(env));
  exports.Set("setRngState", Napi::Function::New<SetRngState>(env));
  exports.Set("cudaMemory", Napi::Function::New<CudaMemory>(env));
  exports.Set("cudaEmptyCache", Napi::Function::New<CudaEmptyCache>(env));
  exports.Set("cudaSynchronize", Napi::Function::New<CudaSynchronize>(env));
  exports.Set("setSpeedOptions", Napi::Function::New<SetSpeedOptions>(env));
  exports.Set("randperm", Napi::Function::New<Randperm>(env));
  exports.Set("cudaInfo", Napi::Function::New<CudaInfo>(env));
  exports.Set("torchVersion", TORCH_VERSION);
  exports.Set("glooBuild", Napi::Boolean::New(env,
#ifdef TORCHLITE_GLOO
                                               true
#else
                                               false
#endif
                                               ));
  exports.Set("ncclBuild", Napi::Boolean::New(env,
#if defined(TORCHLITE_GLOO) && defined(TORCHLITE_NCCL)
                                               true
#else
                                               false
#endif
                                               ));
  exports.Set("cudaBuild", Napi::Boolean::New(env,
#ifdef TORCHLITE_WITH_CUDA
                                               true
#else
                                               false
#endif
                                               ));
  return exports;
}

}  // namespace
}  // namespace tl

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return tl::Init(env, exports); }

NODE_API_MODULE(torchlite, InitAddon)
